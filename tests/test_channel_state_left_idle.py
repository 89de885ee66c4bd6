"""A channel whose endpoints are all left IDLE (their server closed the unused
connections, ``max_connection_idle_s``) reads IDLE, not CONNECTING (meshkit/channel.py,
``MeshChannel.get_state``), as grpc.aio's channel does.

The pool leaves such an endpoint IDLE until a call asks (nothing connects meanwhile), but
``get_state()`` read every endpoint that was not READY or failing as CONNECTING, so a
channel doing nothing said it was connecting, for ever: a watcher's
``wait_for_state_change(CONNECTING)`` waited for a connection nobody was making.
``get_state(try_to_connect=True)`` (or a call) connects them, as before. Real grpc.aio
server on loopback, closing idle connections after 0.2 s."""

from __future__ import annotations

import asyncio

import grpc

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler
from tests.support.wait import until


async def test_endpoints_left_idle_read_idle(registry: LocalRegistry) -> None:
    server = grpc.aio.server(options=(("grpc.max_connection_idle_ms", 200),))
    server.add_generic_rpc_handlers((handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await registry.register(Instance(service="idler", instance_id="e1",
                                         host="127.0.0.1", port=port))
        async with meshkit.dial("idler", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(1, timeout_s=5)
            await until(lambda: "e1" in ch._pool.left_idle, timeout_s=5, what="left IDLE")
            assert ch.get_state() is grpc.ChannelConnectivity.IDLE  # CONNECTING before
            assert ch.get_state(try_to_connect=True) is not grpc.ChannelConnectivity.IDLE
            await asyncio.wait_for(ch.channel_ready(), 5)
    finally:
        await server.stop(None)
