"""MeshServer: health, reflection, registration and graceful drain, in-process."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import SERVICE, add_echo, method


async def test_health_and_reflection_after_start(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A started server answers grpc.health.v1 SERVING and lists its services by reflection."""
    srv = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        hc = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE):
            resp = await hc.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in refl.ServerReflectionInfo(iter([req]), timeout=2):
            names = {s.name for s in answer.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
    assert srv.instance is not None
    assert srv.instance in await registry.instances("echo")


async def test_drain_order_not_serving_deregister_then_finish_in_flight(
    registry: LocalRegistry,
) -> None:
    """Drain flips health, deregisters, lets an in-flight call finish, then refuses new calls."""
    srv = meshkit.MeshServer(
        "echo",
        [add_echo("d1")],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="d1", drain_delay_s=0.2, grace_s=3),
    )
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        sleep = ch.unary_unary(method("Sleep"))
        in_flight = asyncio.ensure_future(sleep(b"500", timeout=5))
        await asyncio.sleep(0.05)
        drain = asyncio.ensure_future(srv.drain())
        hc = health_pb2_grpc.HealthStub(ch)
        await asyncio.sleep(0.1)  # inside drain_delay_s: still serving calls, but NOT_SERVING
        resp = await hc.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await registry.instances("echo") == frozenset()
        assert await in_flight == b"d1"
        await asyncio.wait_for(drain, 5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Unary"))(b"late", timeout=1)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_server_interceptors_run(registry: LocalRegistry) -> None:
    """Server interceptors given in ServeOptions see every call."""
    seen: list[str] = []

    class Record(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
            seen.append(handler_call_details.method)
            return await continuation(handler_call_details)

    srv = meshkit.MeshServer(
        "echo",
        [add_echo("i1")],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0, interceptors=(Record(),)),
    )
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            await ch.unary_unary(method("Unary"))(b"x", timeout=2)
        assert method("Unary") in seen
    finally:
        await srv.drain()


def test_bad_serve_options_quote_the_value() -> None:
    """Bad server options fail at construction, quoting the value."""
    with pytest.raises(meshkit.ConfigError, match="70000"):
        meshkit.ServeOptions(insecure=True, port=70000)
    with pytest.raises(meshkit.ConfigError, match="-2"):
        meshkit.ServeOptions(insecure=True, grace_s=-2)
    with pytest.raises(meshkit.ConfigError, match="'no spaces'"):
        meshkit.MeshServer(
            "no spaces", [], registry=LocalRegistry(), options=meshkit.ServeOptions(insecure=True)
        )


def test_serve_builds_the_one_chain_order() -> None:
    """serve() orders the mesh's checks itself: telemetry, deadline, auth, rate limit, then
    the user's interceptors; the deadline check is on by default."""
    from meshkit.auth import AuthOptions, AuthzPolicy
    from meshkit.resilience import RateLimitOptions
    from meshkit.server import server_chain

    class Mine(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    opts = meshkit.ServeOptions(insecure=True, auth=AuthOptions(policy=AuthzPolicy()),
                                rate_limit=RateLimitOptions(default_rule="10/second"),
                                interceptors=(Mine(),))
    names = [type(i).__name__ for i in server_chain("svc", opts)]
    assert names == ["TelemetryServerInterceptor", "DeadlineInterceptor", "AuthzInterceptor",
                     "RateLimitInterceptor", "Mine"]
    bare = meshkit.ServeOptions(insecure=True, telemetry=None, deadline=None)
    assert server_chain("svc", bare) == ()


def test_mesh_checks_in_interceptors_are_refused() -> None:
    """A meshkit check passed as a plain interceptor is refused, naming the option to use."""
    from meshkit.resilience import DeadlineInterceptor, RateLimitInterceptor, RateLimitOptions

    with pytest.raises(meshkit.ConfigError, match=r"ServeOptions\(deadline=\.\.\.\)"):
        meshkit.ServeOptions(insecure=True, interceptors=(DeadlineInterceptor(),))
    limiter = RateLimitInterceptor(RateLimitOptions(default_rule="1/second"))
    with pytest.raises(meshkit.ConfigError, match=r"ServeOptions\(rate_limit=\.\.\.\)"):
        meshkit.ServeOptions(insecure=True, interceptors=(limiter,))
