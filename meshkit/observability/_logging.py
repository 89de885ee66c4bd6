"""Structured logs: structlog set-up, trace ids on every line, secret redaction."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from meshkit.errors import ConfigError

__all__ = ["add_trace_context", "configure_logging", "is_sensitive_key", "redact_secrets"]

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


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Configure structlog for this process.

    Every line gets ``level``, an ISO-8601 UTC ``timestamp``, the contextvars bound with
    ``structlog.contextvars``, the current span's ``trace_id``/``span_id``
    (:func:`add_trace_context`), and credential-named fields redacted
    (:func:`redact_secrets`).

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (any case);
            default from ``MESHKIT_LOG_LEVEL``, else ``INFO``.
        json: JSON lines (``True``) or console format (``False``); default JSON unless
            stderr is a terminal, or as ``MESHKIT_LOG_FORMAT`` (``json``/``console``) says.

    Raises:
        ConfigError: unknown level or format (quoted).
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
        structlog.processors.JSONRenderer() if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_context,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[name]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
