"""The client telemetry's deferred completion (a recorded span ended two loop turns after
the call's answer), made on asyncio's own loop as the two ``call_soon`` hops would make
it: the first hop's handle appended to the ready queue, the second appended by the first
when it runs, both in a copy of the finishing call's context; ``call_soon`` itself on
uvloop, on a loop whose ``call_soon`` is replaced and in debug mode. The same turns, the
same order against other callbacks, on whichever loop finishes the call."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.observability import TelemetryClientInterceptor, TelemetryOptions
from tests.observability.conftest import Tracing
from tests.support.echo import method

_ORDER: contextvars.ContextVar[str | None] = contextvars.ContextVar("p3_order", default=None)


def _completion(callback: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``call_soon(callback, *args)`` schedules the client's completion (its
    second hop) or the hop that schedules it (the first); the completion may be the
    wrapper :func:`_watch_context` puts in its place."""

    def is_complete(f: Any) -> bool:
        return getattr(f, "__func__", None) is TelemetryClientInterceptor._complete or getattr(
            f, "watched_completion", False
        )

    return is_complete(callback) or (bool(args) and is_complete(args[0]))


class _CountingLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with its ``call_soon`` replaced (counting the telemetry's)."""

    completions: list[int] = []

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        if _completion(callback, args):
            self.completions.append(1)
        return super().call_soon(callback, *args, context=context)


def _interceptor(tracing: Tracing, **options: Any) -> TelemetryClientInterceptor:
    return TelemetryClientInterceptor(
        TelemetryOptions(
            tracer_provider=tracing.provider, metrics=False, access_log=False, **options
        )
    )


async def _one_call(
    icpt: TelemetryClientInterceptor, tracing: Tracing, order: str, alone: bool = True
) -> list[tuple[str, int]]:
    """One call answered without a loop turn, on a settled loop; what the span count and
    the completion's context read at each step: at the answer, in the next turn (a
    callback queued right after the answer), in the turn after (another one queued by
    that callback), and after it."""
    for _ in range(3):  # the loop settles
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    before = len(tracing.spans())
    token = _ORDER.set(order)
    try:

        async def proceed(d: ClientCallDetails, request: Any) -> Any:
            return request

        d = ClientCallDetails(
            service="echo",
            method=method("Unary"),
            kind=CallKind.UNARY_UNARY,
            timeout_s=5,
            metadata=(),
        )
        assert await icpt.intercept_unary(d, b"x", proceed) == b"x"
    finally:
        _ORDER.reset(token)
    seen.append(("answer", len(tracing.spans()) - before))
    done = asyncio.Event()

    def second() -> None:
        seen.append(("second turn", len(tracing.spans()) - before))
        done.set()

    def first() -> None:
        seen.append(("first turn", len(tracing.spans()) - before))
        loop.call_soon(second)

    loop.call_soon(first)
    await asyncio.wait_for(done.wait(), 5)
    seen.append(("after", len(tracing.spans()) - before))
    if alone:  # (no other thread's call under way)
        assert icpt._deferred == 0 and icpt._in_flight == 0
    return seen


_TURNS = [("answer", 0), ("first turn", 0), ("second turn", 1), ("after", 1)]


def _watch_context(
    icpt: TelemetryClientInterceptor, monkeypatch: pytest.MonkeyPatch, seen: list[str | None]
) -> None:
    """Record the context variable the caller set, as each completion reads it."""
    real = icpt._complete

    def complete(*args: Any) -> None:
        seen.append(_ORDER.get())
        real(*args)

    complete.watched_completion = True  # type: ignore[attr-defined]
    monkeypatch.setattr(icpt, "_complete", complete)


def test_on_asyncios_loop_the_completion_is_queued_without_call_soon(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On asyncio's own loop neither hop goes through ``loop.call_soon`` (a spy on it, the
    loop's check told it is the original, sees none), and the span still ends in the
    second turn after the answer, before a callback queued at that turn's start, in the
    finishing call's context."""
    icpt = _interceptor(tracing)
    hops: list[int] = []
    real = asyncio.BaseEventLoop.call_soon

    def spy(loop: Any, callback: Any, *args: Any, context: Any = None) -> Any:
        if _completion(callback, args):
            hops.append(1)
        return real(loop, callback, *args, context=context)

    monkeypatch.setattr(asyncio.BaseEventLoop, "call_soon", spy)
    monkeypatch.setattr("meshkit.observability._client._BASE_CALL_SOON", spy)
    contexts: list[str | None] = []
    _watch_context(icpt, monkeypatch, contexts)
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        assert runner.run(_one_call(icpt, tracing, "o-1")) == _TURNS
        assert runner.run(_one_call(icpt, tracing, "o-2")) == _TURNS
    assert hops == []
    assert contexts == ["o-1", "o-2"]


def test_each_loop_that_finishes_a_call_gets_its_completion(tracing: Tracing) -> None:
    """One interceptor on one asyncio loop, then another, then the first again: each
    call's completion runs two turns later on the loop that finished it."""
    icpt = _interceptor(tracing)
    with asyncio.Runner() as first, asyncio.Runner() as second:
        assert first.run(_one_call(icpt, tracing, "a")) == _TURNS
        assert second.run(_one_call(icpt, tracing, "b")) == _TURNS
        assert first.run(_one_call(icpt, tracing, "c")) == _TURNS
    assert len(tracing.spans()) == 3


@pytest.mark.parametrize("loop_kind", ["own call_soon", "debug", "uvloop"])
def test_other_loops_go_through_call_soon(
    loop_kind: str, tracing: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loop whose ``call_soon`` is replaced, on asyncio's loop in debug mode, and on
    uvloop (its ``call_soon`` is C), both hops go through ``loop.call_soon``, with the
    same turns and context."""
    icpt = _interceptor(tracing)
    contexts: list[str | None] = []
    _watch_context(icpt, monkeypatch, contexts)
    hops: list[int] = []
    debug = loop_kind == "debug"
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="meshkit[fast] not installed")
        factory: Any = uvloop.new_event_loop
    elif debug:
        real = asyncio.BaseEventLoop.call_soon

        def spy(loop: Any, callback: Any, *args: Any, context: Any = None) -> Any:
            if _completion(callback, args):
                hops.append(1)
            return real(loop, callback, *args, context=context)

        monkeypatch.setattr(asyncio.BaseEventLoop, "call_soon", spy)
        # asyncio's own loop, but in debug mode: compared with the original call_soon
        monkeypatch.setattr("meshkit.observability._client._BASE_CALL_SOON", spy)
        factory = asyncio.SelectorEventLoop
    else:
        monkeypatch.setattr(_CountingLoop, "completions", hops)
        factory = _CountingLoop
    with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
        assert runner.run(_one_call(icpt, tracing, "x")) == _TURNS
    assert contexts == ["x"]
    if loop_kind != "uvloop":
        assert hops == [1, 1]  # both hops


def test_two_threads_loops_never_pair_a_loop_with_the_others_queue(tracing: Tracing) -> None:
    """One interceptor shared by channels on two threads' loops: a thread paused in the
    middle of remembering its loop (after its first attribute store: the trace hook
    stops it there) while the other thread's loop finishes a call must not leave the
    other loop paired with the first one's ready queue. (The loop and queue were two
    attributes, written one after the other: the second loop's next completion was
    appended to the first loop's queue, and never ran on its own loop.)"""
    import dis
    import sys
    import threading
    from types import FrameType

    icpt = _interceptor(tracing, complete_after_response_max_in_flight=8)
    code = TelemetryClientInterceptor._ready_of.__code__
    names = {i.offset: i.opname for i in dis.get_instructions(code)}
    paused, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and not paused.is_set():
            done = [o for o, n in names.items() if n == "STORE_ATTR" and o < frame.f_lasti]
            if done:  # right after the first store
                paused.set()
                resume.wait(10)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is code:
            frame.f_trace = local
            frame.f_trace_opcodes = True
            return local
        return None

    def first_thread() -> None:
        sys.settrace(tracer)
        try:
            with asyncio.Runner() as runner:
                runner.run(_one_call(icpt, tracing, "a"))
        except BaseException as e:  # reported by the test's thread
            errors.append(e)
        finally:
            sys.settrace(None)
            paused.set()

    thread = threading.Thread(target=first_thread, daemon=True)
    thread.start()
    try:
        assert paused.wait(10)
        with asyncio.Runner() as runner:
            assert runner.run(_one_call(icpt, tracing, "b1", alone=False)) == _TURNS
            resume.set()
            thread.join(10)
            assert not thread.is_alive() and errors == []
            assert runner.run(_one_call(icpt, tracing, "b2")) == _TURNS
    finally:
        resume.set()
        thread.join(10)
