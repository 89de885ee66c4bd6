"""``implementation="otel"`` honours ``TelemetryOptions.quiet_methods`` ("get no span and no
access log, only metrics"): before, opentelemetry-instrumentation-grpc's interceptors
were built without a filter, so every health check (``/grpc.health.v1.Health/Check``, a
quiet method by default) made a SERVER span, and a CLIENT span per check on the caller,
a trace per probe every few seconds; meshkit's own implementation makes none."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.errors import ConfigError
from meshkit.observability import (
    TelemetryOptions,
    attempt_interceptors,
    otel_server_interceptor,
    server_interceptors,
)


async def test_quiet_methods_get_no_otel_span_on_either_side() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    opts = TelemetryOptions(tracer_provider=provider, metrics=False, access_log=False)

    async def answer(request: bytes, context: Any) -> bytes:
        return request

    handlers = {name: grpc.unary_unary_rpc_method_handler(answer) for name in ("Check", "Do")}
    server = grpc.aio.server(interceptors=server_interceptors("svc", opts,
                                                              implementation="otel"))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers),
        grpc.method_handlers_generic_handler("p.S", handlers)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=attempt_interceptors(opts, implementation="otel"))
    try:
        assert await channel.unary_unary("/grpc.health.v1.Health/Check")(b"h", timeout=5) \
            == b"h"
        assert await channel.unary_unary("/p.S/Do")(b"x", timeout=5) == b"x"
    finally:
        await channel.close()
        await server.stop(None)
    spans = sorted((s.name, s.kind.name) for s in exporter.get_finished_spans())
    assert spans == [("/p.S/Do", "CLIENT"), ("/p.S/Do", "SERVER")]
    provider.shutdown()


def test_quiet_methods_as_one_string_are_refused_as_such() -> None:
    with pytest.raises(ConfigError, match="got the string"):
        otel_server_interceptor(quiet_methods="/grpc.health.v1.Health/*")
