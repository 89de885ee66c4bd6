"""A handler's unhandled exception reaches the server span by its type only: its text and
traceback (``ValueError("postgres://u:hunter2@db")``) stay in the server's log, as the
caller's answer and the access line have them, unless
``TelemetryOptions(expose_exception_text=True)``. Before, the span's ``exception`` event
carried the message and the stack trace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from opentelemetry.trace import SpanKind, StatusCode

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError
from meshkit.observability import TelemetryOptions
from tests.observability.conftest import Tracing
from tests.support.wait import until

APP = "meshkit.test.Leaky"
SECRET = "postgres://u:hunter2@db"


@pytest.fixture
async def app(registry: LocalRegistry,
              tracing: Tracing) -> AsyncIterator[Callable[..., Any]]:
    """Builds a server whose ``Work``/``Stream`` handlers raise ``ValueError(SECRET)``,
    and a channel to it, both tracing to ``tracing``."""
    servers: list[meshkit.MeshServer] = []
    channels: list[meshkit.MeshChannel] = []

    async def build(expose: bool, telemetry_expose: bool | None = None) -> meshkit.MeshChannel:
        async def work(request: bytes, context: Any) -> bytes:
            raise ValueError(SECRET)

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            yield b"one"
            raise ValueError(SECRET)

        def add(_servicer: Any, server: Any) -> None:
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                APP, {"Work": grpc.unary_unary_rpc_method_handler(work),
                      "Stream": grpc.unary_stream_rpc_method_handler(stream)}),))

        telemetry = TelemetryOptions(
            tracer_provider=tracing.provider,
            expose_exception_text=expose if telemetry_expose is None else telemetry_expose)
        srv = meshkit.MeshServer("leaky", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id="l1", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=telemetry,
                                     expose_exception_text=expose))
        await srv.start()
        servers.append(srv)
        ch = meshkit.dial("leaky", registry=registry,
                          options=meshkit.DialOptions(insecure=True, telemetry=None))
        channels.append(ch)
        await ch.wait_for_endpoints(1)
        return ch

    yield build
    for ch in channels:
        await ch.close()
    for srv in servers:
        await srv.drain()


async def _server_spans(ch: meshkit.MeshChannel, tracing: Tracing) -> list[Any]:
    with pytest.raises(grpc.aio.AioRpcError):
        await ch.unary_unary(f"/{APP}/Work")(b"x", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in ch.unary_stream(f"/{APP}/Stream")(b"x", timeout=5):
            pass
    await until(lambda: sum(s.kind is SpanKind.SERVER for s in tracing.spans()) >= 2,
                what="2 server spans")
    return [s for s in tracing.spans() if s.kind is SpanKind.SERVER]


async def test_server_span_names_the_exception_type_not_its_text(
        app: Callable[..., Any], tracing: Tracing) -> None:
    """The server span's exception event has the type and meshkit's safe details, no text
    and no stack trace, for a unary and a streaming handler."""
    ch = await app(False)
    for span in await _server_spans(ch, tracing):
        assert span.status.status_code is StatusCode.ERROR
        assert SECRET not in repr(span.to_json())
        events = [e for e in span.events if e.name == "exception"]
        assert len(events) == 1, span.name
        attrs = dict(events[0].attributes or {})
        assert attrs["exception.type"] == "ValueError"
        assert attrs["exception.message"] == (
            "Unexpected ValueError in the handler (logged by the server)")
        assert "exception.stacktrace" not in attrs


async def test_expose_exception_text_records_it_whole(
        app: Callable[..., Any], tracing: Tracing) -> None:
    """With ``expose_exception_text=True`` the span records the exception as the SDK does:
    its text and stack trace."""
    ch = await app(True)
    for span in await _server_spans(ch, tracing):
        attrs = dict(next(e for e in span.events if e.name == "exception").attributes
                     or {})
        assert attrs["exception.message"] == SECRET
        assert "hunter2" in str(attrs["exception.stacktrace"])


def test_expose_exception_text_must_be_a_bool() -> None:
    """A flag that is not a bool is refused at construction, quoted."""
    with pytest.raises(ConfigError, match="'yes'"):
        TelemetryOptions(expose_exception_text="yes")  # type: ignore[arg-type]


async def test_the_server_option_alone_exposes_it_on_spans_too(
        app: Callable[..., Any], tracing: Tracing) -> None:
    """``ServeOptions(expose_exception_text=True)`` (a development server that sends the
    text to its callers) records it on the span too, without the telemetry flag."""
    ch = await app(True, telemetry_expose=False)
    for span in await _server_spans(ch, tracing):
        attrs = dict(next(e for e in span.events if e.name == "exception").attributes
                     or {})
        assert attrs["exception.message"] == SECRET
