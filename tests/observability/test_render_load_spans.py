"""load_spans skips a malformed line of any shape, as documented: a line of deeply nested
JSON (a corrupted file) is skipped, the other lines still read."""

from __future__ import annotations

import json
from pathlib import Path

from meshkit.observability._files import load_spans

_GOOD = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "00f067aa0ba902b7",
         "parent_span_id": None, "name": "svc/Good", "kind": "SERVER", "start_ns": 1,
         "end_ns": 2, "status": "OK", "attributes": {}, "events": []}


def test_a_deeply_nested_line_is_skipped(tmp_path: Path) -> None:
    """A line of 100,000 nested arrays (json.loads raises RecursionError on it) is
    skipped like any malformed line; the good line after it is read."""
    path = tmp_path / "spans.jsonl"
    path.write_text("[" * 100_000 + "\n" + json.dumps(_GOOD) + "\n")
    spans = load_spans([path])
    assert [s.name for s in spans] == ["svc/Good"]
