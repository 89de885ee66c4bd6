"""``grpc.health.v1.Health/List`` on a meshkit server (gRFC A90, Final).

The health service's ``List`` (in the ``health.proto`` grpcio-health-checking ships, and
named by meshkit's own docs among the health methods: ``HEALTH_METHODS``, the auth
``exempt_methods`` examples) reached the generated base servicer's ``List``, which sets
``UNIMPLEMENTED`` and raises ``NotImplementedError``: every call answered
``UNIMPLEMENTED`` and was logged as an unhandled exception with a traceback (a
dashboard polling it: an error line per poll). meshkit's own servicer now answers it as
A90 says and grpc-go's ``health.Server`` does: a snapshot of every service's status (the
server's ``""`` and each name set), ``RESOURCE_EXHAUSTED`` past 100 services; during the
drain each is ``NOT_SERVING``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry

_APP = "hunt44.Listed"
_S = health_pb2.HealthCheckResponse


def _add(_servicer: Any, server: Any) -> None:
    async def call(request: bytes, context: Any) -> bytes:
        return request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_APP, {
        "Call": grpc.unary_unary_rpc_method_handler(call)}),))


def _statuses(response: health_pb2.HealthListResponse) -> dict[str, str]:
    return {name: _S.ServingStatus.Name(value.status)
            for name, value in response.statuses.items()}


async def test_list_answers_every_status_and_not_serving_in_the_drain(
        registry: LocalRegistry, caplog: pytest.LogCaptureFixture) -> None:
    """List answers the statuses Check answers, one by one; NOT_SERVING once draining;
    nothing logged as an unhandled exception."""
    srv = meshkit.MeshServer("listed", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, admin=None,
                                                          drain_delay_s=5.0, grace_s=1.0))
    await srv.start()
    drain: asyncio.Future[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await srv.health.set("extra.Svc", _S.NOT_SERVING)
            got = _statuses(await asyncio.wait_for(
                stub.List(health_pb2.HealthListRequest(), timeout=10), 20))
            assert got == {"": "SERVING", "listed": "SERVING", _APP: "SERVING",
                           "extra.Svc": "NOT_SERVING"}, got
            drain = asyncio.ensure_future(srv.drain())
            deadline = asyncio.get_running_loop().time() + 20
            while True:  # the drain's first step sets every status NOT_SERVING
                got = _statuses(await asyncio.wait_for(
                    stub.List(health_pb2.HealthListRequest(), timeout=10), 20))
                if set(got.values()) == {"NOT_SERVING"}:
                    break
                assert asyncio.get_running_loop().time() < deadline, got
                await asyncio.sleep(0.02)
            assert set(got) == {"", "listed", _APP, "extra.Svc"}, got
    finally:
        await asyncio.wait_for(drain if drain is not None else srv.drain(), 30)
    assert not [r for r in caplog.records if "unhandled exception" in r.getMessage()]


async def test_list_of_too_many_services_is_resource_exhausted(
        registry: LocalRegistry) -> None:
    """Past 100 services (A90's maximum), List answers RESOURCE_EXHAUSTED."""
    srv = meshkit.MeshServer("listed", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, admin=None,
                                                          drain_delay_s=0.0, grace_s=1.0))
    await srv.start()
    try:
        for i in range(100):
            await srv.health.set(f"many.S{i}", _S.SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(
                    stub.List(health_pb2.HealthListRequest(), timeout=10), 20)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert "100" in (err.value.details() or "")
    finally:
        await asyncio.wait_for(srv.drain(), 30)
