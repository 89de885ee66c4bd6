"""``wait_for_endpoints`` asked the endpoints left IDLE (their server closed the unused
connection, ``max_connection_idle_s``) to connect once, when it started: an endpoint left
IDLE while it waited was never asked, nothing else connects it (no call is made during a
readiness gate), so the wait ran to its timeout (``TimeoutError``) though every endpoint
could connect at once. It now asks on every change it wakes for, as ``channel_ready``
does. Real grpc.aio servers on loopback, one closing idle connections after 0.3 s."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, raw_server
from tests.support.wait import until


@pytest.mark.timeout(30)
async def test_an_endpoint_left_idle_during_the_wait_is_asked_to_connect(
    registry: LocalRegistry,
) -> None:
    server = grpc.aio.server(options=(("grpc.max_connection_idle_ms", 300),))
    server.add_generic_rpc_handlers((handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with raw_server(handler("e2")) as (_, p2):
            await registry.register(Instance(service="echo", instance_id="e1",
                                             host="127.0.0.1", port=port))
            async with meshkit.dial("echo", registry=registry,
                                    options=meshkit.DialOptions(insecure=True)) as ch:
                await ch.wait_for_endpoints(1, timeout_s=5)
                pool = ch._pool
                connect_idle, asked = pool.connect_idle, []

                def recording() -> None:  # e1 left IDLE and asked to connect at once
                    asked.extend(pool.left_idle)
                    connect_idle()

                pool.connect_idle = recording  # type: ignore[method-assign]
                waiter = asyncio.ensure_future(ch.wait_for_endpoints(2, timeout_s=8))
                await until(lambda: "e1" in pool.left_idle or "e1" in asked or waiter.done(),
                            timeout_s=5, what="e1 left IDLE while the wait runs")
                await registry.register(Instance(service="echo", instance_id="e2",
                                                 host="127.0.0.1", port=p2))
                await waiter  # TimeoutError before: e1 stayed IDLE
    finally:
        await server.stop(None)
