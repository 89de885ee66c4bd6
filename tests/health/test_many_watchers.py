"""Many open health ``Watch`` streams: no call slot taken, all ended by the drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import meshkit
from meshkit.discovery import LocalRegistry
from tests.support.echo import add_echo, method
from tests.support.wait import until

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@pytest.mark.parametrize("read_requests", [True, False])
async def test_sixty_watchers_hold_no_slot_and_the_drain_ends_each_told(
        registry: LocalRegistry, read_requests: bool) -> None:
    """60 ``Watch`` streams (under the 100 streams one connection may open) on a server
    capped at 2 calls: unary calls are still served, with the request gate and without;
    at the drain each watcher is sent ``NOT_SERVING`` (a watch of an unknown service
    too) and its call ends ``OK``, in well under ``grace_s``."""
    grace_s = 8.0
    srv = meshkit.MeshServer(
        "manyd", [add_echo("m1")], registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, instance_id="m1", drain_delay_s=0.1, grace_s=grace_s,
            admin=None, limits=meshkit.ServerLimits(max_concurrent_rpcs=2,
                                                    read_requests=read_requests)))
    await srv.start()
    names = ["" if i % 3 else "no.such.Service" for i in range(60)]
    try:
        async with asyncio.timeout(30), \
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            calls = [stub.Watch(health_pb2.HealthCheckRequest(service=n)) for n in names]
            seen: list[list[Any]] = [[] for _ in calls]

            async def read(i: int) -> grpc.StatusCode:
                try:
                    async for reply in calls[i]:
                        seen[i].append(reply.status)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return await calls[i].code()

            readers = [asyncio.ensure_future(read(i)) for i in range(len(calls))]
            try:
                await until(lambda: all(seen), timeout_s=15, what="every first status")
                assert [s[0] for s in seen] == [
                    _UNKNOWN if n else _SERVING for n in names]
                unary = ch.unary_unary(method("Unary"))
                for _ in range(3):
                    assert await unary(b"x", timeout=5) == b"m1|x"
                started = time.monotonic()
                await srv.drain()
                took = time.monotonic() - started
                codes = await asyncio.gather(*readers)
            finally:
                for call in calls:
                    call.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
    finally:
        await asyncio.wait_for(srv.drain(), 15)
    assert set(codes) == {grpc.StatusCode.OK}, codes
    assert all(s[-1] == _NOT_SERVING for s in seen), seen
    assert took < grace_s / 2, f"the drain took {took:.1f}s of grace_s={grace_s}"
