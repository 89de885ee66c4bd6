"""``extract_context`` answers the context the metadata carries, "or an empty one", under
any propagator order: before, with ``OTEL_PROPAGATORS=baggage,tracecontext`` (baggage
first) the API's baggage propagator, given no context, started from the *current* one,
so a server whose handler tasks inherit the context it was started in (a boot span,
its baggage) took that span for the parent of every call that brought none, and handed
the boot baggage to every handler."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshkit.observability._tracing import extract_context

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("order", ["baggage,tracecontext", "tracecontext,baggage"])
def test_nothing_of_the_current_context_is_extracted(monkeypatch: pytest.MonkeyPatch,
                                                     order: str) -> None:
    kinds = {"baggage": W3CBaggagePropagator, "tracecontext": TraceContextTextMapPropagator}
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator(
        [kinds[n]() for n in order.split(",")]))
    boot = NonRecordingSpan(SpanContext(1, 2, False, TraceFlags(1)))
    token = otel_context.attach(baggage.set_baggage(
        "tenant", "boot", trace.set_span_in_context(boot)))
    try:
        empty = extract_context([("baggage", "region=eu")])
        carried = extract_context([("traceparent", TRACEPARENT), ("baggage", "region=eu")])
    finally:
        otel_context.detach(token)
    assert not trace.get_current_span(empty).get_span_context().is_valid
    assert dict(baggage.get_all(empty)) == {"region": "eu"}
    assert trace.get_current_span(carried).get_span_context().span_id == 0xb7ad6b7169203331
    assert dict(baggage.get_all(carried)) == {"region": "eu"}
