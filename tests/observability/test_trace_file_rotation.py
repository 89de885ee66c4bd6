"""MESHKIT_TRACE_FILE's exporter follows a file rotated by moving it (logrotate's default
``create`` mode, ``mv spans.jsonl spans.jsonl.1``) or removed: later spans go to a new
file at the configured path, as the standard library's ``WatchedFileHandler`` does.

Before, the exporter kept writing to the file it had opened, under its new name (or to a
deleted inode whose disk space is never freed), and the configured path stayed empty
(missing) for the life of the process: ``load_spans(path)`` found none of its spans.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


_FORK_SCRIPT = """
import os, sys, threading, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from meshkit.observability._files import JsonLinesSpanExporter

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(sys.argv[1])))
tracer = provider.get_tracer("t")

def spans():
    while True:
        with tracer.start_as_current_span("thread"):
            pass

for _ in range(2):
    threading.Thread(target=spans, daemon=True).start()
time.sleep(0.05)
hung = 0
for k in range(6):
    pid = os.fork()
    if pid == 0:
        with tracer.start_as_current_span(f"child {k}"):
            pass
        os._exit(0)
    deadline = time.monotonic() + 2
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
print(f"HUNG {hung}", flush=True)
os._exit(0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_thread_exports_can_export(tmp_path: Path) -> None:
    """A process forks while another thread of it ends spans: the exporter's lock, held by
    that thread at the fork, is made again in the child, whose span is written (before,
    a child forked while it was held hung at its first span)."""
    path = tmp_path / "spans.jsonl"
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "HUNG 0", (done.stdout, done.stderr[-2000:])
    names = {s.name for s in load_spans([path])}
    assert {f"child {k}" for k in range(6)} <= names


def test_load_spans_skips_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    """A line holding bytes that are not UTF-8 (a corrupted file, another program's
    output appended) is skipped as a malformed line is: the other spans of that file and
    of the other files are read (before, UnicodeDecodeError lost them all)."""
    good, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    provider = _provider(good)
    with provider.get_tracer("t").start_as_current_span("kept"):
        pass
    provider.shutdown()
    with good.open("ab") as f:
        f.write(b"\xff\xfe not a span\n")
    provider = _provider(other)
    with provider.get_tracer("t").start_as_current_span("other file"):
        pass
    provider.shutdown()
    assert sorted(s.name for s in load_spans([good, other])) == ["kept", "other file"]
