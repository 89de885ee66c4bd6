"""``render_trace(spans, trace_id="0af7...")`` (the hex form access lines and span files
write, and a user copies) compared the int trace ids with the string, matched none and
drew nothing without a word; a hex string now selects that trace, and text that is not
a trace id raises ``ValueError`` quoting it."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from meshkit.observability import render_trace

_TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def _span(trace_id: int, name: str) -> ReadableSpan:
    return ReadableSpan(name=name, context=SpanContext(trace_id, 2, is_remote=False),
                        kind=SpanKind.CLIENT, start_time=0, end_time=1_000_000)


def test_a_hex_trace_id_selects_that_trace() -> None:
    spans = [_span(_TRACE, "svc/Wanted"), _span(7, "svc/Other")]
    for trace_id in ("0af7651916cd43dd8448eb211c80319c", "0AF7651916CD43DD8448EB211C80319C",
                     _TRACE):
        text = render_trace(spans, trace_id=trace_id)
        assert "svc/Wanted" in text and "svc/Other" not in text, (trace_id, text)
    with pytest.raises(ValueError, match="not-hex"):
        render_trace(spans, trace_id="not-hex")
