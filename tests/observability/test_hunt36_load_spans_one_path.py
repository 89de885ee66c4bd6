"""``load_spans("spans.jsonl")`` (one path, not a list of them) read each character of
the string as a file name, found none and answered ``[]`` without a word; one
``pathlib.Path`` raised ``TypeError`` (not iterable). One path is now read as one file."""

from __future__ import annotations

import json
from pathlib import Path

from meshkit.observability._files import load_spans

_SPAN = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "00f067aa0ba902b7",
         "parent_span_id": None, "name": "svc/One", "kind": "SERVER", "start_ns": 1,
         "end_ns": 2, "status": "OK", "attributes": {}, "events": []}


def test_one_path_is_one_file(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(_SPAN) + "\n")
    assert [s.name for s in load_spans(str(path))] == ["svc/One"]
    assert [s.name for s in load_spans(path)] == ["svc/One"]
    assert [s.name for s in load_spans([path, str(path)])] == ["svc/One", "svc/One"]
