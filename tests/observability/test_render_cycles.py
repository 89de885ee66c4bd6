"""render_trace draws every span of spans read back from files, even when their parent
links loop (a corrupted or hand-edited JSON-lines file)."""

from __future__ import annotations

import json
from pathlib import Path

from meshkit.observability._files import load_spans
from meshkit.observability._render import render_trace

_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _line(span_id: str, parent: str | None, name: str, start: int) -> str:
    return json.dumps({"trace_id": _TRACE, "span_id": span_id, "parent_span_id": parent,
                       "name": name, "kind": "SERVER", "start_ns": start,
                       "end_ns": start + 1_000_000, "status": "OK", "attributes": {},
                       "events": []})


def test_a_span_that_is_its_own_parent_is_drawn_once(tmp_path: Path) -> None:
    """A span whose parent id is its own id is drawn (as a root whose parent was not
    exported), not a RecursionError."""
    path = tmp_path / "spans.jsonl"
    path.write_text(_line("00f067aa0ba902b7", "00f067aa0ba902b7", "self/Loop", 10) + "\n"
                    + _line("00f067aa0ba902b8", None, "ok/Root", 20) + "\n")
    text = render_trace(load_spans([path]))
    assert text.count("self/Loop") == 1 and text.count("ok/Root") == 1, text


def test_spans_whose_parents_form_a_loop_are_still_drawn(tmp_path: Path) -> None:
    """Two spans each naming the other as parent (no root among them) are drawn, each
    once, not silently left out."""
    path = tmp_path / "spans.jsonl"
    path.write_text(_line("00000000000000a1", "00000000000000a2", "loop/A", 10) + "\n"
                    + _line("00000000000000a2", "00000000000000a1", "loop/B", 20) + "\n")
    text = render_trace(load_spans([path]))
    assert text.count("loop/A") == 1 and text.count("loop/B") == 1, text
