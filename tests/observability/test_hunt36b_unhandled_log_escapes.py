"""The server's ``unhandled exception`` and ``handler returned no response`` lines write
the method name without its control characters.

A catch-all generic handler (a gateway) serves any name a caller sends, control
characters included, and its failure for such a call is logged at ``error`` with the
method's name: that line wrote the name raw, so a caller's ``ESC [2J`` cleared the
terminal showing the console log and a line break forged a line, while the call's access
line already escaped it (tests/observability/test_generic_method_log_escapes.py). The name
is now escaped as ``repr`` writes a non-printable character, once per method.
"""

from __future__ import annotations

import io
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import add_trace_context, redact_secrets
from tests.observability.test_generic_method_log_escapes import _ESCAPED, _NAMES
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def _fail(request: bytes, context: Any) -> bytes | None:
    if request == b"none":
        return None
    raise KeyError("no such route")


class _CatchAll(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method.startswith("/proxy."):
            return grpc.unary_unary_rpc_method_handler(_fail)
        return None


def _add(servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((_CatchAll(),))


@pytest.mark.parametrize("request_", [b"raise", b"none"], ids=["raises", "returns_none"])
async def test_error_lines_of_a_generic_handlers_methods_are_escaped(
        registry: LocalRegistry, request_: bytes) -> None:
    buf = io.StringIO()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, add_trace_context, redact_secrets,
                    structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(buf),
        cache_logger_on_first_use=False,
    )
    event = "unhandled exception" if request_ == b"raise" else "handler returned no response"
    try:
        srv = meshkit.MeshServer("gw", [(_add, None)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, drain_delay_s=0, grace_s=1.0,
                                     telemetry=None))
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                for name in _NAMES:
                    with pytest.raises(grpc.aio.AioRpcError):
                        await ch.unary_unary(name)(request_, timeout=10)
                await until(lambda: buf.getvalue().count(event) == len(_NAMES),
                            timeout_s=10, what="one error line per call")
        finally:
            await srv.drain()
        text = buf.getvalue()
    finally:
        structlog.reset_defaults()
    lines = [ln for ln in text.splitlines() if event in ln]
    bad = sorted({repr(c) for ln in lines for c in ln if not c.isprintable()})
    assert bad == [], f"control characters written raw: {bad}"
    for escaped in _ESCAPED:
        assert any(escaped in ln for ln in lines), escaped
