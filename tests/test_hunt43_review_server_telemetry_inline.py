"""The server telemetry's ``_finish`` counts a call inline (61eda786: what
``_Record.finished`` does; 784a68e9: ``_outcome``'s OK answer), so a change to either
one must be made to the other: this test holds them together. Every outcome (no
exception, a code set as an enum or an integer, a cancellation with and without time
left, an abort, a handler's exception, a response stream's ``GeneratorExit``) of every
call kind, with and without the rate limiter's refusal mark, counts the method's record
exactly as ``_Record.finished`` given ``_Method.outcome``'s code does, histogram and
duration sum included; ``in_flight`` comes back to 0.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit.observability._server as server_telemetry
from meshkit.observability import TelemetryOptions
from meshkit.observability._metrics import _Record
from meshkit.resilience import ratelimit


class _Context:
    """What telemetry asks of a grpc.aio servicer context."""

    def __init__(self, code: Any, remaining: float | None) -> None:
        self._code, self._remaining = code, remaining

    def code(self) -> Any:
        return self._code

    def time_remaining(self) -> float | None:
        return self._remaining

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple[()]:
        return ()


class _Handler:
    def __init__(self, request_streaming: bool, response_streaming: bool) -> None:
        self.request_streaming = request_streaming
        self.response_streaming = response_streaming


_CODES: tuple[Any, ...] = (None, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           grpc.StatusCode.NOT_FOUND, 5, 0, 99)
_REMAINING = (None, 3.0, 0.0, -1.0)


def _exceptions() -> tuple[BaseException | None, ...]:
    return (None, asyncio.CancelledError(), GeneratorExit(), ValueError("x"),
            grpc.aio.AbortError())


def _fields(r: _Record) -> tuple[Any, ...]:
    return (r.started, r.in_flight, r.ok, dict(r.handled), list(r.counts),
            round(r.sum_s, 9), r.extra)


@pytest.mark.parametrize("limited", [False, True], ids=["not-limited", "limited"])
def test_the_inline_count_is_record_finished(monkeypatch: pytest.MonkeyPatch,
                                             limited: bool) -> None:
    clock = itertools.count()  # each reading 1 s later: durations of 1 s (bucketed)
    monkeypatch.setattr(server_telemetry, "_perf", lambda: float(next(clock)) * 0.37)
    icpt = server_telemetry.TelemetryServerInterceptor("svc", TelemetryOptions(
        registry=CollectorRegistry(), tracing=False, access_log=False))
    for rs, ss in itertools.product((False, True), repeat=2):
        method = f"/p.S/M{int(rs)}{int(ss)}"
        reporter: Any = icpt._reporter_for(method, _Handler(rs, ss))  # type: ignore[arg-type]
        bound = reporter.messages
        assert bound is not None
        expected = _Record(bound.labels, bound.bounds)
        outcome = (server_telemetry.TelemetryServerInterceptor._request_stream_outcome
                   if rs else server_telemetry.TelemetryServerInterceptor._outcome)
        for code, exc, remaining in itertools.product(_CODES, _exceptions(), _REMAINING):
            token = ratelimit._rejected.set(limited)
            try:
                context = _Context(code, remaining)
                state = reporter.start(context)
                reporter.finish(state, context, exc)
            finally:
                ratelimit._rejected.reset(token)
            expected.start()
            answered = outcome(context, exc)
            expected.finished(answered, 0.37,
                              answered is grpc.StatusCode.RESOURCE_EXHAUSTED and limited)
        assert _fields(bound) == _fields(expected), method
        assert bound.in_flight == 0
    assert icpt._in_flight == 0
