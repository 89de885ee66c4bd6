"""``meshkit call --insecure``'s TLS hint stays within the call's deadline.

A plaintext call that failed ``UNAVAILABLE`` tried a TLS handshake with each endpoint
(the hint "speaks TLS: give --cert-dir") bounded by 3 s of its own, whatever was left of
``--timeout-s``: against an endpoint that takes connections and never answers (grpc gives
up on it after its 20 s connect timeout), ``meshkit call --timeout-s 21`` took 24.8 s.
The handshakes now get at most what is left of the failed request's deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

import meshkit
from meshkit._cli import _call
from meshkit._cli.call import parse_target
from meshkit.discovery import Instance, LocalRegistry

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


async def test_the_tls_hint_of_a_silent_endpoint_ends_by_the_deadline(
        silent_port: int, registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call with a 2 s deadline to an endpoint that never answers ends near 2 s, not
    after the TLS handshake's own bound (raised to 30 s here to make it plain)."""
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=silent_port))
    monkeypatch.setattr(_call, "TLS_SNIFF_S", 30.0)
    # grpc gives up connecting after 0.5 s (its 20 s default), so the call fails
    # UNAVAILABLE inside its deadline, as with --timeout-s over 20 s
    options = meshkit.DialOptions(insecure=True, telemetry=None, channel_options=(
        ("grpc.min_reconnect_backoff_ms", 500), ("grpc.initial_reconnect_backoff_ms", 500)))
    client = LocalRegistry(registry.options)
    args = _call._Args(parse_target("whod/t.Who/Who"), "{}", client, options, (), 2.0)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await asyncio.wait_for(_call._run(args), 60)
    elapsed = time.monotonic() - started
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value
    assert "TLS" not in "".join(getattr(failed.value, "__notes__", ())), failed.value
    assert elapsed < 12.0, elapsed  # 2 s deadline; before: 30 s more for the handshake


async def test_no_deadline_left_tries_no_handshake(silent_port: int) -> None:
    """With nothing left of the deadline, no handshake is tried (it returns at once)."""

    class _Ep:
        present, instance_id, address = True, "w1", f"127.0.0.1:{silent_port}"

    class _Stats:
        endpoints = [_Ep()]

    class _Ch:
        def stats(self) -> _Stats:
            return _Stats()

    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                               grpc.aio.Metadata(), details="down")
    await asyncio.wait_for(_call._note_tls_endpoints(_Ch(), exc, 0.0), 1.0)  # type: ignore[arg-type]
    assert not getattr(exc, "__notes__", ())


def test_a_deadline_counts_down() -> None:
    """_Deadline.left_s: the time left of the latest request's deadline, never negative."""
    d = _call._Deadline()
    assert d.left_s() == 0.0
    d.start(60.0)
    assert 50.0 < d.left_s() <= 60.0
    d.start(-1.0)
    assert d.left_s() == 0.0
