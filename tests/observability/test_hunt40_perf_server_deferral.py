"""The server telemetry's deferred completion (its JSON access record captured in the loop's
next turn on an idle loop), appended straight to asyncio's ready queue: the same handle
``call_soon`` would queue, in a copy of the finishing call's context, on whichever loop
finishes the call; ``call_soon`` itself where it is replaced or in debug mode."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

from meshkit.observability import TelemetryOptions, TelemetryServerInterceptor
from meshkit.observability._logging import (
    BufferedLineWriter,
    _AccessLog,
    _AccessWriter,
    _render_lines,
)
from tests.support.contexts import ServedContext as _ServedContext


def _completion(callback: Any) -> bool:
    return getattr(callback, "__func__", None) is TelemetryServerInterceptor._complete


class _CountingLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with its ``call_soon`` replaced (counting the telemetry's)."""

    completions: list[int] = []

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        if _completion(callback):
            self.completions.append(1)
        return super().call_soon(callback, *args, context=context)


def _served(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[BufferedLineWriter, TelemetryServerInterceptor, Any]:
    writer = BufferedLineWriter(io.StringIO(), flush_interval_s=30)
    monkeypatch.setattr(_AccessLog, "logger", _AccessWriter(writer, 20))
    icpt = TelemetryServerInterceptor(
        "echo", TelemetryOptions(registry=CollectorRegistry(), tracing=False)
    )

    async def unary(request: bytes, context: Any) -> bytes:
        structlog.contextvars.bind_contextvars(order_id=request.decode())
        return request

    handler = icpt.resolve("/meshkit.test.Echo/Unary", grpc.unary_unary_rpc_method_handler(unary))
    assert handler is not None and handler.unary_unary is not None
    return writer, icpt, handler.unary_unary


async def _one_call(
    writer: BufferedLineWriter, icpt: TelemetryServerInterceptor, unary: Any, request: bytes
) -> tuple[int, int]:
    """One call on an idle loop: (records, deferred) at its answer, then its record."""
    for _ in range(3):  # the loop settles
        await asyncio.sleep(0)
    before = len(writer._buf)
    assert await unary(request, _ServedContext()) == request
    at_answer = len(writer._buf) - before, icpt._deferred
    await asyncio.sleep(0)
    assert len(writer._buf) == before + 1 and icpt._deferred == 0 and icpt._in_flight == 0
    return at_answer


def test_each_loop_that_finishes_a_call_gets_its_deferred_capture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One interceptor serving on one asyncio loop, then another (``asyncio.run`` twice),
    then the first again: each call's capture is deferred to the next turn of the loop
    that finished it, and runs there."""
    writer, icpt, unary = _served(monkeypatch)
    with asyncio.Runner() as first, asyncio.Runner() as second:
        assert first.run(_one_call(writer, icpt, unary, b"a")) == (0, 1)
        assert second.run(_one_call(writer, icpt, unary, b"b")) == (0, 1)
        assert first.run(_one_call(writer, icpt, unary, b"c")) == (0, 1)
    lines = [json.loads(line) for line in _render_lines(writer._buf)]
    assert [line["code"] for line in lines] == ["OK"] * 3


def test_the_deferred_capture_runs_in_the_finishing_calls_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the handler bound with structlog's context variables is on its deferred JSON
    line (the capture runs in a copy of the call's context, as ``call_soon`` copies it),
    and not on another call's."""
    writer, icpt, unary = _served(monkeypatch)

    async def two() -> list[tuple[int, int]]:
        out = []
        for request in (b"o-1", b"o-2"):
            out.append(await asyncio.create_task(_one_call(writer, icpt, unary, request)))
        return out

    with asyncio.Runner() as runner:
        assert runner.run(two()) == [(0, 1), (0, 1)]
    lines = [json.loads(line) for line in _render_lines(writer._buf)]
    assert [line.get("order_id") for line in lines] == ["o-1", "o-2"]


@pytest.mark.parametrize("debug", [False, True])
def test_a_loop_with_its_own_call_soon_or_in_debug_mode_is_called(
    debug: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loop whose ``call_soon`` is replaced, and on asyncio's loop in debug mode, the
    deferred capture goes through ``loop.call_soon`` (what the loop's own code does
    there), still after the answer."""
    writer, icpt, unary = _served(monkeypatch)
    calls: list[int] = []
    real = asyncio.BaseEventLoop.call_soon

    def spy(loop: Any, callback: Any, *args: Any, context: Any = None) -> Any:
        if _completion(callback):
            calls.append(1)
        return real(loop, callback, *args, context=context)

    if debug:
        monkeypatch.setattr(asyncio.BaseEventLoop, "call_soon", spy)
        # asyncio's own loop, but in debug mode: compared with the original call_soon
        monkeypatch.setattr("meshkit.observability._server._BASE_CALL_SOON", spy)
        factory: Any = asyncio.new_event_loop
    else:
        monkeypatch.setattr(_CountingLoop, "completions", calls)
        factory = _CountingLoop
    with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
        assert runner.run(_one_call(writer, icpt, unary, b"x")) == (0, 1)
    assert calls == [1]
    assert json.loads(_render_lines(writer._buf)[0])["order_id"] == "x"
