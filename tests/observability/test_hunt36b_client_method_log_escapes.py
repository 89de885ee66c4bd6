"""A mesh channel's access line writes the method name without its control characters.

A gateway's channel may call any name its own callers sent (a catch-all proxy forwarding
the ``:path`` it got): the client's access line wrote that name raw, so a caller's
``ESC [2J`` cleared the terminal showing the console log and a line break forged a line,
as the server's line did before (tests/observability/test_generic_method_log_escapes.py).
The name is now escaped as ``repr`` writes a non-printable character, once per method.
"""

from __future__ import annotations

import io

import pytest
import structlog

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, add_trace_context, redact_secrets
from tests.observability.test_generic_method_log_escapes import (
    _ESCAPED,
    _NAMES,
    _add_catch_all,
)
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_console_access_lines_of_a_channels_methods_are_escaped(
        registry: LocalRegistry) -> None:
    buf = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, add_trace_context, redact_secrets,
                    structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(buf),
        cache_logger_on_first_use=False,
    )
    try:
        srv = meshkit.MeshServer(
            "gw", [(_add_catch_all, None)], registry=registry,
            options=meshkit.ServeOptions(
                insecure=True, drain_delay_s=0, grace_s=1.0,
                telemetry=TelemetryOptions(tracing=False, metrics=False, access_log=False)))
        await srv.start()
        ch = meshkit.dial("gw", registry=registry, options=meshkit.DialOptions(
            insecure=True, telemetry=TelemetryOptions(tracing=False, metrics=False)))
        try:
            await ch.wait_for_endpoints(1)
            for name in _NAMES:
                assert await ch.unary_unary(name)(b"hi", timeout=10) == b"hi"
            await until(lambda: buf.getvalue().count("side=client") == len(_NAMES),
                        timeout_s=10, what="one client access line per call")
        finally:
            await ch.close()
            await srv.drain()
        text = buf.getvalue()
    finally:
        structlog.reset_defaults()
    bad = sorted({repr(c) for c in text if not c.isprintable() and c != "\n"})
    assert bad == [], f"control characters written raw: {bad}"
    for escaped in _ESCAPED:
        assert escaped in text, escaped
