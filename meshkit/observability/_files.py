"""Spans as JSON lines in a file, and back: for one machine's demos and offline debugging.

``MESHKIT_TRACE_FILE=/path/spans.jsonl`` makes :func:`configure_tracing` add a
:class:`JsonLinesSpanExporter` (synchronous, one line per finished span), so several
processes can each write their own file and :func:`load_spans` can put a cross-process
trace back together for :func:`~meshkit.observability.render_trace`. Production wants
OTLP (``OTEL_TRACES_EXPORTER=otlp``) instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from meshkit._config import check_path
from meshkit._fork import reset_in_forked_child
from meshkit.errors import ConfigError

__all__ = ["JsonLinesSpanExporter", "load_spans"]


class JsonLinesSpanExporter(SpanExporter):
    """Append each finished span to ``path`` as one JSON object per line.

    Fields: ``trace_id``, ``span_id``, ``parent_span_id`` (hex), ``name``, ``kind``,
    ``start_ns``, ``end_ns``, ``status`` (``OK``/``ERROR``/``UNSET``), ``attributes``,
    ``events`` (``name``, ``ts_ns``, ``attributes``). Attribute values are what the span
    holds (no message bodies or metadata are ever put on meshkit's spans).

    The file is followed as the standard library's ``WatchedFileHandler`` follows its
    own: when the path no longer names the file the exporter has open (logrotate moved it
    aside, its default ``create`` mode, or it was removed), the next export opens a new
    one there, so spans never go on into the rotated (or deleted) file; a file truncated
    in place (``copytruncate``) is appended to from its new end. One ``stat`` per export.
    A child made by ``os.fork()`` appends to the same file (a lock of its own: one a
    thread of the parent held at the fork would hang the child's first span).

    Args:
        path: the file; parent directories are created; opened in append mode.

    Raises:
        ConfigError: ``path`` is no path (``None`` from an unset variable, ``bytes``, a
            number, or ``""``, which would be the current directory).
        OSError: the file cannot be created or opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(check_path("path", path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        self._fd = _open(self.path)
        self._id = _file_id(os.fstat(self._fd))
        _exporters.add(self)  # a lock of its own in a forked child (_forget_parent)

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()``: a new lock (another thread of the parent
        may have held this one at the fork, and would never release it here). The file
        is written with ``os.write`` on its descriptor, with no stream and so no
        stream's lock (a ``BufferedWriter``'s, which a thread of the parent may hold at
        the fork too): the child appends to the same file."""
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans``; never raises (a write error is a failed export)."""
        try:
            lines = [json.dumps(_to_dict(s), separators=(",", ":"), default=str) for s in spans]
            data = memoryview("".join(line + "\n" for line in lines).encode("utf-8"))
            with self._lock:
                if self._closed:
                    return SpanExportResult.FAILURE
                self._follow()
                while data:  # one write(2) in practice (O_APPEND: at the file's end)
                    data = data[os.write(self._fd, data):]
        except (OSError, ValueError):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _follow(self) -> None:
        """Reopen :attr:`path` when it no longer names the open file (moved or removed);
        under the lock.

        Raises:
            OSError: the new file cannot be made (its write fails the export).
        """
        try:
            now: tuple[int, int] | None = _file_id(os.stat(self.path))
        except FileNotFoundError:
            now = None
        if now == self._id:
            return
        new = _open(self.path)
        old, self._fd = self._fd, new
        self._id = _file_id(os.fstat(new))
        with contextlib.suppress(OSError):
            os.close(old)

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(OSError):
                    os.close(self._fd)


def _open(path: Path) -> int:
    """``path`` opened to append to (made when missing, ``0o666`` less the umask, as
    ``open(path, "a")`` makes it; not inherited by ``exec``)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


_exporters = reset_in_forked_child(JsonLinesSpanExporter)


def _file_id(st: os.stat_result) -> tuple[int, int]:
    """What tells one file from another: its device and inode numbers."""
    return st.st_dev, st.st_ino


def _to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    assert ctx is not None
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "ts_ns": e.timestamp, "attributes": dict(e.attributes or {})}
                   for e in span.events],
    }


def load_spans(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
               ) -> list[ReadableSpan]:
    """Read spans written by :class:`JsonLinesSpanExporter` from every file in ``paths``
    (or from the one file ``paths`` names: a string or path object; missing files and
    malformed lines are skipped: a line that is not UTF-8, not JSON or nested too deep
    to parse, lacks a field, or has one of the wrong type, such as a ``start_ns`` that
    is not an integer or ``attributes`` that are not an object).

    Raises:
        ConfigError: ``paths`` (or one of them) is no path: ``None`` from an unset
            variable, ``bytes`` (not read as a sequence of numbers), a number.
    """
    if isinstance(paths, str | os.PathLike):  # one file, not each character's name
        paths = [paths]
    elif isinstance(paths, bytes | bytearray) or not isinstance(paths, Iterable):
        raise ConfigError(f"paths must be a path or a collection of paths, got "
                          f"{type(paths).__name__}")
    spans: list[ReadableSpan] = []
    for path in paths:
        if path != "":  # "" names no file: skipped, as a missing one
            check_path("paths", path)
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        # line by line as bytes: a line that is not UTF-8 fails its own json.loads
        # (UnicodeDecodeError, a ValueError), not the whole file's decoding
        for line in data.splitlines():
            try:
                spans.append(_from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError, RecursionError):  # nested too deep
                continue
    return spans


def _from_dict(d: dict[str, Any]) -> ReadableSpan:
    """The span on one line; ValueError, KeyError or TypeError when it is malformed."""
    trace_id = int(d["trace_id"], 16)
    flags = TraceFlags(TraceFlags.SAMPLED)
    parent = (SpanContext(trace_id, int(d["parent_span_id"], 16), is_remote=True,
                          trace_flags=flags) if d.get("parent_span_id") else None)
    return ReadableSpan(
        name=_typed(d, "name", str),
        context=SpanContext(trace_id, int(d["span_id"], 16), is_remote=False,
                            trace_flags=flags),
        parent=parent,
        kind=SpanKind[d["kind"]],
        start_time=_ns(d, "start_ns"),
        end_time=_ns(d, "end_ns"),
        status=Status(StatusCode[d["status"]]),
        attributes=_attributes(d),
        events=[Event(_typed(e, "name", str), _attributes(e), _ns(e, "ts_ns"))
                for e in _typed(d, "events", list, ())],
    )


def _typed(d: dict[str, Any], key: str, kind: type[Any], default: Any = None) -> Any:
    """``d[key]`` (``default`` when absent or null and a default is given), which must be
    a ``kind``; TypeError when it is not."""
    if not isinstance(d, dict):
        raise TypeError(f"not an object: {d!r}")
    value = d.get(key) if default is not None else d[key]
    if value is None and default is not None:
        return default
    if not isinstance(value, kind):
        raise TypeError(f"{key} is not a {kind.__name__}: {value!r}")
    return value


def _ns(d: dict[str, Any], key: str) -> int:
    """A timestamp in nanoseconds: an integer (not a bool)."""
    value = _typed(d, key, int)
    if isinstance(value, bool):
        raise TypeError(f"{key} is not an int: {value!r}")
    return int(value)


def _attributes(d: dict[str, Any]) -> dict[str, Any]:
    """An object of attributes (absent or null: none)."""
    return dict(_typed(d, "attributes", dict, {}))
