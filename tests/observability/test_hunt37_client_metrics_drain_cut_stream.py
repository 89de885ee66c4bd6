"""A plain (not retried) server stream cut by the drain of its departed endpoint
(``drain_timeout_s`` ran out) reads ``UNAVAILABLE`` "its endpoint left and
drain_timeout_s ran out" to its caller (92c5050), but the client's telemetry counted it
``CANCELLED`` in ``grpc_client_handled_total``: the raw grpc.aio attempt it watches was
cancelled by the pool, and a cancel read as the caller's own. A dashboard of client
errors then showed a scale-down as callers giving up. Now the telemetry asks the
channel whether the drain cut the call and counts the status the caller reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.echo import SERVICE, method, raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(40)


def _handler(tag: bytes) -> grpc.GenericRpcHandler:
    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield tag + b"|0"
        if tag == b"e1":
            await asyncio.sleep(30)
        yield tag + b"|end"

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerStream": grpc.unary_stream_rpc_method_handler(stream)})


def _inst(instance_id: str, port: int) -> Instance:
    return Instance(service="echo", instance_id=instance_id, host="127.0.0.1", port=port)


def _handled(prom: CollectorRegistry, code: str) -> float:
    return prom.get_sample_value("grpc_client_handled_total", {
        "grpc_service": SERVICE, "grpc_method": "ServerStream",
        "grpc_type": "server_stream", "grpc_code": code}) or 0.0


async def test_a_plain_stream_cut_by_the_drain_is_counted_unavailable(
        registry: LocalRegistry) -> None:
    prom = CollectorRegistry()
    telemetry = TelemetryOptions(registry=prom, tracing=False, access_log=False)
    async with raw_server(_handler(b"e1")) as (_, p1), \
            raw_server(_handler(b"e2")) as (_, p2):
        i1 = _inst("e1", p1)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=None, drain_timeout_s=0.3,
                                   telemetry=telemetry)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
            assert await call.read() == b"e1|0"
            await registry.register(_inst("e2", p2))
            await ch.wait_for_endpoints(2)
            await registry.deregister(i1)
            await until(call.done, timeout_s=10, what="the cut")
            assert await call.code() is grpc.StatusCode.UNAVAILABLE
            await until(lambda: _handled(prom, "Unavailable") + _handled(prom, "Canceled")
                        >= 1, timeout_s=10, what="the stream counted")
            assert _handled(prom, "Canceled") == 0
            assert _handled(prom, "Unavailable") == 1
            # a caller's own cancel is still counted CANCELLED
            mine = ch.unary_stream(method("ServerStream"))(b"y", timeout=20)
            assert await mine.read() == b"e2|0"
            mine.cancel()
            await until(lambda: _handled(prom, "Canceled") >= 1, timeout_s=10,
                        what="the cancel counted")
