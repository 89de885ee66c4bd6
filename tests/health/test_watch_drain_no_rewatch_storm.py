"""A client with gRFC A17 client-side health checking does not re-open its health
``Watch`` in a loop while the server drains."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.wait import until


class _CountingHealth(health.aio.HealthServicer):
    """The reference servicer, counting the ``Watch`` calls it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0

    async def Watch(self, request: Any, context: Any) -> None:
        self.watches += 1
        await super().Watch(request, context)


# round_robin with client-side health checking of the whole server (gRFC A17), as a
# grpc-core, grpc-java or grpc-go client configures it
_A17_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                          "healthCheckConfig": {"serviceName": ""}})


async def test_a17_client_does_not_rewatch_in_a_loop_during_the_drain(
        registry: LocalRegistry) -> None:
    """gRFC A17 ("Call Failure"): when the ``Watch`` call ends, the client starts it again,
    and when that call had received a message the backoff is reset, so the next attempt
    is immediate. The drain ended each open ``Watch`` (``NOT_SERVING``, then ``OK``)
    before its refusal phase, while the server still accepted calls on the connection:
    the client re-opened the ``Watch`` at once, was sent ``NOT_SERVING`` and ended again,
    and so on until the stop's GOAWAY (a grpc-core client: ~75 ``Watch`` calls in the
    0.05 s phase, up to 0.5 s while mesh clients keep calling, each one traced and
    logged). Now the watches end once the stop has begun (GOAWAY sent, listener closed):
    the client cannot re-open the ``Watch`` on the server it drains."""
    mine = _CountingHealth()
    grace_s = 6.0
    srv = meshkit.MeshServer(
        "a17d", [add_echo("w1"), (health_pb2_grpc.add_HealthServicer_to_server, mine)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="w1", drain_delay_s=0.2,
                                     grace_s=grace_s, admin=None))
    await srv.start()
    try:
        async with asyncio.timeout(30), grpc.aio.insecure_channel(
                f"127.0.0.1:{srv.port}",
                options=[("grpc.service_config", _A17_CONFIG)]) as ch:
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"x", timeout=5) == b"w1|x"
            # the channel's health watch is open (A17: started with the connection)
            await until(lambda: mine.watches >= 1, timeout_s=10, what="the A17 Watch")
            before = mine.watches
            in_flight = asyncio.ensure_future(
                ch.unary_unary(method("Sleep"))(b"1000", timeout=10))
            await asyncio.sleep(0.2)  # the call is in flight
            started = time.monotonic()
            await srv.drain()
            took = time.monotonic() - started
            assert await in_flight == b"w1"  # the in-flight call had its grace
            rewatched = mine.watches - before
    finally:
        await asyncio.wait_for(srv.drain(), 15)
    assert took < grace_s / 2, f"the drain took {took:.1f}s of grace_s={grace_s}"
    assert rewatched <= 2, (
        f"the A17 client opened {rewatched} Watch calls during one drain: each ended "
        "Watch was re-opened at once on the draining server")
