"""A span processor whose ``on_start`` raises (a broken enrichment processor of one's own)
does not fail the call: it goes on without its span, counted as any other, and the
failure is logged on ``meshkit.observability``. Before, the mesh channel's call raised the
processor's ``RuntimeError`` to its caller, the server's call was answered ``UNKNOWN``, and
``grpc_client_in_flight`` / ``grpc_server_in_flight`` stayed 1 for good (started, never
finished); a failure at the span's end was already kept from the call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions


class _Broken(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("enrichment processor broke")


def _add(_servicer: Any, server: Any) -> None:
    async def work(request: bytes, context: Any) -> bytes:
        return b"ok:" + request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "hunt.S", {"W": grpc.unary_unary_rpc_method_handler(work),
                   "S": grpc.unary_stream_rpc_method_handler(stream)}),))


def _broken_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(_Broken())
    return provider


@pytest.mark.parametrize("side", ["server", "client"])
async def test_a_span_processor_that_raises_at_start_fails_no_call(
        registry: LocalRegistry, side: str) -> None:
    server_prom, client_prom = CollectorRegistry(), CollectorRegistry()
    srv = meshkit.MeshServer("spans", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="s1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=TelemetryOptions(
                                     tracer_provider=_broken_provider() if side == "server"
                                     else TracerProvider(),
                                     registry=server_prom, access_log=False)))
    await srv.start()
    ch = meshkit.dial("spans", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=TelemetryOptions(
            tracer_provider=_broken_provider() if side == "client" else TracerProvider(),
            registry=client_prom, access_log=False)))
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary("/hunt.S/W")(b"x", timeout=5) == b"ok:x"
    finally:
        await ch.close()
        await srv.drain()
    labels = {"grpc_type": "unary", "grpc_service": "hunt.S", "grpc_method": "W"}
    for prom, where in ((server_prom, "server"), (client_prom, "client")):
        assert prom.get_sample_value(f"grpc_{where}_in_flight", labels) == 0.0, where
        assert prom.get_sample_value(f"grpc_{where}_handled_total",
                                     {**labels, "grpc_code": "OK"}) == 1.0, where


async def test_with_attempt_spans_a_span_processor_that_raises_at_start_fails_no_call(
        registry: LocalRegistry) -> None:
    """The same with ``attempt_spans=True``: the attempt span's start raised the
    processor's error from the attempt, so the call failed."""
    client_prom = CollectorRegistry()
    srv = meshkit.MeshServer("spans", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="s1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=None))
    await srv.start()
    ch = meshkit.dial("spans", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=TelemetryOptions(
            tracer_provider=_broken_provider(), registry=client_prom, access_log=False,
            attempt_spans=True)))
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary("/hunt.S/W")(b"x", timeout=5) == b"ok:x"
        assert [m async for m in ch.unary_stream("/hunt.S/S")(b"y", timeout=5)] == [b"y"]
    finally:
        await ch.close()
        await srv.drain()
    labels = {"grpc_type": "unary", "grpc_service": "hunt.S", "grpc_method": "W"}
    assert client_prom.get_sample_value("grpc_client_handled_total",
                                        {**labels, "grpc_code": "OK"}) == 1.0
