"""A lean span (meshkit's sampled RPC span) ends through the processors its provider has
when it ends, as the SDK's synchronous multi-processor reads them then: one added while
the span is open gets that span's ``_on_ending`` and ``on_end`` (its ``on_start`` ran
before it was there), one added before it starts gets all three. Pinned for the per-call
cuts of the lean span's check for added processors (``SpanStarter.start``,
``LeanSdkSpan._meshkit_end``)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshkit.observability._tracing import SpanStarter

pytestmark = pytest.mark.timeout(30)


class _Hooks(SpanProcessor):
    """Keeps the span names each hook was given."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ending: list[str] = []
        self.ended: list[str] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.started.append(span.name)

    def _on_ending(self, span: Any) -> None:
        self.ending.append(span.name)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span.name)


def test_a_processor_added_while_a_span_is_open_gets_its_end() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    starter = SpanStarter(provider, SpanKind.CLIENT)
    try:
        first = starter.start("svc/First", None, None, {})
        assert type(first).__name__ == "LeanSdkSpan", type(first)
        mid = _Hooks()
        provider.add_span_processor(mid)  # first is open, no span started since
        assert first is not None
        first.end()
        second = starter.start("svc/Second", None, None, {})
        assert second is not None
        second.end()
        assert mid.started == ["svc/Second"]
        assert mid.ending == mid.ended == ["svc/First", "svc/Second"]
        assert [s.name for s in exporter.get_finished_spans()] == ["svc/First", "svc/Second"]
    finally:
        provider.shutdown()
