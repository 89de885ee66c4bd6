"""A fail-closed rate-limit refusal ejects no replica.

With ``RateLimitOptions(on_storage_error="deny")`` and the storage every replica shares
(Redis) down, every replica answers each limited call ``UNAVAILABLE`` ("rate limiter
unavailable for ..."). A mesh client counted that against the endpoint that answered:
``UNAVAILABLE`` is in outlier ejection's default ``failure_codes`` and P2C's overload
penalty, so during a Redis outage the clients ejected up to ``max_ejection_percent`` of
perfectly healthy replicas, which then stayed out for ``base_ejection_s`` after Redis came
back: capacity lost after the outage ended, for a fault no replica had.

The servers now send the refusal with the trailer ``meshkit-ratelimit-unavailable: 1``
and mesh clients report such an attempt to the balancer as no endpoint's outcome (as the
deadline admission refusal), unary and streaming alike. It stays a plain ``UNAVAILABLE``
for retries (the method's policy, gRFC A6), not a nack: the storage is shared, so another
replica would most likely refuse it too.

Real meshkit servers and a real mesh channel on 127.0.0.1; the outage is a Redis URI of a
port nothing listens on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions, RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.resilience import RateLimitOptions
from tests.support.echo import method

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on the way out: nothing listens


def _deny() -> RateLimitOptions:
    return RateLimitOptions(
        default_rule="1000/second", on_storage_error="deny",
        storage_uri=f"async+redis://127.0.0.1:{_closed_port()}", storage_timeout_s=0.5)


async def _endpoints(ch: Any) -> dict[str, tuple[int, bool]]:
    """Each endpoint's ``(failures, ejected)`` once every attempt's outcome is reported
    (nothing pending, ``None`` for an ejected one: a stream's is reported by a task of
    its own, after the caller saw its end)."""
    for _ in range(200):
        if all(not e.pending for e in ch.stats().endpoints):
            break
        await asyncio.sleep(0.02)
    assert all(not e.pending for e in ch.stats().endpoints), ch.stats().endpoints
    return {e.instance_id: (e.failures, e.ejected) for e in ch.stats().endpoints}


async def _unary(ch: Any) -> grpc.StatusCode:
    try:
        await ch.unary_unary(method("Unary"))(b"x", timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _server_stream(ch: Any) -> grpc.StatusCode:
    try:
        async for _ in ch.unary_stream(method("ServerStream"))(b"x", timeout=10):
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _client_stream(ch: Any) -> grpc.StatusCode:
    async def requests() -> Any:
        yield b"x"

    try:
        await ch.stream_unary(method("ClientStream"))(requests(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _bidi(ch: Any) -> grpc.StatusCode:
    async def requests() -> Any:
        yield b"x"

    try:
        async for _ in ch.stream_stream(method("Bidi"))(requests(), timeout=10):
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


_KINDS = {"unary": _unary, "server_stream": _server_stream,
          "client_stream": _client_stream, "bidi": _bidi}


@pytest.mark.parametrize("balancer", [None, RoundRobin], ids=["p2c", "round_robin"])
@pytest.mark.parametrize("kind", list(_KINDS), ids=list(_KINDS))
async def test_a_shared_storage_outage_under_deny_ejects_no_replica(
        registry: LocalRegistry, echo_servers: Any, kind: str, balancer: Any) -> None:
    for name in ("a", "b", "c"):
        await echo_servers(name, rate_limit=_deny())
    # ejects at the 2nd failure in a row, up to all of them: a fault counted shows at once
    opts = meshkit.DialOptions(insecure=True, retry=None, outlier=OutlierOptions(
        consecutive_failures=2, max_ejection_percent=100.0, base_ejection_s=30.0))
    if balancer is not None:  # each endpoint in turn (P2C's picks are random)
        opts = dataclasses.replace(opts, balancer=balancer)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = _KINDS[kind]
        codes = [await call(ch) for _ in range(12)]
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 12  # refused, as configured
        seen = await _endpoints(ch)
        assert len(seen) == 3, seen
        assert seen == {n: (0, False) for n in ("a", "b", "c")}, seen


async def test_a_handlers_own_unavailable_still_ejects(
        registry: LocalRegistry, echo_servers: Any) -> None:
    # the control: an UNAVAILABLE without the trailer (the application's, the endpoint's
    # own) is counted as before, with the same outlier options as above
    for name in ("a", "b", "c"):
        await echo_servers(name)
    opts = meshkit.DialOptions(insecure=True, retry=None, outlier=OutlierOptions(
        consecutive_failures=2, max_ejection_percent=100.0, base_ejection_s=30.0))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        fail = ch.unary_unary(method("Fail"))
        for _ in range(12):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await fail(b"UNAVAILABLE", timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        seen = await _endpoints(ch)
        assert sum(f for f, _ in seen.values()) == 12, seen
        assert any(out for _, out in seen.values()), seen


async def test_the_refusal_carries_the_trailer_and_is_no_nack(
        registry: LocalRegistry, echo_servers: Any) -> None:
    srv = await echo_servers("a", rate_limit=_deny())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as raw:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw.unary_unary(method("Unary"))(b"x", timeout=10)
    exc = err.value
    assert exc.code() is grpc.StatusCode.UNAVAILABLE
    assert ("meshkit-ratelimit-unavailable", "1") in tuple(
        tuple(m) for m in (exc.trailing_metadata() or ()))
    from meshkit.resilience import is_nack
    assert not is_nack(exc)  # plain UNAVAILABLE for retries: the method's policy decides
