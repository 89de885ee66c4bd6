"""A channel's start wakes the calls waiting for an endpoint once per endpoint that
connects (or fails), not also once per endpoint that starts connecting.

The pool woke everything waiting (calls, ``channel_ready``, ``wait_for_state_change``) at
every connectivity change of every sub-channel, IDLE to CONNECTING included, which leaves
the endpoint's state as it is (both IDLE). Measured with 2,000 endpoints and 500 calls
made at the dial: 4,001 wake-ups and 920 picks again (each O(n) in P2C while no endpoint
is READY) before the calls went out; now 2,001 and 495. The channel's own state still
moves from IDLE to CONNECTING when endpoints left IDLE are asked to connect (its
watchers are woken then)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
import meshkit._pool
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ENDPOINTS = 100


async def test_endpoints_connecting_wake_waiters_once_each(registry: LocalRegistry,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """100 endpoints of one server connect: about one wake-up each (READY), not two."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler("s"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        for i in range(_ENDPOINTS):
            await registry.register(Instance(service="many", instance_id=f"e{i:03d}",
                                             host="127.0.0.1", port=port))
        wakes = [0]
        real_notify = meshkit._pool.EndpointPool.notify

        def counted(self: meshkit._pool.EndpointPool) -> None:
            wakes[0] += 1
            real_notify(self)

        monkeypatch.setattr(meshkit._pool.EndpointPool, "notify", counted)
        async with meshkit.dial("many", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(_ENDPOINTS, timeout_s=30)
            woken = wakes[0]
        # one per endpoint READY, one for the discovery answer (and a few spare)
        assert woken <= _ENDPOINTS + _ENDPOINTS // 4, f"{woken} wake-ups"
    finally:
        await server.stop(None)


async def test_a_watcher_of_an_idle_channel_sees_it_connect(registry: LocalRegistry) -> None:
    """Every endpoint left IDLE (its server closed the unused connection), then asked to
    connect while its server does not answer (a black hole: connecting for long): the
    channel's state goes from IDLE to CONNECTING and its watcher returns."""
    server = grpc.aio.server(options=(("grpc.max_connection_idle_ms", 200),))
    server.add_generic_rpc_handlers((handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with TcpProxy("127.0.0.1", port) as proxy:
            await registry.register(Instance(service="idler", instance_id="e1",
                                             host="127.0.0.1", port=proxy.port))
            async with meshkit.dial("idler", registry=registry,
                                    options=meshkit.DialOptions(insecure=True)) as ch:
                await ch.wait_for_endpoints(1, timeout_s=5)
                await until(lambda: "e1" in ch._pool.left_idle, timeout_s=5,
                            what="left IDLE")
                assert ch.get_state() is grpc.ChannelConnectivity.IDLE
                proxy.blackhole()
                watcher = asyncio.ensure_future(
                    ch.wait_for_state_change(grpc.ChannelConnectivity.IDLE))
                await asyncio.sleep(0.1)
                assert not watcher.done()
                assert ch.get_state(try_to_connect=True) is (
                    grpc.ChannelConnectivity.CONNECTING)
                await asyncio.wait_for(watcher, 5)
                assert ch.get_state() is grpc.ChannelConnectivity.CONNECTING
    finally:
        await server.stop(None)
