"""``OTEL_TRACES_EXPORTER`` naming one exporter twice (``console,console``, any case;
``otlp`` beside ``otlp_proto_grpc``, the exporter it means) sets it up once, as the SDK's
configurator does (its exporters are keyed by entry point name): before, each name got
its own batch processor and every span was exported twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExportResult

from meshkit.observability._tracing import configure_tracing


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "MESHKIT_TRACE_FILE",
              "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("names", ["console,console", "console, CONSOLE ,console"])
def test_an_exporter_named_twice_exports_each_span_once(
        monkeypatch: pytest.MonkeyPatch, names: str) -> None:
    exported: list[str] = []

    def export(self: Any, spans: Sequence[Any]) -> SpanExportResult:
        exported.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS

    monkeypatch.setattr(ConsoleSpanExporter, "export", export)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", names)
    provider = configure_tracing("orderd", set_global=False)
    try:
        with provider.get_tracer("t").start_as_current_span("once"):
            pass
        assert provider.force_flush(5000)
    finally:
        provider.shutdown()
    assert exported == ["once"]


@pytest.mark.parametrize(("names", "protocol", "loads"), [
    ("otlp,otlp_proto_grpc", "", ["otlp"]),
    ("otlp_proto_http, OTLP", "http/protobuf", ["otlp_proto_http"]),
    ("otlp,otlp_proto_http", "grpc", ["otlp", "otlp_proto_http"]),
])
def test_otlp_beside_the_exporter_it_means_loads_it_once(
        monkeypatch: pytest.MonkeyPatch, names: str, protocol: str,
        loads: list[str]) -> None:
    from meshkit.observability import _tracing

    asked: list[str] = []
    monkeypatch.setattr(_tracing, "_exporter", lambda name: asked.append(name))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", names)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    configure_tracing("orderd", set_global=False).shutdown()
    assert asked == loads
