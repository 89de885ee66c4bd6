"""meshkit's loggers stay quiet until the application configures logging.

Imported by every meshkit package that logs (its ``__init__``), so the quiet default is in
place whichever part of meshkit a program uses (``meshkit.discovery`` alone, a
``JWKSServer`` alone), without importing the rest of :mod:`meshkit.observability`.
Without it structlog's own default prints every ``meshkit.*`` line, debug included, on
stdout, which corrupts the output of any command-line tool using meshkit.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["get_logger"]


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


def _install_quiet_default() -> None:
    """Make an unconfigured structlog quiet for meshkit: without this, structlog's default
    prints every ``meshkit.*`` line (debug included) on stdout, which corrupts the output
    of any command-line tool using meshkit. Left alone when structlog is configured."""
    if structlog.is_configured():
        return
    processors = list(structlog.get_config()["processors"])
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
    application's handlers); afterwards they follow that configuration.
    """
    return structlog.get_logger(name)
