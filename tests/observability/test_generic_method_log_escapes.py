"""A method a catch-all generic handler serves is logged without the caller's control
characters.

A generic handler may serve any name a caller sends (a gateway, a proxy): grpc core passes
the ``:path`` on as sent, control characters included, and the server's telemetry resolves
the method's record from that name once per method. Its access line wrote the name raw,
so a caller's ``ESC [2J`` cleared the terminal showing the console log (the default
renderer when stderr is a terminal). The name is now escaped as ``repr`` writes a
non-printable character, as for a method no handler serves
(tests/observability/test_unknown_methods_log_escapes.py), once per method.
"""

from __future__ import annotations

import io
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, add_trace_context, redact_secrets
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_NAMES = ("/proxy.S/a\x1b[2Jb", "/proxy.S/\x1b]0;owned\x07", "/proxy.S/c\x9b31m",
          "/proxy.S/\u202egnp.exe")
_ESCAPED = ("/proxy.S/a\\x1b[2Jb", "/proxy.S/\\x1b]0;owned\\x07", "/proxy.S/c\\x9b31m",
            "/proxy.S/\\u202egnp.exe")


async def _echo(request: bytes, context: Any) -> bytes:
    return request


class _CatchAll(grpc.GenericRpcHandler):
    """Serves every method under ``/proxy.`` (whatever the name), as a gateway would."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method.startswith("/proxy."):
            return grpc.unary_unary_rpc_method_handler(_echo)
        return None


def _add_catch_all(servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((_CatchAll(),))


class _PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


@pytest.mark.parametrize("per_call", [False, True], ids=["lookup", "per_call"])
async def test_console_access_lines_of_a_generic_handlers_methods_are_escaped(
        registry: LocalRegistry, per_call: bool) -> None:
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
                telemetry=TelemetryOptions(tracing=False, metrics=False),
                interceptors=(_PassThrough(),) if per_call else ()))
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                for name in _NAMES:
                    assert await ch.unary_unary(name)(b"hi", timeout=10) == b"hi"

                def lines() -> list[str]:
                    return [ln for ln in buf.getvalue().splitlines() if "proxy.S" in ln]

                await until(lambda: len(lines()) == len(_NAMES), timeout_s=10,
                            what="one access line per call")
        finally:
            await srv.drain()
        text = buf.getvalue()
    finally:
        structlog.reset_defaults()
    bad = sorted({repr(c) for c in text if not c.isprintable() and c != "\n"})
    assert bad == [], f"control characters written raw: {bad}"
    for escaped in _ESCAPED:
        assert escaped in text, escaped
