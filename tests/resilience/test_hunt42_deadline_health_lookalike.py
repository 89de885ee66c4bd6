"""Deadline admission's probe exemption covers the health service's methods, not any
name under its path.

``DeadlineOptions(min_remaining_s=...)`` admits ``grpc.health.v1`` checks while their
deadline lasts (test_deadline_health_probes.py). It did so for every method name that
starts with ``/grpc.health.v1.Health/``, a prefix the caller writes: on a server with a
catch-all generic handler (a gateway), ``/grpc.health.v1.Health/Anything`` with 0.3 s
left reached the handler where every other name with that little time is refused
``DEADLINE_EXCEEDED`` "deadline exceeded before the handler ran" (the rate limit's twin,
test_hunt42_r_ratelimit_health_lookalike.py). Now only ``Check``, ``Watch`` and ``List``
are probes. Real meshkit servers on loopback.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import DeadlineOptions
from tests.resilience.test_hunt42_r_ratelimit_health_lookalike import _catch_all

pytestmark = pytest.mark.timeout(30)


async def _code(channel: grpc.aio.Channel, name: str) -> str:
    try:
        await channel.unary_unary(name)(b"x", timeout=1.0)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


@pytest.mark.parametrize("suffix", ["Anything", "Check/x", "Checks"],
                         ids=["other-name", "check-subpath", "check-prefix"])
async def test_a_made_up_name_under_the_health_path_keeps_the_bound(
        registry: LocalRegistry, suffix: str) -> None:
    """``min_remaining_s=2``, 1 s left: the made-up name is refused as any method is;
    the real ``Check`` is answered."""
    server = meshkit.MeshServer(
        "gateway", [(_catch_all, None)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                     deadline=DeadlineOptions(min_remaining_s=2.0)))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            lookalike = await _code(ch, f"/grpc.health.v1.Health/{suffix}")
            other = await _code(ch, "/some.Service/Method")
            got = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    finally:
        await server.drain()
    assert other == "DEADLINE_EXCEEDED"
    assert lookalike == "DEADLINE_EXCEEDED", lookalike
    assert got.status == health_pb2.HealthCheckResponse.SERVING
