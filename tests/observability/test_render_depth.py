"""render_trace draws a trace deeper than Python's recursion limit (spans read back from
files)."""

from __future__ import annotations

from pathlib import Path

from meshkit.observability._files import load_spans
from meshkit.observability._render import render_trace
from tests.observability.spans_json import span_line


def test_a_chain_deeper_than_the_recursion_limit_is_drawn(tmp_path: Path) -> None:
    """A chain of 1,500 spans each the child of the one before (a deep or corrupted
    trace) is drawn, every span once, not a RecursionError."""
    path = tmp_path / "spans.jsonl"
    depth = 1_500
    path.write_text("".join(span_line(i, i - 1 if i > 1 else None, f"deep/S{i}", i) + "\n"
                            for i in range(1, depth + 1)))
    lines = render_trace(load_spans([path])).splitlines()
    assert len(lines) == depth
    assert lines[0].startswith("deep/S1  client") and "deep/S1500  client" in lines[-1]
    assert lines[2].startswith("   └─ deep/S3  client"), lines[:3]
