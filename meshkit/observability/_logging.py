"""Structured logs: structlog set-up, trace ids on every line, secret redaction."""

from __future__ import annotations

import asyncio
import atexit
import json as _json
import logging
import os
import re
import sys
import threading
import weakref
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from meshkit.errors import ConfigError

try:  # optional (``meshkit[fast]``): the JSON encoder structlog recommends for speed
    import orjson as _orjson
except ImportError:  # pragma: no cover - CI installs it; the fallback is tested by patching
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "BufferedLineWriter",
    "access_logger",
    "add_trace_context",
    "configure_logging",
    "flush_logs",
    "is_sensitive_key",
    "json_dumps",
    "redact_secrets",
]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}

# Keys whose values are credentials, whatever the case or separator: ``authorization``,
# ``x-api-key``, ``access_token``, ``password``, ``cookie``, ``private_key``...
_SENSITIVE_RE = re.compile(
    r"(authorization|auth[-_]?token|token|secret|password|passwd|cookie|api[-_]?key"
    r"|private[-_]?key|credential|session[-_]?id|jwt|bearer)",
    re.IGNORECASE,
)
REDACTED = "[REDACTED]"


def is_sensitive_key(key: str) -> bool:
    """Whether a metadata or log field name ``key`` names a credential.

    Matches (case-insensitively, anywhere in the name) ``authorization``, ``token``,
    ``secret``, ``password``, ``passwd``, ``cookie``, ``api-key``/``api_key``,
    ``private-key``, ``credential``, ``session-id``, ``jwt`` and ``bearer``; so
    ``x-auth-token`` and ``grpc-trace-bin`` -> ``True``/``False`` respectively.
    """
    hit = _sensitive_cache.get(key)
    if hit is None:
        hit = _SENSITIVE_RE.search(key) is not None
        if len(_sensitive_cache) < 4096:  # field names repeat; bounded all the same
            _sensitive_cache[key] = hit
    return hit


_sensitive_cache: dict[str, bool] = {}


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


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every field named like a credential
    (:func:`is_sensitive_key`) with ``"[REDACTED]"``, one level deep into dicts, and in
    ``(key, value)`` pair lists such as gRPC metadata.

    A defence in depth: meshkit never logs metadata values or message bodies itself.
    """
    for key, value in event_dict.items():
        if key != "event" and is_sensitive_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, dict):
            event_dict[key] = {k: REDACTED if isinstance(k, str) and is_sensitive_key(k) else v
                               for k, v in value.items()}
        elif isinstance(value, list | tuple) and value and all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value):
            event_dict[key] = [(k, REDACTED if is_sensitive_key(k) else v) for k, v in value]
    return event_dict


class BufferedLineWriter:
    """A structlog logger that writes rendered lines to ``file`` in batches: at most
    ``flush_interval_s`` after the first unwritten line (a timer on the running asyncio
    loop; re-armed on the next writing loop if that one has stopped), as soon as
    ``max_buffer_bytes`` are pending, at :func:`flush_logs` and at interpreter exit.
    Outside an event loop every line is written at once.

    This is how the access log is written (Envoy's access logs flush on a 1 s interval by
    default, ``file_flush_interval_msec``): one ``write()`` per batch instead of per call.
    A process killed with SIGKILL loses at most the last ``flush_interval_s`` of lines.

    Args:
        file: a text stream (default ``sys.stderr`` at write time).
        flush_interval_s: seconds (default 0.2; 0 writes every line at once, > 0 and
            <= 60 otherwise).
        max_buffer_bytes: pending characters that force a write (default 65536, >= 0).

    Raises:
        ConfigError: a value out of range (quoted).
    """

    def __init__(self, file: TextIO | None = None, *, flush_interval_s: float = 0.2,
                 max_buffer_bytes: int = 65536) -> None:
        if not 0 <= flush_interval_s <= 60:
            raise ConfigError(f"flush_interval_s must be in [0, 60] seconds, "
                              f"got {flush_interval_s!r}")
        if max_buffer_bytes < 0:
            raise ConfigError(f"max_buffer_bytes must be >= 0, got {max_buffer_bytes!r}")
        self._file = file
        self.flush_interval_s = flush_interval_s
        self._max = max_buffer_bytes
        self._buf: list[str] = []
        self._size = 0
        self._timer = False
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        _writers.add(self)

    def msg(self, message: str) -> None:
        """Queue one rendered line (structlog calls this for every level)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._buf.append(message)
            self._size += len(message) + 1
            if loop is None or self.flush_interval_s == 0 or self._size >= self._max:
                self._write_locked()
            elif not self._timer or (loop is not self._timer_loop and self._timer_dead()):
                # Arm a timer, or re-arm it here when the loop that held it has stopped
                # (e.g. one asyncio.run() after another) and would never fire it.
                self._timer = True
                self._timer_loop = loop
                loop.call_later(self.flush_interval_s, self.flush)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg

    def _timer_dead(self) -> bool:
        held = self._timer_loop
        return held is None or held.is_closed() or not held.is_running()

    def flush(self) -> None:
        """Write every pending line now."""
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        self._timer = False
        self._timer_loop = None
        if not self._buf:
            return
        data = "\n".join(self._buf) + "\n"
        self._buf.clear()
        self._size = 0
        out = self._file if self._file is not None else sys.stderr
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError):  # closed or broken stream: logs must not break calls
            pass


_writers: weakref.WeakSet[BufferedLineWriter] = weakref.WeakSet()  # flushed at exit


def flush_logs() -> None:
    """Write every line still buffered by :class:`BufferedLineWriter` s (the access log).
    ``MeshServer.drain`` and interpreter exit call it."""
    for w in list(_writers):
        w.flush()


atexit.register(flush_logs)


class _AccessLog:
    """Where access-log events go: the lean logger :func:`configure_logging` builds, or,
    when it was not called, ``structlog.get_logger("meshkit.access")`` (the application's
    own structlog configuration)."""

    logger: Any = structlog.get_logger("meshkit.access")


def access_logger() -> Any:
    """The bound logger the telemetry interceptors write access-log events to."""
    return _AccessLog.logger


def json_dumps(obj: Any, **kw: Any) -> str:
    """A log event as one line of JSON: :mod:`orjson` when installed (``meshkit[fast]``,
    ~9x faster than :func:`json.dumps` on an access-log line), else :func:`json.dumps`.

    Args:
        obj: the event dict.
        **kw: :func:`json.dumps` keywords; ``default`` (the fallback for objects JSON
            cannot encode, e.g. ``repr``) is passed to both.

    Whatever orjson refuses (keys that are not strings, integers beyond 64 bits) is encoded
    by :func:`json.dumps` instead, so a line is never lost to the encoder choice.
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, default=kw.get("default")).decode()
        except TypeError:
            pass
    return _json.dumps(obj, **kw)


def configure_logging(level: str | None = None, *, json: bool | None = None,
                      access_log_flush_interval_s: float | None = None) -> None:
    """Configure structlog for this process.

    Every line gets ``level``, an ISO-8601 UTC ``timestamp``, the contextvars bound with
    ``structlog.contextvars``, the current span's ``trace_id``/``span_id``
    (:func:`add_trace_context`), and credential-named fields redacted
    (:func:`redact_secrets`); lines are written to stderr as they are logged.

    The access log (``meshkit.access``, one event per call) gets a leaner chain on the
    same stream: no redaction pass (its fields are fixed by meshkit and its ``md`` keys
    are checked against credential names when :class:`TelemetryOptions` is built), and
    lines written in batches by a :class:`BufferedLineWriter`.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (any case);
            default from ``MESHKIT_LOG_LEVEL``, else ``INFO``.
        json: JSON lines (``True``) or console format (``False``); default JSON unless
            stderr is a terminal, or as ``MESHKIT_LOG_FORMAT`` (``json``/``console``) says.
        access_log_flush_interval_s: how long access-log lines may wait to be written,
            seconds; default from ``MESHKIT_ACCESS_LOG_FLUSH_S``, else 0.2 for JSON and 0
            (every line at once) for the console format.

    Raises:
        ConfigError: unknown level or format, or a flush interval that is not a number
            in [0, 60] (quoted).
    """
    name = (level or os.environ.get("MESHKIT_LOG_LEVEL") or "INFO").upper()
    if name not in _LEVELS:
        raise ConfigError(f"log level must be one of {sorted(_LEVELS)}, got {name!r}")
    if json is None:
        fmt = os.environ.get("MESHKIT_LOG_FORMAT", "").lower()
        if fmt not in ("", "json", "console"):
            raise ConfigError(f"MESHKIT_LOG_FORMAT must be json or console, got {fmt!r}")
        json = fmt == "json" or (fmt == "" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=json_dumps) if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if access_log_flush_interval_s is None:
        raw = os.environ.get("MESHKIT_ACCESS_LOG_FLUSH_S", "")
        try:
            access_log_flush_interval_s = float(raw) if raw else (0.2 if json else 0.0)
        except ValueError:
            raise ConfigError(f"MESHKIT_ACCESS_LOG_FLUSH_S must be seconds, got {raw!r}"
                              ) from None
    writer = BufferedLineWriter(sys.stderr, flush_interval_s=access_log_flush_interval_s)
    wrapper = structlog.make_filtering_bound_logger(_LEVELS[name])
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            add_trace_context,
            redact_secrets,
            renderer,
        ],
        wrapper_class=wrapper,
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    flush_logs()  # what the previous access logger still holds
    _AccessLog.logger = structlog.wrap_logger(
        writer,
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, stamp, add_trace_context, renderer],
        wrapper_class=wrapper,
        cache_logger_on_first_use=True,
    )
