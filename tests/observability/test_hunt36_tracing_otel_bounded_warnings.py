"""``implementation="otel"`` bounds the OpenTelemetry API's per-call propagation warnings
as meshkit's own server does (:func:`bound_propagation_warnings`): before, with metrics
and the access log off no ``TelemetryServerInterceptor`` was built, nothing bounded them,
and a caller sending a malformed ``tracestate`` put a warning line quoting it into the
server's log on every call."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshkit.observability import TelemetryOptions, server_interceptors
from meshkit.observability._tracing import PROPAGATION_LOGGERS

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_malformed_tracestate_warns_once_under_the_otel_interceptor(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for name in PROPAGATION_LOGGERS:  # as in a process that built no meshkit server yet
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    provider = TracerProvider()
    opts = TelemetryOptions(tracer_provider=provider, metrics=False, access_log=False)

    async def answer(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(interceptors=server_interceptors("svc", opts,
                                                              implementation="otel"))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "p.S", {"Do": grpc.unary_unary_rpc_method_handler(answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        with caplog.at_level(logging.WARNING, logger="opentelemetry"):
            for _ in range(3):
                await channel.unary_unary("/p.S/Do")(b"x", timeout=5, metadata=[
                    ("traceparent", TRACEPARENT), ("tracestate", "not a member")])
    finally:
        await channel.close()
        await server.stop(None)
        provider.shutdown()
    quoted = [r for r in caplog.records if r.name in PROPAGATION_LOGGERS]
    assert len(quoted) == 1, [r.getMessage() for r in quoted]
