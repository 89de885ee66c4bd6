"""The hot-path ``traceparent`` reader's answers at its edges: what it leaves to the
general propagator (``False``), what it ignores (``None``) and what it takes, whatever
order the headers come in (pinned for the reader's per-call cuts)."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanContext

from meshkit.observability._tracing import parse_traceparent

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("metadata", "want"), [
    ((("traceparent", TP.encode()),), False),  # not text
    ((("traceparent", TP + "0"),), False),  # 56 characters: not version 00's form
    ((("traceparent", TP[:-1]),), False),  # 54
    ((("traceparent", "01" + TP[2:]),), False),  # another version
    ((("traceparent", "ff" + TP[2:]),), False),
    ((("traceparent", TP), ("traceparent", TP)), False),  # twice
    ((("tracestate", "a=b"), ("traceparent", TP)), False),  # before it
    ((("baggage", "k=v"), ("traceparent", TP)), False),
    ((("baggage", "k=v"),), False),  # baggage alone
    ((("tracestate", "a=b"),), False),
    ((("traceparent", TP.upper().replace("X", "x")),), None),  # version 00, invalid
    ((("traceparent", "00-" + "0" * 32 + TP[35:]),), None),
    ((("traceparent", TP[:35] + "_" + TP[36:]),), None),
    ((("traceparent", TP[:2] + "_" + TP[3:]),), False),  # not "00-"
    ((), None),
    (None, None),
    ((("user-agent", "x"), ("authorization", "Bearer t")), None),
], ids=["bytes", "long", "short", "version-01", "version-ff", "twice",
        "tracestate-first", "baggage-first", "baggage-alone", "tracestate-alone",
        "upper-case", "zero-trace-id", "bad-separator", "bad-first-separator", "empty",
        "none", "others-only"])
def test_what_the_fast_reader_leaves_or_ignores(metadata: object, want: object) -> None:
    assert parse_traceparent(metadata) is want  # type: ignore[arg-type]


def test_other_keys_around_it_are_passed_over() -> None:
    got = parse_traceparent((("user-agent", "x"), ("traceparent", TP),
                             ("authorization", "Bearer t")))
    assert isinstance(got, SpanContext)
    assert (got.trace_id, got.span_id, int(got.trace_flags), got.is_remote,
            got.is_valid) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1,
                              True, True)


def test_the_global_propagator_is_read_as_the_api_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path reads the API's global propagator without calling
    ``get_global_textmap`` while that function only returns it; a function of another
    shape is called at every read."""
    from opentelemetry import propagate
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from meshkit.observability import _tracing

    assert _tracing._TEXTMAP is propagate
    assert _tracing._textmap_home() is propagate
    other = TraceContextTextMapPropagator()
    monkeypatch.setattr(propagate, "get_global_textmap", lambda: other)
    home = _tracing._textmap_home()
    assert isinstance(home, _tracing._AskedTextMap)
    assert home._HTTP_TEXT_FORMAT is other
    monkeypatch.setattr(_tracing, "_TEXTMAP", home)
    assert parse_traceparent((("traceparent", TP),)) is False  # not the W3C pair: the API's
