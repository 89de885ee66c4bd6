"""A refusal line (``call refused`` / ``calls refused``, :class:`meshkit._log.RepeatLog`)
writes the method name without its control characters.

A gateway's catch-all generic handler behind JWT auth
(``ServeOptions(auth=AuthOptions(verifier=...))``) refuses a call with no token before any
handler runs, and logs ``call refused`` once per kind with the name the
caller sent: that line wrote it raw, so any unauthenticated caller's ``ESC [2J`` cleared the
terminal showing the console log, or a line break forged a line (one line per distinct
name). The key's strings are now escaped as ``repr`` writes a non-printable character, when
a line is made (a counted refusal pays nothing).
"""

from __future__ import annotations

import io

import grpc
import pytest
import structlog

import meshkit
from meshkit.auth import AuthOptions, Claims
from meshkit.discovery import LocalRegistry
from meshkit.observability import add_trace_context, redact_secrets
from tests.observability.test_generic_method_log_escapes import (
    _ESCAPED,
    _NAMES,
    _add_catch_all,
)
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


class _NeverCalled:
    """A verifier: no call here carries a token."""

    async def verify(self, token: str) -> Claims:  # pragma: no cover - not reached
        raise AssertionError("no token was sent")


async def test_refusal_lines_of_a_generic_handlers_methods_are_escaped(
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
                insecure=True, drain_delay_s=0, grace_s=1.0, telemetry=None,
                auth=AuthOptions(verifier=_NeverCalled())))
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                for name in _NAMES:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await ch.unary_unary(name)(b"hi", timeout=10)
                    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
                await until(lambda: buf.getvalue().count("call refused") == len(_NAMES),
                            timeout_s=10, what="one refusal line per name")
        finally:
            await srv.drain()
        text = buf.getvalue()
    finally:
        structlog.reset_defaults()
    lines = [ln for ln in text.splitlines() if "refused" in ln]
    bad = sorted({repr(c) for ln in lines for c in ln if not c.isprintable()})
    assert bad == [], f"control characters written raw: {bad}"
    for escaped in _ESCAPED:
        assert any(escaped in ln for ln in lines), escaped


def test_a_counted_kind_is_summarised_with_its_key_escaped() -> None:
    """The ``calls refused`` count line writes the key as the full line does."""
    from structlog.testing import capture_logs

    from meshkit._log import RepeatLog, get_logger

    now = [0.0]
    log = RepeatLog(get_logger("meshkit.test"), "call refused", "calls refused",
                    key_fields=("method",), interval_s=10, clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(3):
            log.report(("/proxy.S/a\x1b[2Jb",))
        log.flush()
    assert [e["method"] for e in logs] == ["/proxy.S/a\\x1b[2Jb"] * 2, logs
    assert logs[1]["count"] == 2
