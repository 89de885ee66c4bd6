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


def test_control_characters_in_names_and_attributes_are_escaped(tmp_path: Path) -> None:
    """A span name, attribute or event value carrying a newline or a terminal escape (a
    caller's method name: '/svc/X\\n└─ forged ...') is drawn on its own one line with the
    control characters escaped, so it can neither forge tree lines nor drive a
    terminal."""
    forged = ("svc/Evil\n└─ forged/Child  server  +0.00 ms  1.00 ms  OK\x1b[2J\x9b31m\r"
              "\u2028next")
    line = json.loads(_line("00000000000000b1", None, forged, 10))
    line["attributes"] = {"server.address": "h\nost\x1b]0;title\x07"}
    line["events"] = [{"name": "attempt\n", "ts_ns": 12, "attributes": {"k": "v\x1b[1m"}}]
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(line) + "\n")
    text = render_trace(load_spans([path]))
    assert len(text.splitlines()) == 2, text  # the span and its event
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in text.replace("\n", "")), \
        repr(text)
    assert "svc/Evil\\n└─ forged/Child" in text and "\\x1b[2J" in text, text


def test_a_loop_is_drawn_from_its_earliest_member_not_an_earlier_descendant(
        tmp_path: Path) -> None:
    """Two spans naming each other as parent, and a child of one of them that started
    earlier than both (clock skew between processes): the tree starts at the earliest
    span of the loop, marked, and the child is drawn under its parent, unmarked."""
    path = tmp_path / "spans.jsonl"
    path.write_text(_line("00000000000000c1", "00000000000000c2", "loop/A", 10) + "\n"
                    + _line("00000000000000c2", "00000000000000c1", "loop/B", 20) + "\n"
                    + _line("00000000000000c3", "00000000000000c2", "child/C", 5) + "\n")
    lines = render_trace(load_spans([path])).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("loop/A") and lines[0].endswith("(its parent links loop)")
    assert lines[1].startswith("└─ loop/B"), lines
    assert lines[2].startswith("   └─ child/C") and "links loop" not in lines[2], lines
