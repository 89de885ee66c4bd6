"""The trace and span ids of an access line written without a span of the telemetry's own
(tracing off): the span current around the call when there is one (an application's), none
when there is none or the current one is invalid; on the JSON access log's fast line and on
its generic one (structlog context variables bound), on both sides."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.observability import (
    TelemetryClientInterceptor,
    TelemetryOptions,
    TelemetryServerInterceptor,
    _logging,
)
from meshkit.observability._logging import (
    BufferedLineWriter,
    _AccessLog,
    _AccessWriter,
    _render_lines,
)
from tests.support.contexts import ServedContext as _ServedContext

_APP_SPAN = NonRecordingSpan(
    SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
)


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> Iterator[BufferedLineWriter]:
    w = BufferedLineWriter(io.StringIO(), flush_interval_s=30)
    monkeypatch.setattr(_AccessLog, "logger", _AccessWriter(w, 20))
    yield w
    structlog.contextvars.clear_contextvars()


async def _served_call(bound: bool) -> None:
    icpt = TelemetryServerInterceptor(
        "echo", TelemetryOptions(registry=CollectorRegistry(), tracing=False)
    )

    async def unary(request: bytes, context: Any) -> bytes:
        if bound:
            structlog.contextvars.bind_contextvars(order_id="o-1")
        return request

    handler = icpt.resolve("/meshkit.test.Echo/Unary", grpc.unary_unary_rpc_method_handler(unary))
    assert handler is not None and handler.unary_unary is not None
    assert await handler.unary_unary(b"hi", _ServedContext()) == b"hi"
    for _ in range(3):  # a deferred capture's turn
        await asyncio.sleep(0)


async def _client_call(bound: bool) -> None:
    icpt = TelemetryClientInterceptor(TelemetryOptions(registry=CollectorRegistry(), tracing=False))

    async def proceed(details: Any, request: Any) -> Any:
        return request

    if bound:
        structlog.contextvars.bind_contextvars(order_id="o-1")
    details = ClientCallDetails(
        service="echo",
        method="/meshkit.test.Echo/Unary",
        kind=CallKind.UNARY_UNARY,
        timeout_s=5,
        metadata=(),
    )
    assert await icpt.intercept_unary(details, b"hi", proceed) == b"hi"
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.mark.parametrize("bound", [False, True], ids=["fast-line", "contextvars-bound"])
@pytest.mark.parametrize("current", ["none", "invalid", "application"])
@pytest.mark.parametrize("side", ["server", "client"])
async def test_access_line_ids_are_the_current_spans(
    side: str,
    current: str,
    bound: bool,
    writer: BufferedLineWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(The fast line is taken while nothing was ever bound in the process: structlog
    keeps each name bound once, so that is pinned for those cases.)"""
    if not bound:
        monkeypatch.setattr(_logging, "_BOUND_NAMES", {})
    span = {
        "none": None,
        "invalid": NonRecordingSpan(INVALID_SPAN_CONTEXT),
        "application": _APP_SPAN,
    }[current]
    call = _served_call if side == "server" else _client_call
    if span is None:
        await call(bound)
    else:
        with trace.use_span(span, end_on_exit=False):
            await call(bound)
    (line,) = [json.loads(text) for text in _render_lines(writer._buf)]
    assert line["side"] == side and line["code"] == "OK"
    assert line.get("order_id") == ("o-1" if bound else None)
    if current == "application":
        assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert line["span_id"] == "00f067aa0ba902b7"
    else:
        assert "trace_id" not in line and "span_id" not in line
