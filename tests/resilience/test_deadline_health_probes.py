"""Deadline admission's ``min_remaining_s`` does not refuse health checks.

``DeadlineOptions(min_remaining_s=...)`` refuses calls with less time left than a
handler needs for its work, its downstream calls included. A ``grpc.health.v1`` check
does no such work, and its callers give it short deadlines: Kubernetes' gRPC probe
``timeoutSeconds`` defaults to 1 s, grpc_health_probe's ``-rpc-timeout`` to 1 s, Consul's
gRPC check its ``timeout``.

What was wrong: a server with ``min_remaining_s=2.0`` answered every such probe
``DEADLINE_EXCEEDED`` "deadline exceeded before the handler ran", so the orchestrator
read a serving instance as down (a pod never ready, restarted by its liveness probe).
A check whose deadline has passed is still refused, as any call; the server's other
methods keep the bound.

A real MeshServer on loopback, a plain grpc.aio client.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import DeadlineOptions
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)


async def test_a_probe_with_a_short_deadline_is_answered(registry: LocalRegistry) -> None:
    server = meshkit.MeshServer("probed", [add_echo("p")], registry=registry,
                                options=meshkit.ServeOptions(
                                    insecure=True, drain_delay_s=0.0, grace_s=0.5,
                                    deadline=DeadlineOptions(min_remaining_s=2.0)))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "probed"):
                got = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=1.0)
                assert got.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            with pytest.raises(grpc.aio.AioRpcError) as info:  # the others keep the bound
                await ch.unary_unary(method("Unary"))(b"x", timeout=1.0)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert info.value.details() == "deadline exceeded before the handler ran"
    finally:
        await server.drain()
