"""render_trace escaped C0/C1 controls and line separators only: a span name or attribute
value holding a Unicode format character (U+202E RIGHT-TO-LEFT OVERRIDE, U+2066..U+2069
isolates, U+200B..U+200F, U+FEFF) went to the terminal raw, where a bidi override
reorders what the line shows (``/a.B/Get\u202eteleD`` reads as ``/a.B/GetDelete``). A
caller's method name reaches span files as ``rpc.method_original`` of an unknown method
and as the span name of another SDK's spans. The access log escapes every character
that is not printable (``meshkit._log.printable``); render_trace now does the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.observability._files import load_spans
from meshkit.observability._render import render_trace
from tests.observability.spans_json import span_line

_CASES = {"rlo": "\u202e", "lri": "\u2066", "pdi": "\u2069", "zwsp": "\u200b",
          "rlm": "\u200f", "bom": "\ufeff", "esc": "\x1b", "nel": "\x85", "nl": "\n"}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_format_characters_are_escaped(case: str, tmp_path: Path) -> None:
    ch = _CASES[case]
    path = tmp_path / "spans.jsonl"
    path.write_text(span_line(1, None, f"a.B/Get{ch}teleD", 10,
                              {"rpc.method_original": f"/a.B/X{ch}Y"}) + "\n",
                    encoding="utf-8")
    text = render_trace(load_spans([path]), attributes=("rpc.method_original",))
    assert ch not in text, ascii(text)
    escaped = ch.encode("unicode_escape").decode("ascii")
    assert f"a.B/Get{escaped}teleD" in text, ascii(text)
    assert f"/a.B/X{escaped}Y" in text, ascii(text)
    assert len(text.splitlines()) == 1


def test_printable_text_is_drawn_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text(span_line(1, None, "ecom.v1.Ü/Größe 注文", 10) + "\n", encoding="utf-8")
    assert render_trace(load_spans([path])).startswith("ecom.v1.Ü/Größe 注文  client")
