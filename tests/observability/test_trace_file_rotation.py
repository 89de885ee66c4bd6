"""MESHKIT_TRACE_FILE's exporter follows a file rotated by moving it (logrotate's default
``create`` mode, ``mv spans.jsonl spans.jsonl.1``) or removed: later spans go to a new
file at the configured path, as the standard library's ``WatchedFileHandler`` does.

Before, the exporter kept writing to the file it had opened, under its new name (or to a
deleted inode whose disk space is never freed), and the configured path stayed empty
(missing) for the life of the process: ``load_spans(path)`` found none of its spans.
"""

from __future__ import annotations

import os
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from meshkit.observability._files import JsonLinesSpanExporter, load_spans


def _provider(path: Path) -> TracerProvider:
    """A provider exporting every span to ``path`` at once (as MESHKIT_TRACE_FILE)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    return provider


def test_spans_after_a_move_go_to_a_new_file_at_the_path(tmp_path: Path) -> None:
    """One span, the file moved aside, another span: the second is in a new file at the
    configured path, the first stays in the moved one."""
    path = tmp_path / "spans.jsonl"
    provider = _provider(path)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    path.rename(tmp_path / "spans.jsonl.1")
    with tracer.start_as_current_span("after"):
        pass
    provider.shutdown()
    assert [s.name for s in load_spans([tmp_path / "spans.jsonl.1"])] == ["before"]
    assert [s.name for s in load_spans([path])] == ["after"]


def test_spans_after_the_file_is_removed_go_to_a_new_one(tmp_path: Path) -> None:
    """The file removed (a clean-up between demo runs): the next span makes it again."""
    path = tmp_path / "spans.jsonl"
    provider = _provider(path)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    os.unlink(path)
    with tracer.start_as_current_span("after"):
        pass
    provider.shutdown()
    assert [s.name for s in load_spans([path])] == ["after"]


def test_a_copytruncate_rotation_keeps_writing_at_the_start(tmp_path: Path) -> None:
    """logrotate's ``copytruncate``: the file is copied and truncated in place; the
    exporter appends (O_APPEND), so the next span starts the emptied file, no hole."""
    path = tmp_path / "spans.jsonl"
    provider = _provider(path)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    os.truncate(path, 0)
    with tracer.start_as_current_span("after"):
        pass
    provider.shutdown()
    data = path.read_bytes()
    assert data.startswith(b"{") and [s.name for s in load_spans([path])] == ["after"]
