"""The access line of an unknown method writes no control character of the caller's.

grpc core passes a request's ``:path`` on as sent, control characters included (ESC, DEL,
C1 controls, a line break, Unicode format characters such as U+202E), and no check runs
before a call of a method no handler serves is answered. Since calls of unknown methods
are logged (gRFC A66 records, fa7ba57), any unauthenticated caller wrote its raw bytes
into the server's access log: on the console renderer (meshkit's default when stderr is a
terminal) ``ESC [2J`` cleared the terminal of whoever watched the logs, ``ESC ]0;...BEL``
retitled it (the same fault 37b53d8 fixed in ``meshkit call``'s output). The logged name
has each such character escaped as ``repr`` writes it (``\\x1b``, ``\\u202e``); the span
keeps the name as sent in ``rpc.method_original`` (an attribute value, not a terminal's).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, add_trace_context, redact_secrets
from tests.observability.conftest import Tracing
from tests.support.echo import add_echo
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

# ESC sequences (clear, retitle), DEL, a C1 CSI, a right-to-left override, a line break
_NAMES = ("/evil.S/a\x1b[2Jb", "/evil.S/\x1b]0;owned\x07", "/evil.S/d\x7fel",
          "/evil.S/c\x9b31m", "/evil.S/\u202egnp.exe", "/evil.S/x\nFORGED rpc line")
_ESCAPED = ("/evil.S/a\\x1b[2Jb", "/evil.S/\\x1b]0;owned\\x07", "/evil.S/d\\x7fel",
            "/evil.S/c\\x9b31m", "/evil.S/\\u202egnp.exe", "/evil.S/x\\nFORGED rpc line")


class _PassThrough(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


@contextlib.contextmanager
def _rendered(json_lines: bool) -> Iterator[io.StringIO]:
    buf = io.StringIO()
    renderer: Any = (structlog.processors.JSONRenderer() if json_lines
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars,
                    structlog.processors.add_log_level, add_trace_context, redact_secrets,
                    renderer],
        logger_factory=structlog.PrintLoggerFactory(buf),
        cache_logger_on_first_use=False,
    )
    try:
        yield buf
    finally:
        structlog.reset_defaults()


@contextlib.asynccontextmanager
async def _server(registry: LocalRegistry, tracing: Tracing,
                  per_call: bool) -> AsyncIterator[grpc.aio.Channel]:
    srv = meshkit.MeshServer(
        "echo", [add_echo("e1")], registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, drain_delay_s=0, grace_s=1.0,
            telemetry=TelemetryOptions(tracer_provider=tracing.provider, metrics=False),
            interceptors=(_PassThrough(),) if per_call else ()))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            yield ch
    finally:
        await srv.drain()


async def _call_all(ch: grpc.aio.Channel) -> None:
    for name in _NAMES:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(name)(b"x", timeout=10)
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED, repr(name)


def _rpc_lines(buf: io.StringIO) -> list[str]:
    return [ln for ln in buf.getvalue().splitlines() if "rpc" in ln and "evil.S" in ln]


@pytest.mark.parametrize("per_call", [False, True], ids=["lookup", "per_call"])
async def test_console_access_lines_escape_the_callers_control_characters(
        registry: LocalRegistry, tracing: Tracing, per_call: bool) -> None:
    with _rendered(json_lines=False) as buf:
        async with _server(registry, tracing, per_call) as ch:
            await _call_all(ch)
            await until(lambda: len(_rpc_lines(buf)) == len(_NAMES), timeout_s=10,
                        what="one access line per call")
        text = buf.getvalue()
    bad = sorted({repr(c) for c in text if not c.isprintable() and c != "\n"})
    assert bad == [], f"control characters written raw: {bad}"
    assert "FORGED" not in "".join(ln for ln in text.splitlines()
                                   if "evil.S" not in ln)  # no forged line
    for escaped in _ESCAPED:
        assert escaped in text or repr(escaped)[1:-1] in text, escaped
    # the span keeps the name as sent
    await until(lambda: len(tracing.spans()) == len(_NAMES), what="spans")
    assert sorted(s.attributes["rpc.method_original"] for s in tracing.spans()) == sorted(
        _NAMES)


async def test_json_access_lines_carry_the_escaped_name(
        registry: LocalRegistry, tracing: Tracing) -> None:
    """The JSON line (its head written by meshkit itself) holds the same escaped name, a
    printable string once decoded, so that a viewer of the decoded logs is safe too."""
    with _rendered(json_lines=True) as buf:
        async with _server(registry, tracing, per_call=False) as ch:
            await _call_all(ch)
            await until(lambda: len(_rpc_lines(buf)) == len(_NAMES), timeout_s=10,
                        what="one access line per call")
        lines = [json.loads(ln) for ln in _rpc_lines(buf)]
    assert sorted(ln["method"] for ln in lines) == sorted(_ESCAPED)
    assert all(ln["method"].isprintable() for ln in lines)
