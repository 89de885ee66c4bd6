"""Structured logs: structlog set-up, trace ids on every line, secret redaction."""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import io
import json as _json
import logging
import math
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, MutableMapping
from contextvars import Context, ContextVar, copy_context
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from meshkit._config import check_bool, check_int, check_number
from meshkit._env import decimal_number
from meshkit._log import (  # installs the quiet default
    _plain_traceback,
    get_logger,
    is_sensitive_key,
    redact_exception,
    redact_secrets,
)
from meshkit.errors import ConfigError

_log = get_logger(__name__)

try:  # optional (``meshkit[fast]``): the JSON encoder structlog recommends for speed
    import orjson as _orjson
except ImportError:  # pragma: no cover - CI installs it; the fallback is tested by patching
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "ACCESS_CAPTURED",
    "ACCESS_INLINE",
    "ACCESS_OFF",
    "SPAN_CONTEXT_IS_TUPLE",
    "AccessEvent",
    "BufferedLineWriter",
    "TelemetryFailures",
    "access_active",
    "access_logger",
    "access_mode",
    "add_trace_context",
    "configure_logging",
    "duration_ms",
    "flush_logs",
    "get_logger",
    "is_sensitive_key",
    "json_dumps",
    "json_str",
    "line_head",
    "line_tail",
    "redact_secrets",
    "write_access",
]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
# the other names the standard library's logging (and structlog) give these levels: the
# spelling of most deployment templates (MESHKIT_LOG_LEVEL=warn)
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}

def _span_context_is_tuple() -> bool:
    """Whether a ``SpanContext`` is the tuple ``(trace_id, span_id, is_remote,
    trace_flags, trace_state, is_valid)`` (opentelemetry-api's layout since 1.0): the hot
    paths then unpack it instead of calling its properties."""
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    state, flags = TraceState([("k", "v")]), TraceFlags(TraceFlags.SAMPLED)
    sc = SpanContext(3, 4, True, flags, state)
    return isinstance(sc, tuple) and len(sc) == 6 and tuple(sc) == (
        sc.trace_id, sc.span_id, sc.is_remote, sc.trace_flags, sc.trace_state,
        sc.is_valid) == (3, 4, True, flags, state, True)


SPAN_CONTEXT_IS_TUPLE = _span_context_is_tuple()


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id`` (32 hex) and ``span_id`` (16 hex) of the current
    OpenTelemetry span, if there is a valid one and the event has none yet.

    Inside a call handled under :func:`meshkit.observability.server_interceptors` the
    current span is the call's server span, so every line the handler logs carries it.
    """
    if "trace_id" not in event_dict:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event_dict["trace_id"] = format(ctx.trace_id, "032x")
            event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def _merge_contextvars_redacted(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor of the console access log: ``merge_contextvars``, the merged
    values passed through :func:`redact_secrets` (the event's own fields, fixed by
    meshkit, are not); nothing to do while nothing was ever bound."""
    if _BOUND_NAMES is not None and not _BOUND_NAMES:
        return event_dict
    bound = structlog.contextvars.get_contextvars()
    if bound:
        redact_secrets(logger, method_name, bound)
        for key, value in bound.items():
            event_dict.setdefault(key, value)
    return event_dict


_RECORD_SIZE = 200  # what a captured record counts for in max_buffer_bytes (a typical line)


class BufferedLineWriter:
    """A structlog logger that writes rendered lines to ``file`` in batches: at most
    ``flush_interval_s`` after the first unwritten line (a timer on the running asyncio
    loop; re-armed on the next writing loop if that one has stopped), as soon as
    ``max_buffer_bytes`` are pending, at :func:`flush_logs` and at interpreter exit (a
    ``multiprocessing`` worker's too).
    Outside an event loop every line is written at once. A line logged on the thread
    that is writing a batch (a finalizer the garbage collector runs there, e.g. a dropped
    call's coroutine logging its access line, or a signal handler) is written right
    after that batch.

    This is how the access log is written (Envoy's access logs flush on a 1 s interval by
    default, ``file_flush_interval_msec``): a few ``write()`` s per batch instead of one
    per call. A batch goes out in chunks of whole lines, each at most ``PIPE_BUF`` bytes
    (4096 on Linux) once encoded and flushed on its own (a line longer than that goes
    alone): a pipe write of up to ``PIPE_BUF`` bytes is atomic (POSIX ``write(2)``), so
    processes sharing a stderr pipe (pre-fork workers, a container's processes) never
    splice each other's lines, whereas a larger write may be cut anywhere while the
    reader lags. A process killed with SIGKILL loses at most the last
    ``flush_interval_s`` of lines.

    Args:
        file: a text stream (default ``sys.stderr`` at write time; lines are dropped
            while it is ``None``, the process started with standard error closed, and
            when the stream fails: closed, or broken like a pipe whose reader is gone).
        flush_interval_s: seconds (default 0.2; 0 writes every line at once, > 0 and
            <= 60 otherwise).
        max_buffer_bytes: pending characters that force a write (an int, default 65536,
            >= 0).

    Raises:
        ConfigError: a value out of range or of the wrong type (a string, a bool), named
            and quoted; a ``file`` that is no stream with ``write()`` (a path: open it,
            ``open(path, "a")``).
    """

    def __init__(self, file: TextIO | None = None, *, flush_interval_s: float = 0.2,
                 max_buffer_bytes: int = 65536) -> None:
        check_number("flush_interval_s", flush_interval_s, high=60)
        check_int("max_buffer_bytes", max_buffer_bytes, low=0)
        if file is not None and (isinstance(file, type)
                                 or not callable(getattr(file, "write", None))):
            # else every line raised AttributeError where it was written
            raise ConfigError("file must be a text stream with write() (a path: open it, "
                              f"open(path, 'a')) or None, got {file!r}")
        self._file = file
        self.flush_interval_s = flush_interval_s
        self._max = max_buffer_bytes
        self._buf: list[Any] = []
        self._size = 0
        self._timer = False
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        # re-entrant: a line may be added on the thread that holds it, by a finalizer the
        # garbage collector runs inside the locked section (a dropped call's coroutine
        # closed there logs its access line) or a signal handler; a plain Lock made that
        # thread wait for itself for ever (_write_locked holds the re-entered batch)
        self._lock = threading.RLock()
        self._writing = False  # _write_locked is writing a batch (on the lock's thread)
        # the structlog configuration (_structlog_config()) configure_logging() built this
        # access-log writer under; None: a writer of someone else's, never handed over
        self._config: tuple[Any, ...] | None = None
        _writers.add(self)

    def msg(self, message: str) -> None:
        """Queue one rendered line (structlog calls this for every level)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._buf.append(message)
            self._size += len(message) + 1 if isinstance(message, str) else _RECORD_SIZE
            if loop is None or self.flush_interval_s == 0 or self._size >= self._max:
                self._write_locked()
            elif not self._timer or (loop is not self._timer_loop and self._timer_dead()):
                # Arm a timer, or re-arm it here when the loop that held it has stopped
                # (e.g. one asyncio.run() after another) and would never fire it.
                self._timer = True
                self._timer_loop = loop
                loop.call_later(self.flush_interval_s, self._on_timer)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg

    def add(self, record: tuple[Any, ...]) -> None:
        """Queue one captured access-log record, rendered when the batch is written
        (:func:`write_access` runs this inline: a change here is one there too)."""
        # The common case: a timer is armed on a loop that still runs (its turn writes
        # this record, whichever thread or loop adds it), room left. Not compared with the
        # running loop: on CPython 3.11 every asyncio.(_)get_running_loop() is a getpid
        # system call (0.4 us on the benchmarks' VM), two per call with client and server.
        with self._lock:
            held = self._timer_loop
            if (self._timer and self._size < self._max and held is not None
                    and held.is_running()):
                self._buf.append(record)
                self._size += _RECORD_SIZE
                return
        self.msg(record)  # type: ignore[arg-type]

    def _timer_dead(self) -> bool:
        held = self._timer_loop
        return held is None or held.is_closed() or not held.is_running()

    def flush(self) -> None:
        """Write every pending line now (an armed timer stays armed: the lines added
        after this go out with it)."""
        with self._lock:
            self._write_locked()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = False
            self._timer_loop = None
            self._write_locked()

    def _write_locked(self) -> None:
        """Write every pending line (the lock held). Re-entered on this thread while it
        writes (a line logged by a finalizer the collector runs while a batch renders or
        is written, by a signal handler, a ``flush_logs()`` from either): the lines added
        stay queued and this call writes them after its batch, in order, each once; the
        lines logged while those are written wait for the next batch (a stream that logs
        what it is given would otherwise feed itself for ever)."""
        if self._writing or not self._buf:
            return
        self._writing = True
        try:
            self._write_batch()
            if self._buf:  # logged while it was written: after it (what is logged while
                self._write_batch()  # these are written waits, so no stream feeds itself)
        finally:
            self._writing = False

    def _write_batch(self) -> None:
        buf = self._buf
        self._buf = []  # what is added while this batch is written waits for the next
        self._size = 0
        if self._config is not None and not _same_config(self._config):
            # structlog was configured again since configure_logging() built this writer
            # (checked here, once per batch, not per call): its captured records go
            # through that configuration, as every later access line does
            self._config = None
            _hand_over(self)
            for record in [m for m in buf if type(m) is not str]:
                _log_generic(record)
            buf = [m for m in buf if type(m) is str]
            if not buf:
                return
        lines = _render_lines(buf)
        out = self._file if self._file is not None else sys.stderr
        if out is None:  # no stderr (the process started with fd 2 closed): dropped
            return
        # closed or broken stream (_SINK_ERRORS): logs must not break calls
        with contextlib.suppress(*_SINK_ERRORS):
            _emit(out, _atomic_chunks(lines, getattr(out, "encoding", None),
                                      getattr(out, "errors", None)), len(lines))


#: What writing to a log stream raises when the stream is closed (``ValueError``) or
#: broken (``OSError``: EPIPE once its reader is gone, EBADF, ENOSPC...): the line is
#: dropped, never raised to whoever logged (as the standard library's
#: ``Handler.handleError`` has it).
_SINK_ERRORS = (OSError, ValueError)


def _file_fd(out: Any) -> int | None:
    """The file descriptor behind ``out`` when it is the interpreter's own standard error
    or output (``sys.__stderr__``/``sys.__stdout__``: a ``TextIOWrapper`` over a
    ``BufferedWriter`` over a ``FileIO``, or over the ``FileIO`` itself under ``python
    -u``; POSIX newlines) in an encoding that writes no
    byte-order mark (UTF-8, ASCII, Latin-1), blocking, so lines can be written past its
    buffers;
    ``None`` for any other stream (a ``StringIO``, a test's capture, an application's own
    file, which may translate newlines or encode with a BOM per write), written through.

    Raises:
        ValueError: the stream is closed.
    """
    if (out is sys.__stderr__ or out is sys.__stdout__) and type(out) is io.TextIOWrapper \
            and os.name == "posix" and _bom_free(out.encoding):
        buffer = out.buffer
        # buffered (a BufferedWriter over the FileIO), or unbuffered (``python -u``,
        # ``PYTHONUNBUFFERED``: the FileIO itself)
        raw = buffer.raw if type(buffer) is io.BufferedWriter else buffer
        if type(raw) is io.FileIO:
            fd = raw.fileno()
            # a non-blocking one (a parent set O_NONBLOCK) could take part of a line and
            # refuse the rest (EAGAIN): the stream's buffer keeps the rest instead
            return fd if os.get_blocking(fd) else None
    return None


def _bom_free(encoding: str) -> bool:
    """Whether text in ``encoding`` is encoded chunk by chunk without a byte-order mark."""
    try:
        return codecs.lookup(encoding).name in ("utf-8", "ascii", "latin-1", "iso8859-1")
    except LookupError:
        return False


def _write_chunks(out: TextIO, chunks: list[str], flush_first: bool = True) -> None:
    """Write ``chunks`` to ``out``, one ``write(2)`` each. To a plain file's stream
    (:func:`_file_fd`) they go past its buffers, what it holds flushed first: a write
    that fails costs its chunk only and leaves nothing buffered, whereas bytes left in
    ``sys.stderr``'s buffer by a failed flush (a pipe whose reader is gone) make the
    interpreter's flush at exit fail again and the process exit with status 120.
    ``flush_first=False`` (the log writer thread) leaves what the stream holds to its
    owner: flushed from another thread, an application's half-written line would be cut
    by ours.

    Raises:
        OSError: the write failed (EPIPE, EBADF, ENOSPC...; EAGAIN on a non-blocking one).
        ValueError: the stream is closed, or a line cannot be encoded in its encoding.
    """
    fd = _file_fd(out)
    if fd is None:
        if len(chunks) > 1:
            out.flush()  # what others left in the stream's buffer goes out on its own
        for chunk in chunks:
            out.write(chunk)
            out.flush()  # one write(2) per chunk
        return
    if flush_first:
        out.flush()  # what others wrote before goes first
    encoding, errors = out.encoding, out.errors or "strict"
    for chunk in chunks:
        data = memoryview(chunk.encode(encoding, errors))
        while data:  # a write cut short by a signal goes on
            data = data[os.write(fd, data):]


#: Characters of lines waiting for the log writer thread past which new lines are dropped
#: (about 13,000 JSON access lines): a log reader that stalls costs lines, never the
#: event loop.
MAX_PENDING_LOG_CHARS = 4 << 20
#: Seconds the interpreter's exit (and :func:`flush_logs` by default) waits for the log
#: writer thread to write what is queued to a reader that does not read.
EXIT_WAIT_S = 5.0


class _FdWriter:
    """Lines for the interpreter's own standard error and output (the streams
    :func:`_file_fd` writes past their buffers: pipes, terminals, files), written so that
    a log reader that stops reading never stops the program. A reader that stalls (a
    container runtime's blocking log mode with its shipper behind, a full disk behind
    journald) blocks a ``write(2)`` once the pipe's buffer is full; written from the
    event loop's thread, that stopped every call of the process.

    A line (one chunk of at most ``PIPE_BUF`` bytes) is written at once in the caller's
    thread, as before, while nothing is queued and the descriptor takes it without
    blocking (``poll()``: a regular file always does): the order of lines against an
    application's own writes, a line logged just before a crash or ``os._exit()`` (a
    forked worker's, a pool worker's last task's), all as a plain write. Otherwise (the
    reader behind, or a batch larger than a pipe write) the chunks are queued for one
    daemon thread (``meshkit-log-writer``, signals blocked), written in order; while it
    is blocked, lines past :data:`MAX_PENDING_LOG_CHARS` queued characters are dropped
    and counted, and once it writes again a ``"log lines dropped"`` warning gives the
    count (as ``tracing-appender``'s lossy non-blocking writer, Linkerd's proxy's, drops
    lines it cannot queue).

    At the interpreter's exit the queue is given at most :data:`EXIT_WAIT_S` in all
    (threading's shutdown hook and ``atexit`` share one deadline); once ``atexit`` runs,
    later lines are written at once, or dropped if the reader never caught up, so a
    process whose reader never reads again still exits. Any other stream (a
    ``StringIO``, a test's capture, an application's own file) is written in the
    caller's thread, as before."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Start empty, with a lock of its own and no thread (also in a forked child: the
        parent's queued lines are the parent's to write, and its thread is not here)."""
        # re-entrant: a finalizer the garbage collector runs while this thread holds it
        # (poll()'s answer, a queued entry: allocations) may log a line, which comes
        # here again; with a plain lock the thread waited for itself for ever
        self._cond = threading.Condition(threading.RLock())
        # (stream, chunks, characters, lines) in order; the head is being written
        self._queue: deque[tuple[TextIO, list[str], int, int]] = deque()
        self._pending = 0
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self._polls: dict[int, Any] = {}  # fd -> its select.poll(), registered POLLOUT
        self._sync = False  # after close(): written in the caller's thread
        self._gave_up = False  # close() timed out: the reader stalled, drop from here on
        self._exit_by: float | None = None  # the exit's deadline (monotonic), once set

    def _takes_now(self, fd: int, chunks: list[str]) -> bool:
        """Whether ``fd`` takes ``chunks`` without blocking: one chunk of at most
        ``PIPE_BUF`` bytes (atomic, and room for it is what ``POLLOUT`` promises of a
        pipe) and ``poll()`` says writable (a regular file always is)."""
        if len(chunks) != 1:
            return False
        chunk = chunks[0]
        # a character is at most 4 bytes in UTF-8 (1 in ASCII, Latin-1): measured only
        # when it could be longer than PIPE_BUF
        if len(chunk) > PIPE_BUF // 4 and len(chunk.encode("utf-8", "replace")) > PIPE_BUF:
            return False
        poller = self._polls.get(fd)
        if poller is None:
            poller = self._polls[fd] = select.poll()
            poller.register(fd, select.POLLOUT)
        try:
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True  # the write says what is wrong (EBADF...), as before

    def put(self, out: TextIO, fd: int, chunks: list[str], lines: int) -> None:
        """Write ``chunks`` (``lines`` lines) to ``out`` (descriptor ``fd``): at once when
        nothing is queued and ``fd`` takes them now (or after :meth:`close`), else
        queued for the writer thread; dropped (counted) past the bound (but for the
        writer thread's own count of them).

        Raises:
            OSError, ValueError: only when written at once, as :func:`_write_chunks`.
        """
        with self._cond:
            if self._gave_up:
                self._dropped += lines
                return
            if not self._queue and (self._sync or self._takes_now(fd, chunks)):
                pass  # written below, outside the lock, in this thread
            else:
                size = sum(map(len, chunks))
                if (self._queue and self._pending + size > MAX_PENDING_LOG_CHARS
                        and threading.current_thread() is not self._thread):
                    self._dropped += lines
                    return
                thread = self._thread
                if thread is None or not thread.is_alive():
                    thread = self._start()
                if thread is not None:
                    self._queue.append((out, chunks, size, lines))
                    self._pending += size
                    self._cond.notify()
                    return
        _write_chunks(out, chunks)  # at once, or no thread could be started

    def _start(self) -> threading.Thread | None:
        """The writer thread, started; ``None`` when none can be (interpreter shutdown)."""
        thread = threading.Thread(target=self._run, name="meshkit-log-writer", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return None
        self._thread = thread
        return thread

    def _run(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            # signals are the main thread's to take: one left unblocked here would be
            # delivered here even where the main thread blocks it (a process that
            # sigwait()s, or serve() restoring an inherited mask)
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        cond = self._cond
        while True:
            with cond:
                while not self._queue:
                    cond.wait()
                out, chunks, size, _ = self._queue[0]
            written = False
            try:
                _write_chunks(out, chunks, flush_first=False)
                written = True
            except Exception:  # a failing sink costs its lines (_SINK_ERRORS and worse)
                pass
            with cond:
                if self._queue and self._queue[0][1] is chunks:
                    self._queue.popleft()
                    self._pending -= size
                dropped = 0
                if written and self._dropped and not self._gave_up:
                    dropped, self._dropped = self._dropped, 0
                cond.notify_all()
            if dropped:  # queued past the bound (put: this thread's own line)
                _log.warning("log lines dropped", dropped=dropped,
                             reason="the log reader did not keep up")

    def wait(self, timeout_s: float) -> bool:
        """Wait until every queued line is written, at most ``timeout_s`` seconds;
        whether they were."""
        if threading.current_thread() is self._thread:
            return not self._queue
        with self._cond:
            # None for inf: threading's wait refuses a timeout past time_t (OverflowError)
            return self._cond.wait_for(lambda: not self._queue,
                                       None if timeout_s == math.inf else max(0.0, timeout_s))

    def wait_at_exit(self) -> bool:
        """:meth:`wait` within the exit's one deadline (:data:`EXIT_WAIT_S` from the first
        exit hook that waits)."""
        now = time.monotonic()
        if self._exit_by is None:
            self._exit_by = now + EXIT_WAIT_S
        return self.wait(self._exit_by - now)

    def close(self) -> None:
        """At the interpreter's exit (``atexit``: threads joined): wait for the queue
        (:meth:`wait_at_exit`), then write every later line in its caller's thread; when
        the wait timed out (the reader stalled), drop every later line instead, so exit
        is never held longer."""
        done = self._gave_up or self.wait_at_exit()
        with self._cond:
            self._sync = True
            if not done:
                self._gave_up = True


_fd_writer = _FdWriter()


def _emit(out: TextIO, chunks: list[str], lines: int) -> None:
    """Write ``chunks`` (``lines`` whole lines) to ``out``: through :class:`_FdWriter`
    (at once when the descriptor takes them, else by its thread) when ``out`` is the
    interpreter's own standard error or output, at once otherwise.

    Raises:
        OSError, ValueError: written at once and the write failed (:func:`_write_chunks`).
    """
    fd = _file_fd(out)
    if fd is None:
        _write_chunks(out, chunks)
    else:
        _fd_writer.put(out, fd, chunks, lines)


class _LineLogger:
    """The structlog logger of :func:`configure_logging`'s general chain (every line but
    the access log's): each rendered line written to ``file`` at once (one ``write(2)``,
    :func:`_write_chunks`), as ``structlog.PrintLogger`` does, but a stream that fails
    (:data:`_SINK_ERRORS`: a log shipper that died, a closed stream) costs the line
    only, never an exception to whoever logged, and with no stream at all (``None``: the
    process started with standard error closed, ``prog 2>&-``) lines are dropped, as
    ``print`` drops them (``PrintLogger`` would fall back to stdout, into the program's
    output).

    A line logged on the thread that is writing one (by a finalizer the garbage collector
    runs there: asyncio's "Task was destroyed but it is pending!" of a task dropped with
    its loop, which the last-resort bridge brings here; by a signal handler) is written
    right after it; with a plain lock that thread waited for itself for ever. A line
    logged while such a line is written is dropped: a stream that logs what it is given
    (standard error forwarded to ``logging``) would otherwise feed itself for ever."""

    __slots__ = ("__weakref__", "_file", "_held", "_lock")

    def __init__(self, file: TextIO | None) -> None:
        self._file = file
        self._lock = threading.RLock()  # re-entrant: see the class docstring
        # the lines logged on the writing thread while it writes one (None: not writing)
        self._held: list[str] | None = None
        _line_loggers.add(self)  # its lock made again in a forked child (_forked)

    def msg(self, message: str) -> None:
        """Write one rendered line (structlog calls this for every level)."""
        out = self._file
        if out is None:
            return
        line = f"{message}\n"  # str() of it, as print() does
        with self._lock:
            held = self._held
            if held is not None:  # re-entered while this thread writes: written after it
                held.append(line)
                return
            self._held = held = []
            try:
                # a failing log sink never changes what the program does
                with contextlib.suppress(*_SINK_ERRORS):
                    _emit(out, [line], 1)
                if held:
                    # the lines logged while these are written are dropped: a stream that
                    # logs what it is given (sys.stderr forwarded to logging) would
                    # otherwise feed itself for ever
                    self._held = []
                    for line in held:
                        with contextlib.suppress(*_SINK_ERRORS):
                            _emit(out, [line], 1)
            finally:
                self._held = None

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_line_loggers: weakref.WeakSet[_LineLogger] = weakref.WeakSet()


class _LineLoggerFactory:
    """structlog's ``logger_factory`` for :class:`_LineLogger`: one logger, shared by
    every name (loggers are not cached, so the factory runs for every line)."""

    __slots__ = ("_logger",)

    def __init__(self, file: TextIO | None) -> None:
        self._logger = _LineLogger(file)

    def __call__(self, *args: Any) -> _LineLogger:
        return self._logger


def _is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is a terminal: not when it is ``None`` (standard error closed
    at start) or closed (``isatty()`` raises ``ValueError``)."""
    try:
        return stream is not None and stream.isatty()
    except _SINK_ERRORS:
        return False


#: Bytes a pipe write is atomic up to (POSIX: at least 512; 4096 on Linux).
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)


def _atomic_chunks(lines: list[str], encoding: str | None = None,
                   errors: str | None = None) -> list[str]:
    """``lines`` as newline-terminated chunks of whole lines, each at most
    :data:`PIPE_BUF` bytes once encoded with ``encoding`` and ``errors`` (a stream's;
    default UTF-8, strict), but a line longer than that, which makes a chunk alone. The
    usual all-ASCII batch is cut in one pass over the joined text (a character is a byte
    in every ASCII-compatible encoding); any other is measured line by line."""
    data = "\n".join(lines) + "\n"
    chunks: list[str] = []
    if data.isascii():
        end = len(data)
        if end <= PIPE_BUF:
            return [data]
        start = 0
        while end - start > PIPE_BUF:
            cut = data.rfind("\n", start, start + PIPE_BUF)  # the chunk ends at cut + 1
            if cut < 0:  # the first line alone is longer than PIPE_BUF
                cut = data.index("\n", start + PIPE_BUF)
            chunks.append(data[start:cut + 1])
            start = cut + 1
        if start < end:
            chunks.append(data[start:])
        return chunks
    enc, err = encoding or "utf-8", errors or "strict"
    held: list[str] = []
    size = 0
    for line in lines:
        try:
            n = len(line.encode(enc, err)) + 1
        except (LookupError, UnicodeError):  # its write fails too, alone
            n = PIPE_BUF + 1
        if held and size + n > PIPE_BUF:
            chunks.append("\n".join(held) + "\n")
            held, size = [], 0
        held.append(line)
        size += n
    chunks.append("\n".join(held) + "\n")
    return chunks


def _render_lines(buf: list[Any]) -> list[str]:
    """The batch's lines: rendered ones as they are, captured records rendered now."""
    lines: list[str] = []
    add = lines.append
    for m in buf:
        if type(m) is str:
            add(m)
            continue
        try:
            # render_access(m), its first step inline (one frame fewer per line): a record
            # captured without structlog context variables, its event's own line
            ts, level, _, event, args, ctx, sc = m
            if (ctx is None and args is not None and _orjson is not None
                    and isinstance(event, AccessEvent)):
                try:
                    line = event.line(args, level, ts, sc)
                except Exception:  # the generic way, as render_access
                    line = None
                if line is not None:
                    add(line)
                    continue
            add(_render_generic(m))
        except Exception:  # a field the encoder refuses: keep the line, readable
            add(json_dumps({"event": "rpc", "unrenderable": repr(m)}, default=repr))
    return lines


_writers: weakref.WeakSet[BufferedLineWriter] = weakref.WeakSet()  # flushed at exit


def flush_logs(timeout_s: float = EXIT_WAIT_S) -> None:
    """Write every line still buffered by :class:`BufferedLineWriter` s (the access log),
    and wait at most ``timeout_s`` seconds (default :data:`EXIT_WAIT_S`, 5; 0: do not
    wait; ``math.inf``: until they are written) until the log writer thread has written
    every line queued for standard error or output (a reader that does not read holds
    it no longer than that).
    ``MeshServer.drain`` and ``MeshChannel.close`` call it without waiting (on the event
    loop); interpreter exit, the exit of a ``multiprocessing`` worker (fork and fork
    server start methods: at threading's shutdown, before its ``os._exit()``) and
    ``os.fork`` (before it, in the parent, without waiting) call it too.

    Raises:
        ConfigError: ``timeout_s`` is no number >= 0 (NaN, a string, a ``bool``), quoted;
            nothing is flushed.
    """
    check_number("timeout_s", timeout_s, finite=False)
    for w in list(_writers):
        w.flush()
    if timeout_s > 0:
        _fd_writer.wait(timeout_s)


def _before_fork() -> None:
    flush_logs(0)


def _forked() -> None:
    """In a forked child: the writers start empty, with locks of their own (a parent's
    thread may have held one at the fork: the line loggers' too) and no timer (it was the
    parent loop's); the
    log writer thread's queue too (the parent's thread writes it) and no thread (the
    child starts its own at its first line)."""
    for w in list(_writers):
        w._lock = threading.RLock()
        w._writing = False
        w._buf.clear()
        w._size = 0
        w._timer = False
        w._timer_loop = None
    for logger in list(_line_loggers):  # another thread may have been logging at the fork
        logger._lock = threading.RLock()
        logger._held = None
    _fd_writer._reset()


def _at_exit() -> None:
    """The interpreter's exit: what is buffered written, what is queued waited for (at
    most :data:`EXIT_WAIT_S`), later lines written at once (or dropped, the reader
    stalled)."""
    flush_logs(0)
    _fd_writer.close()


atexit.register(_at_exit)
# A multiprocessing worker started by fork or by the fork server ends with os._exit(),
# which runs no atexit handler, after its _bootstrap ran threading's shutdown (as the
# interpreter does before atexit at a normal exit): the lines its last calls left are
# written there, and the lines of its non-daemon threads, which threading joins after
# the hook, as they come. The hook is private but stable (concurrent.futures uses it
# since 3.9).
_register_threading_atexit: Callable[[Callable[[], None]], None] | None = getattr(
    threading, "_register_atexit", None)


def _at_threading_shutdown() -> None:
    """threading's exit hook: write every pending line, and every line from here on at
    once. The hook runs *before* threading joins the non-daemon threads, whose loops
    may still log (a server answering its last calls, its drain), and a worker's
    ``os._exit()`` follows the join with no other flush: their lines are written as they
    come instead of waiting for a batch nobody writes."""
    for w in list(_writers):
        with w._lock:
            w._write_locked()
            w.flush_interval_s = 0  # msg() writes at once; add() takes msg()'s path
            w._timer = False
    # the writer thread is a daemon, not joined, and a multiprocessing worker's
    # os._exit() follows: what is queued is waited for (within the exit's deadline), and
    # the lines of threads still running are written as ever (at once, or queued)
    _fd_writer.wait_at_exit()


if _register_threading_atexit is not None:
    with contextlib.suppress(RuntimeError):  # imported while the interpreter shuts down
        _register_threading_atexit(_at_threading_shutdown)
# Lines buffered at a fork would be written by the parent and again by each child that
# exits normally (a pre-fork worker, a daemon's double fork): written before the fork,
# and the child's copies dropped (as the standard library's logging re-creates its locks)
os.register_at_fork(before=_before_fork, after_in_child=_forked)


_structlog_configured = structlog.is_configured


class _LastResort(logging.Handler):
    """The standard library's handler of last resort (``logging.lastResort``: what a
    record at ``WARNING`` or above goes to when no handler is configured anywhere) once
    :func:`configure_logging` has run: the record is logged through structlog's
    configuration (``logger`` = the record's logger name, its message, its exception,
    its stack as ``stack`` when it was logged with ``stack_info=True``),
    so the warnings of libraries that log through the standard library (OpenTelemetry's
    propagators and exporters, ``meshkit.fork``) come out as the other lines do, JSON
    with ``level`` and ``timestamp`` under ``json=True``, instead of their bare message
    text. An application's own handlers (``logging.basicConfig`` before or after) take
    precedence as ever: the standard library uses this handler only while none is
    configured. Once structlog is configured again (by the application: its own
    destination, maybe stdout, or lines handed to the standard library), and for a record
    logged again from within, the handler this one replaced takes the record, as before
    :func:`configure_logging` (its message on standard error)."""

    def __init__(self, previous: logging.Handler | None, config: tuple[Any, ...]) -> None:
        super().__init__(logging.WARNING)
        self.previous = previous
        #: the structlog configuration (_structlog_config()) records are logged through
        self.config = config
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._inside, "on", False) or not _same_config(self.config):
            if self.previous is not None:
                self.previous.handle(record)
            return
        self._inside.on = True
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            if record.stack_info:  # logged with stack_info=True: as structlog names it
                fields["stack"] = record.stack_info
            lg = structlog.get_logger(record.name)
            method = _RECORD_METHODS.get(record.levelno, "warning")
            getattr(lg, method)(record.getMessage(), **fields)
        except Exception:  # a log sink never changes what the program does
            if self.previous is not None:
                self.previous.handle(record)
        finally:
            self._inside.on = False


_RECORD_METHODS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                   logging.ERROR: "error", logging.CRITICAL: "critical"}


def _append_to_regular_file(stream: TextIO | None) -> None:
    """Set ``O_APPEND`` on ``stream``'s descriptor when it is a regular file opened
    without it (``prog 2> app.log``, systemd's ``StandardError=file:``): logrotate's
    ``copytruncate`` empties such a file in place, and the next line written at the
    descriptor's old offset would leave that many NUL bytes before it (a hole a log
    reader shows as garbage); appending, it starts the emptied file. Nothing for pipes,
    terminals, sockets, a stream with no descriptor, or where ``fcntl`` is missing."""
    try:
        import fcntl
        import stat

        if stream is None:
            return
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_APPEND:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
    except (ImportError, AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return


def _bridge_last_resort(config: tuple[Any, ...]) -> None:
    """Make ``logging.lastResort`` a :class:`_LastResort` logging through ``config``
    (:func:`configure_logging`'s structlog configuration), unless the application set
    its own (or ``None``, for silence): it replaces the standard library's own, or takes
    the configuration for the one an earlier :func:`configure_logging` installed."""
    current = logging.lastResort
    if isinstance(current, _LastResort):
        current.config = config
        return
    stock = getattr(logging, "_StderrHandler", None)  # the standard library's own
    if current is None or stock is None or type(current) is not stock:  # the app's choice
        return
    logging.lastResort = _LastResort(current, config)


class _StdlibAccess:
    """The access log while logging is not configured: lines go to the standard library
    logger ``meshkit.access`` only when the application enabled ``INFO`` on it (e.g.
    ``logging.basicConfig(level="INFO")``), else nowhere, not even warnings."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("meshkit.access")

    def active(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._logger.log(level, json_dumps({"event": event, **fields}, default=repr))

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)


_STDLIB_ACCESS = _StdlibAccess()


class _AccessLog:
    """Where access-log events go: the logger :func:`configure_logging` builds, until
    structlog is configured again (:func:`_hand_over`); otherwise
    ``structlog.get_logger("meshkit.access")`` if structlog is configured
    (``structlog.is_configured()``, whatever the application set: its processors alone
    are enough), else the standard library (:class:`_StdlibAccess`)."""

    logger: Any = None
    #: the logger configure_logging() built last and the BufferedLineWriter it writes to
    built: tuple[Any, BufferedLineWriter] | None = None


def _structlog_config() -> tuple[Any, ...]:
    """What decides where, how and from which level structlog writes a line: its
    processors, wrapper class and logger factory, compared by identity
    (``structlog.configure`` replaces what it is given; ``cache_logger_on_first_use``
    alone changes none of them)."""
    cfg = structlog.get_config()
    return cfg["processors"], cfg["wrapper_class"], cfg["logger_factory"]


def _same_config(config: tuple[Any, ...]) -> bool:
    """Whether structlog's configuration is still ``config`` (:func:`_structlog_config`)."""
    return all(a is b for a, b in zip(_structlog_config(), config, strict=True))


def _hand_over(writer: BufferedLineWriter) -> None:
    """structlog was configured again after :func:`configure_logging` built the access
    logger writing to ``writer``: drop that logger, so access lines go through the
    configuration in force (:func:`access_logger`), like every other line."""
    built = _AccessLog.built
    if built is not None and built[1] is writer:
        _AccessLog.built = None
        if _AccessLog.logger is built[0]:
            _AccessLog.logger = None


def _log_generic(record: tuple[float, str, str, Any, Any, Context | None, Any]) -> None:
    """A record captured by :class:`_AccessWriter`, logged through :func:`access_logger`
    (structlog's configuration in force) in the context it was captured in (an empty one
    when nothing was bound), stamped when it is logged."""
    _, level, event, fields, args, ctx, sc = record
    try:
        fields = fields(*args) if args is not None else dict(fields)
        if "trace_id" not in fields and sc is not None and sc.is_valid:
            fields["trace_id"] = format(sc.trace_id, "032x")
            fields["span_id"] = format(sc.span_id, "016x")
        lg = access_logger()
        (ctx if ctx is not None else Context()).run(
            getattr(lg, level, lg.info), event, **fields)
    except Exception:  # logs must not break calls (or the batch's other lines)
        pass


def _console_hand_over(config: tuple[Any, ...]) -> structlog.typing.Processor:
    """The console access log's first processor: while structlog's configuration is still
    ``config`` (the one :func:`configure_logging` set, checked per line: a console line's
    rendering costs far more), nothing; else the event goes through the configuration in
    force instead, and from then on every access line (:func:`_hand_over`)."""

    def hand_over(logger: Any, method_name: str,
                  event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if _same_config(config):
            return event_dict
        if isinstance(logger, BufferedLineWriter):
            _hand_over(logger)
        lg = access_logger()
        fields = dict(event_dict)
        getattr(lg, method_name, lg.info)(fields.pop("event", "rpc"), **fields)
        raise structlog.DropEvent

    return hand_over


def access_logger() -> Any:
    """The bound logger the telemetry interceptors write access-log events to (see
    :class:`_AccessLog`)."""
    lg = _AccessLog.logger
    if lg is not None:
        return lg
    if not _structlog_configured():
        return _STDLIB_ACCESS
    return structlog.get_logger("meshkit.access")


def access_active() -> bool:
    """Whether an access-log line would be written anywhere now (the interceptors skip
    building it otherwise): ``False`` only while logging is unconfigured and the standard
    library logger ``meshkit.access`` does not take ``INFO``."""
    if _AccessLog.logger is not None:
        return True
    lg = access_logger()
    return lg is not _STDLIB_ACCESS or _STDLIB_ACCESS.active()


ACCESS_OFF, ACCESS_CAPTURED, ACCESS_INLINE = 0, 1, 2


def access_mode() -> int:
    """Whether and how an access-log line is written now (the interceptors ask per
    call): ``ACCESS_OFF`` (0) when no line would be written (:func:`access_active`),
    ``ACCESS_CAPTURED`` (1) for the JSON access log of :func:`configure_logging` (a tuple
    captured now, rendered by the batch writer), ``ACCESS_INLINE`` (2) for any other
    logger (the line is rendered on the spot, which the interceptors defer until after
    the response under light load)."""
    lg = _AccessLog.logger
    if type(lg) is _AccessWriter:
        return ACCESS_CAPTURED
    if lg is not None:
        return ACCESS_INLINE
    return ACCESS_INLINE if access_active() else ACCESS_OFF


def _writer_method(level: int, name: str) -> Callable[..., None]:
    """The :class:`_AccessWriter` method ``name`` (``info``, ...): ``(event, **fields)``
    captured at ``level`` when the writer's level lets it through."""

    def log(self: _AccessWriter, event: str, **fields: Any) -> None:
        if self._level <= level:
            self._writer.add((time.time(), name, event, fields, None, copy_context(), None))

    log.__name__, log.__qualname__ = name, f"_AccessWriter.{name}"
    return log


class _AccessWriter:
    """The JSON access log :func:`configure_logging` builds. A call's event is captured as
    a tuple: time, level, event, the fields (or the function that builds them and its
    arguments) and a copy of the caller's :mod:`contextvars` context (O(1)); the
    :class:`BufferedLineWriter` renders each into a JSON line when it writes its batch, off
    the call's path. Everything else (building the fields, finding the current span and the
    structlog contextvars) happens at render time, where a batch of lines runs warm:
    measured in one process with client and server on loopback, capturing the finished
    fields cost ~25 us per call on both sides together, deferring their construction
    ~11 (and the access log's CPU per call, end to end, fell by half).

    Lines hold, in order: the structlog contextvars, ``event``, the fields, the current
    span's ``trace_id``/``span_id`` when the fields carry none (as
    :func:`add_trace_context`), ``level``, ``timestamp`` (ISO-8601 UTC)."""

    __slots__ = ("_level", "_writer")

    def __init__(self, writer: BufferedLineWriter, level: int) -> None:
        self._writer = writer
        self._level = level

    # the logger methods: info(event, **fields) and so on, one per level
    info = _writer_method(logging.INFO, "info")
    warning = _writer_method(logging.WARNING, "warning")
    error = _writer_method(logging.ERROR, "error")
    debug = _writer_method(logging.DEBUG, "debug")


def write_access(warning: bool, build: Callable[..., dict[str, Any]],
                 args: tuple[Any, ...], span_context: Any = None) -> None:
    """Write one ``rpc`` access-log event whose fields are ``build(*args)``, with the trace
    and span id of ``span_context`` (a ``SpanContext``; none when ``None`` or invalid):
    captured unbuilt by the JSON access log of :func:`configure_logging` (built when its
    batch is written, in one step when ``build`` is an :class:`AccessEvent`), built now
    for any other logger (:func:`access_logger`).
    ``warning`` selects the level (``warning``, else ``info``).

    A captured event keeps only ``build``, ``args``, the span context and, once anything
    was bound with ``structlog.contextvars``, a copy of the current context: it waits for
    its batch (``flush_interval_s``), and whatever it keeps alive that long is walked by
    the garbage collector's young passes and promoted to the old generations."""
    lg = _AccessLog.logger
    if type(lg) is _AccessWriter:  # the per-call path: one tuple, no other work
        if lg._level <= (_WARNING if warning else _INFO):
            record = (_time(), "warning" if warning else "info", "rpc", build, args,
                      copy_context() if _BOUND_NAMES is None or _BOUND_NAMES else None,
                      span_context)
            # BufferedLineWriter.add(record), its common case inline (one frame fewer
            # per call; configure_logging's writer is always a BufferedLineWriter)
            w = lg._writer
            with w._lock:
                held = w._timer_loop
                if (w._timer and w._size < w._max and held is not None
                        and held.is_running()):
                    w._buf.append(record)
                    w._size += _RECORD_SIZE
                    return
            w.msg(record)  # type: ignore[arg-type]
        return
    lg = access_logger()
    fields = build(*args)
    if span_context is not None and span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    if warning:
        lg.warning("rpc", **fields)
    else:
        lg.info("rpc", **fields)


_time = time.time
_INFO, _WARNING = logging.INFO, logging.WARNING

# structlog.contextvars' registry of bound names (a dict it fills in place); None when a
# structlog version keeps it elsewhere, and then every record reads the bound values
_BOUND_NAMES: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


def _span_ids() -> tuple[str, str] | None:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _otel_lookup() -> tuple[Any, str] | None:
    """opentelemetry-api's context variable and span key, to read a captured context's
    current span without entering it (``None``: this API version keeps them elsewhere, and
    :func:`_span_ids` runs inside the context instead)."""
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.trace import propagation

        var = otel_context._RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
        key = propagation._SPAN_KEY
    except (AttributeError, ImportError):  # pragma: no cover - another API layout
        return None
    return (var, key) if isinstance(var, ContextVar) and isinstance(key, str) else None


_OTEL = _otel_lookup()


def _captured_span_ids(ctx: Context) -> tuple[str, str] | None:
    """The trace and span id of the span current in the captured ``ctx``, if valid."""
    if _OTEL is None:  # pragma: no cover - another API layout
        return ctx.run(_span_ids)
    otel_ctx = ctx.get(_OTEL[0])
    span = otel_ctx.get(_OTEL[1]) if otel_ctx is not None else None
    if span is None:
        return None
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return format(sc.trace_id, "032x"), format(sc.span_id, "016x")


class TelemetryFailures:
    """The warnings of a telemetry interceptor's own failures, which come one per call (a
    span processor whose ``on_start`` or ``on_end`` raises, an exporter that does, a
    ``peer_identity`` function of one's own): one line per event and exception type and
    minute on ``meshkit.observability``, the later ones counted
    (:class:`~meshkit._log.RepeatLog`: the first in full, then one ``summary`` line with
    ``count`` and ``over_s``). Before, each call logged its own line: a processor broken
    in production flooded the logs at the call rate.

    One per interceptor (whose calls run on one event loop, as a ``RepeatLog`` needs);
    each event's log is made at its first failure, so a healthy interceptor pays nothing
    for it."""

    __slots__ = ("_logs",)

    def __init__(self) -> None:
        self._logs: dict[str, Any] = {}

    def report(self, event: str, error: BaseException) -> None:
        """One failure of ``event`` (e.g. ``"telemetry span start failed"``): logged or
        counted, keyed by ``error``'s type name (never its text)."""
        log = self._logs.get(event)
        if log is None:
            from meshkit._log import RepeatLog

            log = self._logs[event] = RepeatLog(
                _telemetry_log, event, event.replace(" failed", " failures"),
                key_fields=("error",), level="warning")
        log.report((type(error).__name__,))


_telemetry_log = get_logger("meshkit.observability")


class AccessEvent:
    """One kind of access-log event, e.g. a server's ``rpc`` lines: what
    :func:`write_access` takes as ``build``.

    Calling it with the event's arguments builds its fields as a dict (:meth:`fields`),
    which every logger can take. :meth:`line` renders the JSON access log's whole line in
    one step instead, without the dict, the merged event dict and the encoder's pass over
    it: about 40 % of what rendering a line costs. The JSON writer uses it for a record
    captured without structlog context variables (nothing bound), when orjson is
    installed (its output is the reference); a line must be exactly what the generic path
    (:func:`render_access`) makes of :meth:`fields`, key order included.
    """

    __slots__ = ()

    def __call__(self, *args: Any) -> dict[str, Any]:
        return self.fields(*args)

    def fields(self, *args: Any) -> dict[str, Any]:
        """The event's fields but the trace ids (added when the line is rendered)."""
        raise NotImplementedError

    def line(self, args: tuple[Any, ...], level: str, ts: float, span_context: Any) -> str | None:
        """The JSON line of this event for ``args``, at ``level``, stamped ``ts`` (Unix
        seconds), with the ids of ``span_context`` (a valid ``SpanContext``, else none);
        ``None``: render :meth:`fields` the generic way (e.g. a field the line does not
        know how to write)."""
        return None


_json_strs: dict[str, str] = {}


def json_str(s: str) -> str:
    """``s`` as a JSON string literal, quotes included, as orjson writes it (UTF-8, only
    what RFC 8259 requires escaped); remembered for the last few thousand strings (the
    method names, targets and peers of access lines repeat)."""
    quoted = _json_strs.get(s)
    if quoted is None:
        if len(_json_strs) >= 4096:
            _json_strs.clear()
        quoted = _json_strs[s] = (_orjson.dumps(s).decode() if _orjson is not None
                                  else _json.dumps(s, ensure_ascii=False))
    return quoted


def duration_ms(duration_s: float) -> float:
    """An access line's ``duration_ms``: ``duration_s`` in milliseconds, rounded half up to
    the microsecond (the lines of :class:`AccessEvent` write the same expression inline)."""
    return int(duration_s * 1e6 + 0.5) / 1000


def line_head(side: str, where_key: str, where: str, method: str, grpc_type: str) -> str:
    """The constant start of an ``rpc`` access line, as :func:`render_access` writes it,
    up to the opening quote of ``code``: ``event``, ``side``, ``where_key`` (``target``
    or ``service``) = ``where``, ``method``, ``grpc_type``; made once per method."""
    return (f'{{"event":"rpc","side":{json_str(side)},{json_str(where_key)}:{json_str(where)},'
            f'"method":{json_str(method)},"grpc_type":{json_str(grpc_type)},"code":"')


def line_tail(level: str, ts: float, span_context: Any) -> str:
    """What ends every access line, as :func:`render_access` writes it: the trace and
    span id of ``span_context`` when it is a valid one, ``level``, the ISO-8601 UTC
    ``timestamp`` of ``ts``, and the closing brace."""
    # _iso_utc(ts), inline (one frame fewer per line): the second's text cached
    sec, micros = divmod(int(ts * 1e6 + 0.5), 1_000_000)
    if _second[0] != sec:
        _second[:] = [sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")]
    if span_context is not None:
        if SPAN_CONTEXT_IS_TUPLE:
            tid, sid, _, _, _, valid = span_context
        else:  # pragma: no cover - another SpanContext layout
            tid, sid, valid = span_context.trace_id, span_context.span_id, \
                span_context.is_valid
        if valid:
            return (f',"trace_id":"{tid:032x}","span_id":"{sid:016x}","level":"{level}",'
                    f'"timestamp":"{_second[1]}{micros:06d}Z"}}')
    return f',"level":"{level}","timestamp":"{_second[1]}{micros:06d}Z"}}'


def render_access(record: tuple[float, str, str, Any, Any, Context | None, Any]) -> str:
    """One captured access-log record as its JSON line (see :class:`_AccessWriter`):
    ``(time, level, event, build or fields, args or None, context or None, span context
    or None)``; an :class:`AccessEvent`'s own :meth:`~AccessEvent.line` when nothing was
    bound with structlog context variables and orjson is installed (the generic way when
    that raises: a string orjson refuses, a lone surrogate). The bound context
    variables lead the line, credential-named ones redacted (:func:`redact_secrets`); the
    fields, fixed by meshkit, are written as they are."""
    ts, level, _, fields, args, ctx, sc = record
    if args is not None and ctx is None and _orjson is not None \
            and isinstance(fields, AccessEvent):  # (_render_lines runs this step inline)
        try:
            line = fields.line(args, level, ts, sc)
        except Exception:  # e.g. orjson refuses a string (a lone surrogate): below,
            line = None  # json.dumps escapes it, and the line keeps its fields
        if line is not None:
            return line
    return _render_generic(record)


def _render_generic(record: tuple[float, str, str, Any, Any, Context | None, Any]) -> str:
    """:func:`render_access` of ``record`` without an event's own line: its fields built
    and encoded with the bound context variables and trace ids."""
    ts, level, event, fields, args, ctx, sc = record
    if args is not None:
        fields = fields(*args)
    # a context is captured once anything was bound with structlog.contextvars; what was
    # bound is the caller's, so credential-named values are redacted as on other lines
    if ctx is None:
        out: dict[str, Any] = {}
    else:
        out = ctx.run(structlog.contextvars.get_contextvars)
        redact_secrets(None, level, out)
    out["event"] = event
    out.update(fields)
    if "trace_id" not in fields:
        if sc is not None:
            if SPAN_CONTEXT_IS_TUPLE:  # unpacked: no property frames
                tid, sid, _, _, _, valid = sc
            else:  # pragma: no cover - another SpanContext layout
                tid, sid, valid = sc.trace_id, sc.span_id, sc.is_valid
            if valid:
                out["trace_id"] = f"{tid:032x}"
                out["span_id"] = f"{sid:016x}"
        elif ctx is not None:
            ids = _captured_span_ids(ctx)
            if ids is not None:
                out["trace_id"], out["span_id"] = ids
    out["level"] = level
    out["timestamp"] = _iso_utc(ts)
    if _orjson is not None:  # json_dumps, inline: one frame fewer per line
        try:
            return _orjson.dumps(out, default=_float_or_repr).decode()
        except TypeError:
            pass
    return _json.dumps(out, default=repr)


_second: list[Any] = [None, ""]


def _iso_utc(ts: float) -> str:
    """``ts`` (Unix seconds) as structlog's ISO-8601 UTC stamp,
    ``2026-12-03T06:48:29.750629Z``; the part up to the second is cached (a batch of lines
    mostly shares it). :func:`line_tail` makes it the same way, inline."""
    sec, micros = divmod(int(ts * 1e6 + 0.5), 1_000_000)
    if _second[0] != sec:
        _second[:] = [sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")]
    return f"{_second[1]}{micros:06d}Z"


def _float_or_repr(obj: Any) -> Any:
    """orjson's ``default`` for ``default=repr``: a ``float`` subclass (orjson encodes no
    float subclass, e.g. an option's worked-out default,
    :class:`~meshkit.discovery._types.Derived`) as its number, as :func:`json.dumps`
    writes it; anything else as its ``repr``."""
    return float(obj) if isinstance(obj, float) else repr(obj)


def _orjson_default(default: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """orjson's ``default`` for :func:`json_dumps`' ``default``: float subclasses as their
    number first (:func:`_float_or_repr`), then ``default`` (``None``: refused, so
    :func:`json.dumps` encodes the line)."""
    if default is repr:
        return _float_or_repr

    def encode(obj: Any) -> Any:
        if isinstance(obj, float):
            return float(obj)
        if default is None:
            raise TypeError(f"{type(obj).__name__} is not JSON serializable")
        return default(obj)

    return encode


def json_dumps(obj: Any, **kw: Any) -> str:
    """A log event as one line of JSON: :mod:`orjson` when installed (``meshkit[fast]``,
    ~9x faster than :func:`json.dumps` on an access-log line), else :func:`json.dumps`.

    Args:
        obj: the event dict.
        **kw: :func:`json.dumps` keywords; ``default`` (the fallback for objects JSON
            cannot encode, e.g. ``repr``) is passed to both.

    Whatever orjson refuses (keys that are not strings, integers beyond 64 bits) is encoded
    by :func:`json.dumps` instead, so a line is never lost to the encoder choice; a
    ``float`` subclass (which orjson does not encode) is written as its number, as
    :func:`json.dumps` writes it, not through ``default``.
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, default=_orjson_default(kw.get("default"))).decode()
        except TypeError:
            pass
    return _json.dumps(obj, **kw)


def configure_logging(level: str | int | None = None, *, json: bool | None = None,
                      access_log_flush_interval_s: float | None = None) -> None:
    """Configure structlog for this process.

    Every line gets ``level``, an ISO-8601 UTC ``timestamp``, the contextvars bound with
    ``structlog.contextvars``, the current span's ``trace_id``/``span_id``
    (:func:`add_trace_context`), and credential-named fields redacted
    (:func:`redact_secrets`); lines are written to stderr as they are logged. A log sink
    that fails never changes what the program does: a line stderr cannot take (a pipe
    whose reader is gone, a closed stream) is dropped, never raised to the code that
    logged, and with no stderr at all (the process started with it closed, ``prog
    2>&-``) every line is dropped, none goes to stdout.

    The access log (``meshkit.access``, one event per call) gets a leaner chain on the
    same stream: no redaction pass over its own fields (fixed by meshkit; its ``md`` keys
    are checked against credential names when :class:`TelemetryOptions` is built), only
    over the structlog contextvars it carries when something was bound, and
    lines written in batches by a :class:`BufferedLineWriter`; in JSON each event is
    captured as a tuple and rendered when its batch is written.

    It may be called again (e.g. once the command line is parsed): the configuration set
    last applies to every logger, meshkit's module loggers already used included (loggers
    are not cached, ``cache_logger_on_first_use=False``: about 1.8 us more per line; an
    application may pass ``cache_logger_on_first_use=True`` to ``structlog.configure``
    after this, and a logger then keeps the configuration in force at its first line).
    Once the application configures structlog itself after this (other processors, wrapper
    class or logger factory), the access log goes through that configuration too: the
    JSON one from the batch it writes next (its pending lines included; checked once per
    batch, nothing per call), the console one from its next line.

    When stderr is a regular file opened without ``O_APPEND`` (``prog 2> app.log``,
    systemd's ``StandardError=file:``) it is set, so that after logrotate's
    ``copytruncate`` lines start the emptied file instead of following a hole of NUL
    bytes as long as what was cut.

    Records of the standard library's ``logging`` at ``WARNING`` or above that no handler
    takes (the application configured none: they would go to ``logging.lastResort`` as
    bare message text) are logged through this configuration too, with ``logger`` naming
    their logger (OpenTelemetry's propagators and exporters, ``meshkit.fork``), while
    structlog's configuration is this one; handlers the application configures, before
    or after, take them as ever.

    Until this is called (and unless the application configured structlog itself) meshkit
    writes nothing to stdout: its loggers go through the standard library's ``logging``
    (:func:`get_logger`) and the access log is off (on only if the standard library
    logger ``meshkit.access`` takes ``INFO``).

    The variables' values are read with surrounding blanks ignored, and a blank one is an
    unset one (as meshkit's other variables).

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (any case;
            ``WARN`` and ``FATAL`` too, as the standard library and structlog name them),
            or the standard library's number of one (``logging.DEBUG``); default from
            ``MESHKIT_LOG_LEVEL`` (the same names), else ``INFO``.
        json: JSON lines (``True``) or console format (``False``); default JSON unless
            stderr is a terminal, or as ``MESHKIT_LOG_FORMAT`` (``json``/``console``, any
            case) says.
        access_log_flush_interval_s: how long access-log lines may wait to be written,
            seconds in [0, 60]; default from ``MESHKIT_ACCESS_LOG_FLUSH_S``, else 0.2 for
            JSON and 0 (every line at once) for the console format.

    Raises:
        ConfigError: an unknown level or format, a ``json`` that is not ``True``/``False``
            (the string ``"false"``), a level of another type, or a flush interval that
            is not a number in [0, 60] (a string, a bool); the argument or the variable
            named, its value quoted as written. Nothing is changed then.
    """
    env = os.environ
    if isinstance(level, int) and not isinstance(level, bool) and \
            logging.getLevelName(level) in _LEVELS:  # logging.DEBUG, as basicConfig takes
        name = logging.getLevelName(level)
    elif level is not None and not isinstance(level, str):
        raise ConfigError(f"level must be a level name ({', '.join(sorted(_LEVELS))}) or "
                          f"the standard library's number of one, got {level!r}")
    elif level:
        name = level.strip().upper()
        name = _LEVEL_ALIASES.get(name, name)
        if name not in _LEVELS:
            raise ConfigError(f"log level must be one of {sorted(_LEVELS)} (any case), "
                              f"got {level!r}")
    else:
        raw = env.get("MESHKIT_LOG_LEVEL", "")
        name = raw.strip().upper() or "INFO"
        name = _LEVEL_ALIASES.get(name, name)
        if name not in _LEVELS:
            raise ConfigError(f"MESHKIT_LOG_LEVEL must be one of {sorted(_LEVELS)} (any "
                              f"case), got {raw!r}")
    if json is not None:
        check_bool("json", json)  # "false" from a config file is truthy
    else:
        raw = env.get("MESHKIT_LOG_FORMAT", "")
        fmt = raw.strip().lower()
        if fmt not in ("", "json", "console"):
            raise ConfigError(f"MESHKIT_LOG_FORMAT must be json or console, got {raw!r}")
        json = fmt == "json" or (fmt == "" and not _is_terminal(sys.stderr))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=json_dumps) if json
        else structlog.dev.ConsoleRenderer(colors=_is_terminal(sys.stderr),
                                           exception_formatter=_plain_traceback)
    )
    if access_log_flush_interval_s is None:
        raw = env.get("MESHKIT_ACCESS_LOG_FLUSH_S", "")
        # a plain decimal number, as every MESHKIT_* number (not float()'s "1_0")
        read = decimal_number(raw) if raw.strip() else (0.2 if json else 0.0)
        access_log_flush_interval_s = math.nan if read is None else read
        if not 0 <= access_log_flush_interval_s <= 60:  # nan too
            raise ConfigError(f"MESHKIT_ACCESS_LOG_FLUSH_S must be seconds in [0, 60], "
                              f"got {raw!r}")
    else:
        check_number("access_log_flush_interval_s", access_log_flush_interval_s, high=60)
    writer = BufferedLineWriter(sys.stderr, flush_interval_s=access_log_flush_interval_s)
    wrapper = structlog.make_filtering_bound_logger(_LEVELS[name])
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # exc_info as an "exception" field holding the traceback, a URL's user info in it
    # redacted as in the fields (the console renderer formats it itself, _plain_traceback
    # redacting it)
    exceptions: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info, redact_exception] if json else []
    flush_logs(0)  # what the previous access logger still holds, in its configuration
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            add_trace_context,
            redact_secrets,
            *exceptions,
            renderer,
        ],
        wrapper_class=wrapper,
        logger_factory=_LineLoggerFactory(sys.stderr),
        # not cached: a logger already used (meshkit's module loggers) follows a later
        # configure_logging() or structlog.configure() (~1.8 us more per line logged)
        cache_logger_on_first_use=False,
    )
    # Until structlog is configured again: the JSON writer checks at each batch it
    # writes (nothing per call), the console chain at each line.
    writer._config = config = _structlog_config()
    if json:
        _AccessLog.logger = _AccessWriter(writer, _LEVELS[name])
    else:
        _AccessLog.logger = structlog.wrap_logger(
            writer,
            processors=[_console_hand_over(config), _merge_contextvars_redacted,
                        structlog.processors.add_log_level, stamp, add_trace_context,
                        renderer],
            wrapper_class=wrapper,
            cache_logger_on_first_use=True,
        )
    _AccessLog.built = (_AccessLog.logger, writer)
    _bridge_last_resort(config)
    _append_to_regular_file(sys.stderr)
