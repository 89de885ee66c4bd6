"""Header-only health checks cannot hold the health check reserve.

What a user saw: the request gate keeps 8 places past ``max_concurrent_rpcs`` for the
health ``Check`` (Kubernetes' and Consul's gRPC probes), so that an overloaded server
still answers its probes; a check holding one was never evicted, and waited up to
``first_message_timeout_s`` (10 s) for its request. Eight checks that sent their headers
and no request (a broken or hostile peer, renewed every 10 s) held the whole reserve, and
while every call slot was busy each real probe was shed ``RESOURCE_EXHAUSTED`` "server
busy": the probe failed and the pod was restarted. Now, with the reserve full, a new
check takes the place of the check that has waited longest for its request once that
wait reaches ``evict_waiting_after_s`` (a probe sends its few bytes with its headers),
which ends ``CANCELLED`` "request did not arrive in time", counted as evicted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.server import ServerLimits
from tests.support.wait import until


async def test_a_probe_takes_the_reserved_place_of_a_header_only_check(
    registry: LocalRegistry,
) -> None:
    """Every call slot busy with a running call and all 8 reserved places held by
    header-only checks: a real probe is answered SERVING, one idle check is evicted."""
    release = asyncio.Event()

    async def busy(request: bytes, context: object) -> bytes:
        await release.wait()
        return b"done"

    def add(_servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Busy", {"Work": grpc.unary_unary_rpc_method_handler(busy)}),))

    srv = meshkit.MeshServer("reserve", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, drain_delay_s=0, admin=None,
                                 limits=ServerLimits(max_concurrent_rpcs=1,
                                                     evict_waiting_after_s=0.5,
                                                     first_message_timeout_s=20.0)))
    await srv.start()
    gate = srv.gate
    assert gate is not None
    idle: list[Any] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            work = asyncio.ensure_future(ch.unary_unary("/test.Busy/Work")(b"x", timeout=30))
            await until(lambda: gate.active == 1, timeout_s=10, what="the slot busy")
            idle = [ch.stream_stream("/grpc.health.v1.Health/Check")() for _ in range(8)]
            await until(lambda: gate.slots == 9, timeout_s=10,
                        what="the 8 header-only checks in the reserve")
            await asyncio.sleep(1.0)  # past evict_waiting_after_s
            answer = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            await until(lambda: any(c.done() for c in idle), timeout_s=5,
                        what="an idle check ended")
            ended = [c for c in idle if c.done()]
            assert len(ended) == 1
            assert await ended[0].code() is grpc.StatusCode.CANCELLED
            assert await ended[0].details() == "request did not arrive in time"
            assert (gate.evicted, gate.timed_out, gate.shed) == (1, 0, 0)
            release.set()
            assert await work == b"done"
    finally:
        release.set()
        for c in idle:
            c.cancel()
        await srv.drain()
