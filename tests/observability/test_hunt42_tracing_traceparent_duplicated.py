"""``extract_context`` of metadata with two ``traceparent`` entries has no remote parent
(W3C Trace Context's test suite, ``test_traceparent_duplicated``: "expects ... a newly
generated trace_id"; HTTP joins repeated fields into one value, which does not parse).
Before, the API's propagator took the first entry's trace (with a later version's
entries too), so metadata a caller assembled (from another transport, or merged from
two sources) was filed under a trace the W3C rules say to ignore. (Through a grpc
server the question does not arise: grpc core keeps one ``traceparent``, the last.) A
single entry, and a ``tracestate`` given in several entries (which W3C combines), are
read as ever."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from meshkit.observability._tracing import extract_context

pytestmark = pytest.mark.timeout(30)

FIRST = "00-12345678901234567890123456789011-1234567890123456-01"
SECOND = "00-12345678901234567890123456789012-1234567890123456-01"
LATER_VERSION = "01-12345678901234567890123456789013-1234567890123456-01-extra"
IDS = {0x12345678901234567890123456789011, 0x12345678901234567890123456789012,
       0x12345678901234567890123456789013}


@pytest.mark.parametrize("entries", [
    [FIRST, SECOND], [FIRST, FIRST], [LATER_VERSION, LATER_VERSION], [FIRST, "garbage"],
], ids=["different", "same", "later-version", "one-invalid"])
def test_extract_ignores_a_traceparent_given_twice(entries: list[str]) -> None:
    md = [("traceparent", v) for v in entries] + [("tracestate", "a=1")]
    parent = trace.get_current_span(extract_context(md)).get_span_context()
    assert not parent.is_valid
    assert parent.trace_id not in IDS


def test_one_traceparent_and_several_tracestate_entries_are_read() -> None:
    parent = trace.get_current_span(extract_context(
        [("traceparent", FIRST), ("tracestate", "a=1"), ("tracestate", "b=2")],
    )).get_span_context()
    assert parent.trace_id == 0x12345678901234567890123456789011
    assert dict(parent.trace_state) == {"a": "1", "b": "2"}
