"""Statuses set on ``MeshServer.health`` (meshkit's own servicer) before ``start()``."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import SERVICE, add_echo

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> Any:
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return reply.status


async def test_statuses_set_on_meshkits_own_servicer_before_start_are_kept(
        registry: LocalRegistry) -> None:
    """A service warming up sets its gRPC service ``NOT_SERVING`` on ``MeshServer.health``
    before ``start()`` (to turn it ``SERVING`` once its caches are loaded). ``start()``
    leaves the statuses set before it on the user's own servicer as set, and the README
    says meshkit drives that one "as its own", but on meshkit's own servicer it
    overwrote them with ``SERVING``: health checkers (Consul's gRPC check, Kubernetes'
    gRPC probe, A17 clients) were told the service was ready before it was. Now both
    servicers keep the statuses set before ``start()``; the ones not set are SERVING."""
    srv = meshkit.MeshServer(
        "warmd", [add_echo("w1")], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="w1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None))
    await srv.health.set(SERVICE, _NOT_SERVING)
    await srv.health.set("custom.Dependency", _NOT_SERVING)
    await srv.start()
    try:
        async with asyncio.timeout(15), \
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            got = {name: await _check(stub, name)
                   for name in ("", "warmd", SERVICE, "custom.Dependency")}
            assert got == {"": _SERVING, "warmd": _SERVING, SERVICE: _NOT_SERVING,
                           "custom.Dependency": _NOT_SERVING}, got
            await srv.health.set(SERVICE, _SERVING)  # warmed up
            assert await _check(stub, SERVICE) == _SERVING
    finally:
        await asyncio.wait_for(srv.drain(), 10)
