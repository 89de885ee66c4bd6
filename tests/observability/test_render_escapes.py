"""render_trace on spans read back from files: a status code attribute that is not a
number is drawn escaped, one line per span."""

from __future__ import annotations

from pathlib import Path

from meshkit.observability._files import load_spans
from meshkit.observability._render import render_trace
from tests.observability.spans_json import span_line


def test_a_status_code_attribute_with_control_characters_is_escaped(
        tmp_path: Path) -> None:
    """An ``rpc.grpc.status_code`` attribute that is no known code (a string from an
    edited file) is drawn escaped on the span's one line, not forging tree lines."""
    path = tmp_path / "spans.jsonl"
    forged = "0\n└─ forged/Child  server  +0.00 ms  1.00 ms  OK\x1b[2J"
    path.write_text(span_line(1, None, "svc/M", 10, {"rpc.grpc.status_code": forged}) + "\n"
                    + span_line(2, None, "svc/N", 20, {"rpc.grpc.status_code": 5}) + "\n")
    text = render_trace(load_spans([path]))
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "0\\n└─ forged/Child" in lines[0] and "\\x1b[2J" in lines[0], text
    assert lines[1].endswith("NOT_FOUND"), text
