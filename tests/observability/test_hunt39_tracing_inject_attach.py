"""The hot-path writers of trace context: ``inject_span`` writes one ``traceparent`` (an
earlier one replaced where it stands: a retried or re-injected call carries one), and
``attach_span``/``detach_context`` make a span current and restore the context before
(pinned for their per-call cuts)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from meshkit.observability._tracing import attach_span, detach_context, inject_span

TID, SID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
WANT = f"00-{TID:032x}-{SID:016x}-01"

pytestmark = pytest.mark.timeout(30)


def _span(state: TraceState | None = None, tid: int = TID) -> Any:
    return NonRecordingSpan(SpanContext(tid, SID, False, TraceFlags(1), state))


def test_an_earlier_traceparent_is_replaced_where_it_stands() -> None:
    md: list[Any] = [("a", "1"), ("traceparent", "00-old"), ("b", "2")]
    inject_span(md, _span())
    assert md == [("a", "1"), ("traceparent", WANT), ("b", "2")]
    inject_span(md, _span())  # again: still one
    assert md == [("a", "1"), ("traceparent", WANT), ("b", "2")]


def test_without_one_it_is_appended_with_the_tracestate() -> None:
    md: list[Any] = [("authorization", "Bearer t")]
    inject_span(md, _span(TraceState([("k", "v")])))
    assert md == [("authorization", "Bearer t"), ("traceparent", WANT), ("tracestate", "k=v")]
    empty: list[Any] = []
    inject_span(empty, _span())
    assert empty == [("traceparent", WANT)]


def test_an_invalid_span_writes_nothing() -> None:
    md: list[Any] = [("a", "1")]
    inject_span(md, _span(tid=0))
    assert md == [("a", "1")]


def test_attach_makes_the_span_current_and_detach_restores() -> None:
    span = _span()
    before = otel_context.get_current()
    token = attach_span(span)
    try:
        assert trace.get_current_span() is span
        inner = attach_span(_span(tid=TID + 1), otel_context.Context({"x": 1}))
        assert otel_context.get_value("x") == 1
        assert trace.get_current_span().get_span_context().trace_id == TID + 1
        detach_context(inner)
        assert trace.get_current_span() is span
        assert otel_context.get_value("x") is None
    finally:
        detach_context(token)
    assert otel_context.get_current() is before
