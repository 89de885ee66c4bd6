"""meshkit's loggers stay quiet until the application configures logging.

Imported by every meshkit package that logs (its ``__init__``), so the quiet default is in
place whichever part of meshkit a program uses (``meshkit.discovery`` alone, a
``JWKSServer`` alone), without importing the rest of :mod:`meshkit.observability`.
Without it structlog's own default prints every ``meshkit.*`` line, debug included, on
stdout, which corrupts the output of any command-line tool using meshkit. The credential
redaction every meshkit line gets (:func:`redact_secrets`, re-exported by
:mod:`meshkit.observability`) lives here for the same reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["REDACTED", "get_logger", "is_sensitive_key", "redact_secrets"]

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



def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every field named like a credential
    (:func:`is_sensitive_key`) with ``"[REDACTED]"``, one level deep into dicts, and in
    ``(key, value)`` pair collections such as gRPC metadata: lists and tuples of pairs,
    ``grpc.aio.Metadata`` (what ``initial_metadata()``/``trailing_metadata()`` and a
    client interceptor's ``client_call_details.metadata`` are) and any other re-iterable
    collection of ``(key, value)`` pairs (not a string, bytes or a one-shot iterator, which
    reading would consume); such a collection is logged as the list of its pairs. A key
    may be ``str`` or ``bytes`` (as gRPC metadata keys may), in dicts as in pairs.

    A defence in depth: meshkit never logs metadata values or message bodies itself.
    """
    for key, value in event_dict.items():
        if key != "event" and is_sensitive_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, dict):
            event_dict[key] = {k: REDACTED if isinstance(k, str | bytes) and _named_secret(k)
                               else v for k, v in value.items()}
        elif (isinstance(value, list | tuple) or (
                not isinstance(value, _NOT_PAIRS) and isinstance(value, Collection))) and (
                value and all(isinstance(p, tuple) and len(p) == 2 and isinstance(
                    p[0], str | bytes) for p in value)):
            event_dict[key] = [(k, REDACTED if _named_secret(k) else v) for k, v in value]
    return event_dict


def _named_secret(key: str | bytes) -> bool:
    """:func:`is_sensitive_key` of a key given as ``str`` or as ``bytes`` (as metadata
    keys may be; a byte that is not ASCII is read as Latin-1, so never fails)."""
    return is_sensitive_key(key if isinstance(key, str) else key.decode("latin-1"))


# values redact_secrets never reads as pair collections (strings and bytes iterate over
# characters; the scalars are tested first because the Collection ABC check costs more)
_NOT_PAIRS = (str, bytes, bytearray, memoryview, int, float, bool, type(None))


def _plain_traceback(sio: TextIO, exc_info: structlog.typing.ExcInfo) -> None:
    """structlog's plain traceback: the console renderer's default is ``rich``'s
    traceback when ``rich`` is installed, which prints every frame's local variables
    (``show_locals=True``; a token or request held in one would reach the log), or
    ``better_exceptions``', which shows values too. A function of its own, not
    ``plain_traceback`` itself, which ConsoleRenderer would take for its default when
    neither is installed and swap for the monochrome default without colors."""
    structlog.dev.plain_traceback(sio, exc_info)


class _StdlibLine:
    """A structlog logger that hands each rendered line to the standard library logger of
    the same name (``logging.getLogger(name)``): where meshkit's own loggers write until
    :func:`configure_logging` (or the application's ``structlog.configure``) says
    otherwise. With no logging set up, Python prints ``WARNING`` and above on stderr
    (its last-resort handler) and drops the rest."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def enabled(self, method_name: str) -> bool:
        return self._logger.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.INFO))

    def _emit(self, level: int, message: Any) -> None:
        self._logger.log(level, message)

    def debug(self, message: Any) -> None:
        self._emit(logging.DEBUG, message)

    def info(self, message: Any) -> None:
        self._emit(logging.INFO, message)

    def warning(self, message: Any) -> None:
        self._emit(logging.WARNING, message)

    def error(self, message: Any) -> None:
        self._emit(logging.ERROR, message)

    def critical(self, message: Any) -> None:
        self._emit(logging.CRITICAL, message)

    msg = log = info
    warn = warning
    exception = error
    fatal = critical


_METHOD_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO,
                  "log": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
                  "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def _is_meshkit(name: Any) -> bool:
    return isinstance(name, str) and (name == "meshkit" or name.startswith("meshkit."))


_structlog_configured = structlog.is_configured


class _QuietFactory:
    """structlog's logger factory while nothing configured structlog: ``meshkit.*``
    loggers go to the standard library (:class:`_StdlibLine`), every other logger to
    stdout as structlog's own default does. Once the application configured structlog
    without a logger factory of its own (``structlog.configure(processors=[...])`` leaves
    this one in place), ``meshkit.*`` loggers print like every other logger: they follow
    the application's configuration."""

    def __call__(self, *args: Any) -> Any:
        if args and _is_meshkit(args[0]) and not _structlog_configured():
            return _StdlibLine(args[0])
        return structlog.PrintLogger()


def _drop_disabled(logger: Any, method_name: str,
                   event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop, before any rendering, an event the standard library
    logger it goes to would drop (e.g. ``debug`` lines with logging unconfigured)."""
    if isinstance(logger, _StdlibLine) and not logger.enabled(method_name):
        raise structlog.DropEvent
    return event_dict


class _QuietRenderer:
    """The last processor of the quiet default: structlog's default renderer
    (``default``) for every logger but meshkit's, whose lines (:class:`_StdlibLine`) get
    what :func:`configure_logging` gives them: credential-named fields, such as the ones
    the application bound with ``structlog.contextvars``, redacted
    (:func:`redact_secrets`), and a traceback without the frames' local variables
    (:func:`_plain_traceback`; the default console renderer uses ``rich`` with
    ``show_locals=True`` or ``better_exceptions`` when installed). No colors: the line
    goes to the standard library's handlers, a file as readily as a terminal."""

    __slots__ = ("_default", "_meshkit")

    def __init__(self, default: Any) -> None:
        self._default = default
        self._meshkit = structlog.dev.ConsoleRenderer(colors=False,
                                                      exception_formatter=_plain_traceback)

    def __call__(self, logger: Any, method_name: str,
                 event_dict: MutableMapping[str, Any]) -> Any:
        if isinstance(logger, _StdlibLine):
            return self._meshkit(logger, method_name,
                                 redact_secrets(logger, method_name, event_dict))
        return self._default(logger, method_name, event_dict)


def _install_quiet_default() -> None:
    """Make an unconfigured structlog quiet for meshkit: without this, structlog's default
    prints every ``meshkit.*`` line (debug included) on stdout, which corrupts the output
    of any command-line tool using meshkit. meshkit's lines are rendered without frame
    locals and with credentials redacted (:class:`_QuietRenderer`). Left alone when
    structlog is configured."""
    if structlog.is_configured():
        return
    processors = list(structlog.get_config()["processors"])
    if processors:
        processors[-1] = _QuietRenderer(processors[-1])
    structlog.configure(processors=[_drop_disabled, *processors],
                        logger_factory=_QuietFactory())
    # still "not configured" for the application: its structlog.configure_once() applies
    holder = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
    if holder is not None and hasattr(holder, "is_configured"):
        holder.is_configured = False


_install_quiet_default()


def get_logger(name: str) -> Any:
    """The structlog logger meshkit's modules write to (``name`` like ``meshkit.channel``).

    Until :func:`configure_logging` or the application's own ``structlog.configure``
    runs, ``meshkit.*`` loggers write through the standard library's ``logging`` (so
    nothing goes to stdout; warnings reach stderr via Python's last-resort handler or the
    application's handlers), in structlog's console format without colors, tracebacks
    without frame locals and credential-named fields redacted; afterwards they follow
    that configuration.
    """
    return structlog.get_logger(name)
