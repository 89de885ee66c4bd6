"""An endpoint that stays failing is probed again: its reason follows its fault.

What a user saw: a grpc sub-channel that cannot connect stays ``TRANSIENT_FAILURE``
while it reconnects with its backoff (grpc's sticky failure: no further change of
connectivity), and the TLS probe ran only on a change to ``TRANSIENT_FAILURE``. So an
endpoint restarted with a wrong certificate (another workload's) kept the reason found
while it was down, ``connection refused``, for as long as it failed, and an endpoint
whose failure found the channel's probes at their bound (or came within ``interval_s``
of its last probe) was never probed: no ``connect_error``. Now the pool asks again every
``interval_s`` while the endpoint stays failing (the same bounds apply). A real grpc.aio
mTLS server on loopback, the probe interval shortened to 0.5 s.
"""

from __future__ import annotations

import asyncio
import functools

import grpc
import pytest

import meshkit
import meshkit.channel
from meshkit.auth._probe import HandshakeDiagnosis
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.conftest import Pki, auth_handler
from tests.auth.test_hunt39_h6_mtls_connect_error import _server_credentials
from tests.support.ports import free_port
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


async def test_a_failing_endpoints_reason_follows_its_fault(
        pki: Pki, registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meshkit.channel, "HandshakeDiagnosis",
                        functools.partial(HandshakeDiagnosis, interval_s=0.5))
    port = free_port()
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((auth_handler(),))
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:

        def reason() -> str | None:
            eps = ch.stats().endpoints
            return eps[0].connect_error if eps else None

        await until(lambda: reason() == "connection refused", timeout_s=30,
                    what="connection refused while nothing listens")
        # the instance is back, with another workload's certificate
        assert server.add_secure_port(f"127.0.0.1:{port}",
                                      _server_credentials(pki, "otherd")) == port
        await server.start()
        try:
            await until(lambda: "peer identity" in (reason() or ""), timeout_s=30,
                        what=f"the new reason (still {reason()!r})")
            assert ch.stats().endpoints[0].state == "FAILING"
        finally:
            await server.stop(0)


async def test_a_lasting_failure_is_probed_again_less_and_less_often(
        pki: Pki, registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe interval 0.1 s, an endpoint refusing connections for 3 s: probed again at
    0.1, 0.3, 0.7, 1.5, 2.3 s... (the wait doubling up to 8 intervals), not 30 times; and
    on one watch of the sub-channel's state throughout: a grpc watch cancelled stays in
    grpc core until the state changes (about 0.8 KB each: 20,000 cancelled on a dead
    channel held 15 MB), so a watch cancelled per probe interval would grow for as long
    as the endpoint stays down."""
    probed: list[str] = []
    cancelled: list[grpc.ChannelConnectivity] = []
    wait = grpc.aio._channel.Channel.wait_for_state_change

    async def watched(self: grpc.aio.Channel, state: grpc.ChannelConnectivity) -> None:
        try:
            await wait(self, state)
        except asyncio.CancelledError:
            cancelled.append(state)
            raise

    monkeypatch.setattr(grpc.aio._channel.Channel, "wait_for_state_change", watched)

    def diagnosis(service: str, probe: object) -> HandshakeDiagnosis:
        async def counted(host: str, port: int) -> str | None:
            probed.append(host)
            return "connection refused"

        return HandshakeDiagnosis(service, counted, interval_s=0.1)

    monkeypatch.setattr(meshkit.channel, "HandshakeDiagnosis", diagnosis)
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=free_port()))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts):
        await until(lambda: bool(probed), timeout_s=30, what="the first probe")
        await asyncio.sleep(3.0)
        assert cancelled == []
    assert 2 <= len(probed) <= 8, len(probed)
