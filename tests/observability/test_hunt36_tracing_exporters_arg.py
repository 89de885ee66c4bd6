"""``configure_tracing(exporters=...)`` refuses what is not a span exporter, before any
provider is built or installed: before, ``exporters=["console"]`` (a name for an
exporter), ``[None]`` or ``[InMemorySpanExporter]`` (the class) were each put behind a
batch processor, every span was then lost in the processor's thread (an "Exception while
exporting Span" log per batch) and ``provider.shutdown()`` raised ``AttributeError``;
the provider was already the process's global one for good. One exporter given alone
(not in a list) is that one exporter (it raised ``TypeError``: not iterable)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.errors import ConfigError
from meshkit.observability._tracing import configure_tracing


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "MESHKIT_TRACE_FILE",
              "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("bad", [["console"], "console", [None], [InMemorySpanExporter],
                                 [InMemorySpanExporter(), object()], 5])
def test_what_is_not_an_exporter_is_refused(monkeypatch: pytest.MonkeyPatch,
                                            bad: Any) -> None:
    installed: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    with pytest.raises(ConfigError, match="exporters must be"):
        configure_tracing("orderd", exporters=bad)
    assert installed == []


def test_one_exporter_alone_is_used() -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing("orderd", exporters=exporter, set_global=False)
    try:
        with provider.get_tracer("t").start_as_current_span("one"):
            pass
        assert provider.force_flush(5000)
        assert [s.name for s in exporter.get_finished_spans()] == ["one"]
    finally:
        provider.shutdown()
