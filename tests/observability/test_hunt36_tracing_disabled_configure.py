"""``configure_tracing`` under ``OTEL_SDK_DISABLED=true`` builds the SDK's disabled
provider and nothing to feed it: before, it still started a batch processor (its thread)
per exporter and created and opened the ``MESHKIT_TRACE_FILE``, for a provider that makes
no spans (the SDK's own configurator sets nothing up then)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.observability._tracing import configure_tracing


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "MESHKIT_TRACE_FILE",
              "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME", "OTEL_PYTHON_ID_GENERATOR"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("given", [False, True])
def test_a_disabled_sdk_gets_no_exporters_threads_or_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: bool) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", " True ")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    trace_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("MESHKIT_TRACE_FILE", str(trace_file))
    before = set(threading.enumerate())
    exporter = InMemorySpanExporter()
    provider = configure_tracing("orderd", exporters=[exporter] if given else None,
                                 set_global=False)
    try:
        assert [t.name for t in set(threading.enumerate()) - before] == []
        assert not trace_file.exists()
        with provider.get_tracer("t").start_as_current_span("s") as span:
            assert not span.is_recording()
    finally:
        provider.shutdown()
    assert exporter.get_finished_spans() == ()
