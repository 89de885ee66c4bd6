"""``configure_tracing(exporters=[...])`` uses those exporters "instead of
``OTEL_TRACES_EXPORTER``", so the exporter variables it does not use cannot refuse it:
before, an ``OTEL_TRACES_EXPORTER`` naming an exporter this Python does not have
(``zipkin``, set for the pod's other processes) or an OTLP protocol only another SDK
speaks (``http/json``, the JavaScript SDK's default, beside an OTLP endpoint) raised
``ConfigError`` and the process could not set its own exporters up."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.errors import ConfigError
from meshkit.observability._tracing import configure_tracing


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
              "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "MESHKIT_TRACE_FILE",
              "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME",
              "OTEL_PYTHON_ID_GENERATOR"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("env", [
    {"OTEL_TRACES_EXPORTER": "zipkin"},
    {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
])
def test_own_exporters_ignore_the_exporter_variables(monkeypatch: pytest.MonkeyPatch,
                                                     env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    exporter = InMemorySpanExporter()
    provider = configure_tracing("orderd", exporters=[exporter], set_global=False)
    try:
        with provider.get_tracer("t").start_as_current_span("mine"):
            pass
        assert provider.force_flush(5000)
        assert [s.name for s in exporter.get_finished_spans()] == ["mine"]
    finally:
        provider.shutdown()
    with pytest.raises(ConfigError):  # from the environment, they are still checked
        configure_tracing("orderd", set_global=False)
