"""``render_trace(spans, attributes="server.address")`` (one key, not a list of them)
looked for an attribute named after each character of the string, found none and drew
no attribute without a word; one string is now that one key."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from meshkit.observability import render_trace


def test_one_attribute_key_is_one_key() -> None:
    span = ReadableSpan(name="svc/M", context=SpanContext(1, 2, is_remote=False),
                        kind=SpanKind.CLIENT, start_time=0, end_time=1_000_000,
                        attributes={"server.address": "orderd", "x": "y"})
    assert "[server.address=orderd]" in render_trace([span], attributes="server.address")
    assert "[server.address=orderd x=y]" in render_trace(
        [span], attributes=["server.address", "x"])
