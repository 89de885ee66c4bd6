"""Fusing adjacent wrapping interceptors: same order, same aborts, one wrap per call."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import inspect
import os
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit._handlers import (
    HANDLER_EXECUTOR,
    Before,
    FusedInterceptor,
    Handler,
    WrappingInterceptor,
    _SyncContext,
    fold_outermost,
    fuse_interceptors,
    handler_resolver,
    off_loop_outermost,
    wrap_handler,
)
from meshkit._limits import RequestGate, guard_generic_handler
from meshkit.discovery import LocalRegistry
from meshkit.resilience import RateLimitOptions
from tests.support.echo import handler as echo_handler
from tests.support.echo import method
from tests.support.wait import until


class Check(WrappingInterceptor):
    """Records its name for every call; aborts with ``deny`` when the metadata says so."""

    def __init__(self, name: str, seen: list[str], skip: str | None = None) -> None:
        super().__init__()
        self.name, self.seen, self.skip = name, seen, skip

    def _before_for(self, m: str) -> Before | None:
        if self.skip is not None and m.endswith(self.skip):
            return None

        async def before(context: Any) -> None:
            self.seen.append(self.name)
            md = dict(context.invocation_metadata() or ())
            if md.get("deny") == self.name:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{self.name} says no")

        return before


class SyncCheck(Check):
    """:class:`Check` as a synchronous ``Before``: ``None`` to pass, the abort (an
    awaitable) to refuse."""

    def _before_for(self, m: str) -> Before | None:
        def before(context: Any) -> Any:
            self.seen.append(self.name)
            md = dict(context.invocation_metadata() or ())
            if md.get("deny") == self.name:
                return context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{self.name} says no")
            return None

        return before


class Plain(grpc.aio.ServerInterceptor):
    """A non-wrapping interceptor: it must stay where it was, unfused."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def intercept_service(self, continuation: Any, details: Any) -> Handler | None:
        self.seen.append("plain")
        return await continuation(details)


def test_fuse_replaces_runs_and_keeps_others_in_place() -> None:
    """Runs of two or more wrapping interceptors become one FusedInterceptor; a single
    one and non-wrapping interceptors stay as they were, in order."""
    seen: list[str] = []
    a, b, c, d = (Check(n, seen) for n in "abcd")
    p = Plain(seen)
    out = fuse_interceptors([a, b, p, c, d, Check("e", seen), p, a])
    assert [type(x) for x in out] == [FusedInterceptor, Plain, FusedInterceptor, Plain, Check]
    assert isinstance(out[0], FusedInterceptor) and out[0].parts == (a, b)
    assert isinstance(out[2], FusedInterceptor) and [x.name for x in out[2].parts] == [
        "c", "d", "e"]  # type: ignore[attr-defined]
    assert fuse_interceptors([]) == ()
    with pytest.raises(ValueError, match="at least one"):
        FusedInterceptor([])


@pytest.fixture
async def served() -> AsyncIterator[tuple[list[str], grpc.aio.Channel]]:
    """An echo server behind [a, b, plain, c] (fused as [a+b, plain, c]) and a channel."""
    seen: list[str] = []
    chain = fuse_interceptors([Check("a", seen), Check("b", seen, skip="Sleep"),
                               Plain(seen), Check("c", seen)])
    server = grpc.aio.server(interceptors=chain)
    server.add_generic_rpc_handlers((echo_handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield seen, channel
    await channel.close()
    await server.stop(None)


async def test_fused_checks_run_in_order_for_all_call_kinds(
        served: tuple[list[str], grpc.aio.Channel]) -> None:
    """Each call kind runs a, b (fused), then c, before the handler; a part that leaves a
    method alone is skipped."""
    seen, ch = served
    assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
    assert seen == ["plain", "a", "b", "c"]
    seen.clear()
    got = [r async for r in ch.unary_stream(method("ServerStream"))(b"2", timeout=5)]
    assert got == [b"e1|0", b"e1|1"] and seen == ["plain", "a", "b", "c"]
    seen.clear()

    async def two() -> AsyncIterator[bytes]:
        yield b"p"
        yield b"q"

    assert await ch.stream_unary(method("ClientStream"))(two(), timeout=5) == b"e1|p,q"
    assert seen == ["plain", "a", "b", "c"]
    seen.clear()
    got = [r async for r in ch.stream_stream(method("Bidi"))(two(), timeout=5)]
    assert got == [b"e1|p", b"e1|q"] and seen == ["plain", "a", "b", "c"]
    seen.clear()
    assert await ch.unary_unary(method("Sleep"))(b"0", timeout=5) == b"e1"
    assert seen == ["plain", "a", "c"]


@pytest.mark.parametrize(("deny", "ran"), [("a", ["a"]), ("b", ["a", "b"])])
async def test_fused_abort_ends_the_call_before_later_checks(
        served: tuple[list[str], grpc.aio.Channel], deny: str, ran: list[str]) -> None:
    """The first fused check to abort ends the call with its status; later checks and the
    handler never run."""
    seen, ch = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ch.unary_unary(method("Unary"))(b"x", timeout=5, metadata=(("deny", deny),))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == f"{deny} says no"
    assert seen == ["plain", *ran]


class Report(WrappingInterceptor):
    """A reporter only: records start and finish (with the exception's type) per call."""

    def __init__(self, name: str, seen: list[str]) -> None:
        super().__init__()
        self.name, self.seen = name, seen

    def _reporter_for(self, m: str, handler: Handler) -> Any:
        seen, name = self.seen, self.name
        kind = "stream" if handler.response_streaming else "unary"

        class _R:
            def start(self, context: Any) -> str:
                seen.append(f"{name}:start:{kind}")
                return "state"

            def finish(self, state: Any, context: Any, exc: BaseException | None) -> None:
                assert state == "state"
                seen.append(f"{name}:finish:{type(exc).__name__ if exc else 'ok'}")

        return _R()


async def test_reporters_fuse_with_checks_and_see_refusals_and_errors() -> None:
    """A reporter fused with checks (one interceptor, one wrap) starts before every check,
    finishes after the handler, and sees a check's refusal and a handler's error; two
    reporters finish in reverse order."""
    seen: list[str] = []
    chain = fuse_interceptors([Report("t", seen), Check("a", seen), Report("u", seen)])
    assert len(chain) == 1 and isinstance(chain[0], FusedInterceptor)
    async with _echo_channel(echo_handler("e1"), chain) as ch:
        assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
        assert seen == ["t:start:unary", "u:start:unary", "a", "u:finish:ok", "t:finish:ok"]
        seen.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary(method("Unary"))(b"x", timeout=5,
                                                  metadata=(("deny", "a"),))
        # context.abort() sends the status before it unwinds the handler: the caller may
        # see the error before the reporters finish
        await until(lambda: any(e.startswith("t:finish") for e in seen), timeout_s=5,
                    what="the refused call's reporters finished")
        assert seen[2] == "a" and seen[3].startswith("u:finish:") and seen[3] != "u:finish:ok"
        seen.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:1",
                                                                timeout=5):
                pass
        await until(lambda: any(e.startswith("t:finish") for e in seen), timeout_s=5,
                    what="the failed stream's reporters finished")
        assert seen[0] == "t:start:stream" and seen[-1] != "t:finish:ok"


class Counts:
    """What a reporter's ``messages`` counts."""

    def __init__(self) -> None:
        self.msg_received = 0
        self.msg_sent = 0


class Counting(Report):
    """A reporter whose calls' stream messages are counted in ``self.counts``."""

    def __init__(self, name: str, seen: list[str]) -> None:
        super().__init__(name, seen)
        self.counts = Counts()

    def _reporter_for(self, m: str, handler: Handler) -> Any:
        reporter = super()._reporter_for(m, handler)
        reporter.messages = self.counts
        return reporter


async def test_wrap_counts_stream_messages_for_the_reporter_that_asks() -> None:
    """A reporter with ``messages`` gets every request a request-streaming handler takes
    from its iterator and every response a streaming handler yields counted, also when it
    is fused after a reporter that counts nothing."""
    seen: list[str] = []
    counting = Counting("c", seen)
    chain = fuse_interceptors([Report("t", seen), counting])
    server = grpc.aio.server(interceptors=chain)
    server.add_generic_rpc_handlers((echo_handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def requests(*items: bytes) -> AsyncIterator[bytes]:
        for item in items:
            yield item

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            got = [r async for r in ch.stream_stream(method("Bidi"))(requests(b"1", b"2",
                                                                               b"3"))]
            assert len(got) == 3
            assert await ch.stream_unary(method("ClientStream"))(requests(b"a", b"b")) \
                == b"e1|a,b"
            assert len([r async for r in ch.unary_stream(method("ServerStream"))(b"4")]) == 4
        assert (counting.counts.msg_received, counting.counts.msg_sent) == (3 + 2, 3 + 4)
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def _echo_channel(generic: grpc.GenericRpcHandler,
                        chain: Any) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a plain grpc.aio server with ``generic`` and interceptors ``chain``."""
    server = grpc.aio.server(interceptors=tuple(chain) or None)
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


async def _two_echoes(ch: grpc.aio.Channel) -> None:
    assert await ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"e1|x"
    assert await ch.unary_unary(method("Unary"))(b"y", timeout=5) == b"e1|y"


class Gate(grpc.aio.ServerInterceptor):
    """An outermost converting interceptor: marks every handler it converts."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def convert(self, handler: Handler) -> Handler:
        inner = handler.unary_unary
        seen = self.seen
        if inner is None:
            return handler

        async def behavior(request: Any, context: Any) -> Any:
            seen.append("gate")
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def convert_for(self, method: str, handler: Handler) -> Handler:
        return self.convert(handler)

    async def intercept_service(self, continuation: Any, details: Any) -> Handler | None:
        handler = await continuation(details)
        return None if handler is None else self.convert(handler)


@pytest.mark.parametrize("shape", ["fused", "single", "plain-first"])
async def test_fold_outermost_runs_the_conversion_outside_the_wrap(shape: str) -> None:
    """The outermost conversion (the request gate) folds into the wrapping interceptors
    that come first (one interceptor per call), still runs before their checks and
    reporters, and stays a separate interceptor in front of a non-wrapping one."""
    seen: list[str] = []
    gate = Gate(seen)
    chains = {"fused": [Report("t", seen), Check("a", seen)], "single": [Check("a", seen)],
              "plain-first": [Plain(seen), Check("a", seen)]}
    chain = fold_outermost(fuse_interceptors(chains[shape]), gate, gate.convert_for)
    want_len = {"fused": 1, "single": 1, "plain-first": 3}[shape]
    assert len(chain) == want_len
    assert (chain[0] is gate) == (shape == "plain-first")
    async with _echo_channel(echo_handler("e1"), chain) as ch:
        await _two_echoes(ch)
    per_call = {"fused": ["gate", "t:start:unary", "a", "t:finish:ok"], "single": ["gate", "a"],
                "plain-first": ["plain", "gate", "a"]}[shape]
    assert seen == per_call * 2  # the cached (converted) handler serves the second call


class ResolvingGate(Gate):
    """The gate's shape as :func:`handler_resolver` accepts it (as ``RequestGate``)."""

    resolves_per_method = True

    def resolve(self, method: str, handler: Handler | None) -> Handler | None:
        return None if handler is None else self.convert(handler)


@pytest.mark.parametrize("shape", ["fused", "single", "gate-only"])
async def test_a_resolvable_chain_runs_where_handlers_are_looked_up(shape: str) -> None:
    """A chain of handler-wrapping interceptors, applied per method where the handler is
    looked up (grpc.aio given no interceptor), runs per call exactly as grpc.aio would run
    it: the gate first, then the reporter's start, the checks, the reporter's finish."""
    seen: list[str] = []
    gate = ResolvingGate(seen)
    chains = {"fused": [Report("t", seen), Check("a", seen)], "single": [Check("a", seen)],
              "gate-only": []}
    chain = (fold_outermost(fuse_interceptors(chains[shape]), gate, gate.convert_for)
             if chains[shape] else (gate,))
    resolve = handler_resolver(chain)
    assert resolve is not None
    async with _echo_channel(guard_generic_handler(echo_handler("e1"), resolve), ()) as ch:
        await _two_echoes(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Nope"))(b"z", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        if shape != "gate-only":
            deny = ch.unary_unary(method("Unary"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await deny(b"z", timeout=5, metadata=(("deny", "a"),))
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    per_call = {"fused": ["gate", "t:start:unary", "a", "t:finish:ok"], "single": ["gate", "a"],
                "gate-only": ["gate"]}[shape]
    denied = {"fused": ["gate", "t:start:unary", "a", "t:finish:AbortError"],
              "single": ["gate", "a"], "gate-only": []}[shape]
    assert seen == per_call * 2 + denied


def test_a_chain_that_does_more_than_wrap_is_left_to_grpc() -> None:
    """A chain with an interceptor that does more than wrap the handler (it may look at
    metadata or pick another handler per call) does not resolve per method."""
    seen: list[str] = []
    assert handler_resolver([Plain(seen), Check("a", seen)]) is None
    assert handler_resolver([Check("a", seen), Gate(seen)]) is None  # no resolve()
    assert handler_resolver([]) is None


def test_only_a_per_call_chain_led_by_a_users_interceptor_gets_the_off_loop_wrap() -> None:
    """:func:`off_loop_outermost` wraps the outermost interceptor of a chain grpc.aio runs
    per call only when it is the user's (its handler is not resolved by meshkit): a chain
    led by meshkit's wrap or the request gate, whose handlers run a plain function off
    the loop already, is handed on as it is, at no cost per call."""
    seen: list[str] = []
    user, check = Plain(seen), Check("a", seen)
    gate = RequestGate(meshkit.ServerLimits())
    assert off_loop_outermost([]) == ()
    led = (check, user)
    assert all(a is b for a, b in zip(off_loop_outermost(led), led, strict=True))
    gated = (gate, user)
    assert all(a is b for a, b in zip(off_loop_outermost(gated), gated, strict=True))
    wrapped = off_loop_outermost((user, check))
    assert len(wrapped) == 2 and wrapped[0] is not user and wrapped[1] is check
    assert repr(user) in repr(wrapped[0])


class _Request:
    """A request object a weak reference can watch."""


class _Quiet:
    """A reporter that records the exception each call finished with."""

    def __init__(self) -> None:
        self.finished: list[type[BaseException] | None] = []

    def start(self, context: Any) -> None:
        return None

    def finish(self, state: Any, context: Any, exc: BaseException | None) -> None:
        self.finished.append(None if exc is None else type(exc))


@pytest.mark.parametrize("streams", [False, True])
async def test_a_failed_call_does_not_keep_its_request_alive(streams: bool) -> None:
    """A reported call whose handler raised frees its request by reference counting alone:
    the wrap's frame holds no reference to the exception (no cycle exception -> traceback
    -> frame -> exception for the GC to free late); the reporter still sees the error."""

    async def fail(request: Any, context: Any) -> Any:
        raise ValueError("no")

    async def fail_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        raise ValueError("no")
        yield  # pragma: no cover

    handler = (grpc.unary_stream_rpc_method_handler(fail_stream) if streams
               else grpc.unary_unary_rpc_method_handler(fail))
    reporter = _Quiet()
    behavior = wrap_handler(handler, reporter=reporter)
    behavior = behavior.unary_stream if streams else behavior.unary_unary
    request = _Request()
    alive = weakref.ref(request)
    gc.disable()
    try:
        try:
            if streams:
                async for _ in behavior(request, None):
                    pass
            else:
                await behavior(request, None)
        except ValueError:
            pass
        del request
        assert alive() is None
    finally:
        gc.enable()
    assert reporter.finished == [ValueError]


@pytest.mark.parametrize("deny", [None, "a", "b", "c", "d"])
async def test_synchronous_and_async_checks_fuse_in_order(deny: str | None) -> None:
    """Fused checks may be synchronous (``None`` to pass, an awaitable to refuse) or
    ``async``: they run in chain order either way (the ones after an ``async`` check run
    once it is done), the first refusal ends the call, and later checks never run."""
    seen: list[str] = []
    chain = fuse_interceptors([SyncCheck("a", seen), Check("b", seen), SyncCheck("c", seen),
                               Check("d", seen)])
    async with _echo_channel(echo_handler("e1"), chain) as ch:
        md = (("deny", deny),) if deny else ()
        calls = (lambda: ch.unary_unary(method("Unary"))(b"x", timeout=5, metadata=md),
                 lambda: _collect(ch.unary_stream(method("ServerStream"))(
                     b"1", timeout=5, metadata=md)))
        for make in calls:
            seen.clear()
            call = make()
            if deny is None:
                assert await call in (b"e1|x", [b"e1|0"])
                assert seen == ["a", "b", "c", "d"]
                continue
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert err.value.details() == f"{deny} says no"
            assert seen == list("abcd"[:"abcd".index(deny) + 1])


async def _collect(call: Any) -> list[Any]:
    return [r async for r in call]


class _Aborted(Exception):
    pass


class _AbortingContext:
    aborted: tuple[Any, ...] | None = None

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()  # none set (a wrap checks what a handler set)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.aborted = (code, details)
        raise _Aborted(details)


class _Recorder:
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def start(self, context: Any) -> None:
        self.seen.append("start")

    def finish(self, state: Any, context: Any, exc: BaseException | None) -> None:
        self.seen.append("finish:ok" if exc is None else f"finish:{type(exc).__name__}")


@pytest.mark.parametrize("reported", [False, True])
async def test_a_wrap_runs_the_unary_request_guard_itself(reported: bool) -> None:
    """A wrap around a guarded unary-unary handler runs the guard's check itself, after the
    wrap's own checks (where the guard ran before, inside them), and calls the servicer's
    behaviour directly: one coroutine frame fewer per call. A request that did not decode
    is aborted INVALID_ARGUMENT "request is not a valid <Type>", and the reporter sees it."""
    import sys

    from grpc_health.v1 import health_pb2

    from meshkit._limits import guard_method_handler

    called_from: list[str] = []

    async def check(request: Any, context: Any) -> bytes:
        called_from.append(sys._getframe(1).f_code.co_name)
        return b"ok"

    guarded = guard_method_handler(grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=health_pb2.HealthCheckRequest.FromString))
    seen: list[str] = []

    def before(context: Any) -> None:
        seen.append("check")

    wrapped = wrap_handler(guarded, before, _Recorder(seen) if reported else None)
    assert wrapped.unary_unary is not None and guarded.request_deserializer is not None
    ctx = _AbortingContext()
    good = guarded.request_deserializer(b"")
    assert await wrapped.unary_unary(good, ctx) == b"ok"
    assert called_from == ["behavior"]  # the wrap's frame, not the guard's unary_behavior
    seen.clear()
    bad = guarded.request_deserializer(b"\xff\xff\xff\xff")
    with pytest.raises(_Aborted):
        await wrapped.unary_unary(bad, ctx)
    assert ctx.aborted == (grpc.StatusCode.INVALID_ARGUMENT,
                           "request is not a valid grpc.health.v1.HealthCheckRequest")
    assert seen == (["start", "check", "finish:_Aborted"] if reported else ["check"])
    assert called_from == ["behavior"]  # the servicer never saw the bad request
    # the guard alone (no wrap) still checks by itself
    assert guarded.unary_unary is not None
    with pytest.raises(_Aborted):
        await guarded.unary_unary(bad, _AbortingContext())


# --- plain-function (synchronous) handlers run off the event loop, as grpc.aio runs them ----

_SYNC = "sync.v1.Sync"
_TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="-")


class _SetsTrace(WrappingInterceptor):
    """A check that sets a context variable, as telemetry sets the call's trace."""

    def _before_for(self, m: str) -> Before | None:
        def before(context: Any) -> None:
            _TRACE.set(m)

        return before


def _sync_service(seen: list[tuple[str, bool, str]]) -> grpc.GenericRpcHandler:
    """Service ``sync.v1.Sync`` of plain functions, one per call kind (``Abort`` aborts
    through the synchronous context): each records (kind, on a loop's thread?, trace)."""

    def note(kind: str) -> None:
        seen.append((kind, asyncio._get_running_loop() is not None, _TRACE.get()))

    def unary(request: bytes, context: Any) -> bytes:
        note("unary")
        return b"u:" + request

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        note("server_stream")
        yield b"1"
        yield b"2"

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        note("client_stream")
        return b"".join(requests)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        note("bidi")
        for r in requests:
            yield r.upper()

    def abort(request: bytes, context: Any) -> bytes:
        note("abort")
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        raise AssertionError("unreachable")

    return grpc.method_handlers_generic_handler(_SYNC, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Abort": grpc.unary_unary_rpc_method_handler(abort),
    })


@pytest.mark.parametrize("shape", ["guarded", "wrapped", "both"])
async def test_a_synchronous_handler_runs_off_the_event_loop_with_the_calls_context(
    shape: str,
) -> None:
    """Plain-function handlers of every call kind run in a thread (grpc.aio's rule: not a
    coroutine or async generator function), with the context variables the checks set
    and a synchronous context whose abort ends the call with its status."""
    seen: list[tuple[str, bool, str]] = []
    service = _sync_service(seen)
    if shape != "wrapped":
        service = guard_generic_handler(service)
    if shape != "guarded":
        service = guard_generic_handler(service, handler_resolver([_SetsTrace()]))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            def m(name: str) -> str:
                return f"/{_SYNC}/{name}"

            assert await ch.unary_unary(m("Unary"))(b"x", timeout=5) == b"u:x"
            assert [r async for r in ch.unary_stream(m("ServerStream"))(b"", timeout=5)] \
                == [b"1", b"2"]
            assert await ch.stream_unary(m("ClientStream"))(requests(), timeout=5) == b"ab"
            assert [r async for r in ch.stream_stream(m("Bidi"))(requests(), timeout=5)] \
                == [b"A", b"B"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(m("Abort"))(b"x", timeout=5)
            assert (err.value.code(), err.value.details()) \
                == (grpc.StatusCode.FAILED_PRECONDITION, "not now")
    finally:
        await server.stop(None)
    kinds = ["unary", "server_stream", "client_stream", "bidi", "abort"]
    assert [k for k, _, _ in seen] == kinds
    assert not any(on_loop for _, on_loop, _ in seen), seen
    if shape != "guarded":
        assert [t for _, _, t in seen] == [m for m in (
            f"/{_SYNC}/Unary", f"/{_SYNC}/ServerStream", f"/{_SYNC}/ClientStream",
            f"/{_SYNC}/Bidi", f"/{_SYNC}/Abort")]


async def test_a_blocking_synchronous_handler_does_not_stall_a_mesh_servers_other_calls(
    registry: LocalRegistry,
) -> None:
    """A MeshServer (telemetry and the request gate on, as by default) runs a handler
    that blocks in a thread: another call is answered meanwhile."""
    release = threading.Event()

    def blocking(request: bytes, context: Any) -> bytes:
        release.wait(10)
        return b"done"

    async def quick(request: bytes, context: Any) -> bytes:
        return b"quick"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SYNC, {
            "Blocking": grpc.unary_unary_rpc_method_handler(blocking),
            "Quick": grpc.unary_unary_rpc_method_handler(quick),
        }),))

    srv = meshkit.MeshServer("sync", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            slow = asyncio.ensure_future(ch.unary_unary(f"/{_SYNC}/Blocking")(b"x", timeout=10))
            assert await ch.unary_unary(f"/{_SYNC}/Quick")(b"x", timeout=2) == b"quick"
            assert not slow.done()
            release.set()
            assert await slow == b"done"
    finally:
        release.set()
        await srv.drain()


def _stop_iteration_service() -> grpc.GenericRpcHandler:
    """``sync.v1.Stop``: plain functions that let ``StopIteration`` escape (``next()`` on
    an empty iterator), unary (``U``) and client-streaming (``CS``)."""

    def unary(request: bytes, context: Any) -> bytes:
        return next(iter(()))

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        list(requests)
        return next(iter(()))

    return grpc.method_handlers_generic_handler("sync.v1.Stop", {
        "U": grpc.unary_unary_rpc_method_handler(unary),
        "CS": grpc.stream_unary_rpc_method_handler(client_stream),
    })


@pytest.mark.parametrize("kind", ["unary", "client_stream"])
async def test_a_synchronous_handler_letting_stopiteration_escape_is_answered_unknown(
    registry: LocalRegistry, kind: str,
) -> None:
    """A plain-function handler that lets StopIteration escape is answered at once, as
    any unhandled exception: UNKNOWN naming it (an asyncio future cannot carry it)."""
    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((_stop_iteration_service(),))

    srv = meshkit.MeshServer("stop", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=0.2, admin=None))
    await srv.start()

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                if kind == "unary":
                    await ch.unary_unary("/sync.v1.Stop/U")(b"x", timeout=3)
                else:
                    await ch.stream_unary("/sync.v1.Stop/CS")(requests(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value.details()
        assert "StopIteration" in (err.value.details() or "")
    finally:
        await asyncio.wait_for(srv.drain(), 5)


def _stream_function_service(seen: list[str]) -> grpc.GenericRpcHandler:
    """``sync.v1.List``: plain functions returning a list (not generator functions), one
    that aborts a request other than ``ok`` and one that reads all its requests first.
    Each refuses to run on an event loop's thread (where it would deadlock the loop)."""

    def off_loop() -> None:
        if asyncio._get_running_loop() is not None:
            seen.append("on the loop")
            raise AssertionError("called on the event loop")

    def items(request: bytes, context: Any) -> list[bytes]:
        off_loop()
        if request != b"ok":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad filter")
        return [b"1", b"2"]

    def upper(requests: Iterator[bytes], context: Any) -> list[bytes]:
        off_loop()
        return [r.upper() for r in list(requests)]

    return grpc.method_handlers_generic_handler("sync.v1.List", {
        "Items": grpc.unary_stream_rpc_method_handler(items),
        "Upper": grpc.stream_stream_rpc_method_handler(upper),
    })


async def test_a_synchronous_stream_function_runs_off_the_loop_and_may_abort() -> None:
    """A plain function answering a response stream with a list is called in a thread:
    it aborts through its synchronous context, or reads its requests before returning,
    without blocking the event loop."""
    seen: list[str] = []
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((guard_generic_handler(_stream_function_service(seen)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            items = ch.unary_stream("/sync.v1.List/Items")
            assert await _collect(items(b"ok", timeout=5)) == [b"1", b"2"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(items(b"bad", timeout=5))
            assert (err.value.code(), err.value.details()) \
                == (grpc.StatusCode.INVALID_ARGUMENT, "bad filter"), seen
            upper = ch.stream_stream("/sync.v1.List/Upper")
            assert await _collect(upper(requests(), timeout=5)) == [b"A", b"B"]
    finally:
        await server.stop(None)
    assert seen == []


def _on_a_loops_own_thread(use: Callable[[asyncio.AbstractEventLoop], object]
                           ) -> tuple[bool, BaseException | None]:
    """Run ``use(loop)`` in a coroutine on a fresh event loop in a daemon thread; returns
    (whether it returned within 3 s, what it raised). A deadlocked loop is left behind."""
    done = threading.Event()
    raised: list[BaseException | None] = [None]

    async def main() -> None:
        try:
            use(asyncio.get_running_loop())
        except BaseException as e:
            raised[0] = e
        done.set()

    threading.Thread(target=lambda: asyncio.new_event_loop().run_until_complete(main()),
                     daemon=True).start()
    return done.wait(3), raised[0]


async def _two() -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


@pytest.mark.parametrize("use", ["abort", "send_initial_metadata", "requests"])
async def test_blocking_on_the_loop_from_its_own_thread_raises_instead_of_deadlocking(
    use: str,
) -> None:
    """The synchronous context's blocking calls and the blocking request iterator, used
    on the event loop's own thread, raise RuntimeError instead of freezing the loop."""
    from meshkit._handlers import _blocking_requests, _SyncContext

    class Context:
        async def abort(self, code: Any, details: str = "", trailing: Any = ()) -> None:
            raise AssertionError("reached the loop")

        async def send_initial_metadata(self, metadata: Any) -> None:
            raise AssertionError("reached the loop")

    def run(loop: asyncio.AbstractEventLoop) -> object:
        if use == "requests":
            return next(_blocking_requests(_two(), loop))
        sync = _SyncContext(Context(), loop)
        if use == "abort":
            return sync.abort(grpc.StatusCode.INTERNAL, "x")
        return sync.send_initial_metadata(())

    returned, raised = await asyncio.to_thread(_on_a_loops_own_thread, run)
    assert returned, "the loop deadlocked"
    assert isinstance(raised, RuntimeError) and "deadlock" in str(raised), repr(raised)


async def test_a_synchronous_response_generator_closed_on_cancel_sees_the_calls_context(
) -> None:
    """A plain response generator closed because its caller cancelled runs its finally
    in a thread with the call's context variables, as each of its steps."""
    seen: list[tuple[str, str]] = []
    closed = threading.Event()

    def forever(request: bytes, context: Any) -> Iterator[bytes]:
        try:
            while True:
                seen.append(("body", _TRACE.get()))
                yield b"x"
        finally:
            seen.append(("finally", _TRACE.get()))
            closed.set()

    service = grpc.method_handlers_generic_handler(_SYNC, {
        "Forever": grpc.unary_stream_rpc_method_handler(forever)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (guard_generic_handler(service, handler_resolver([_SetsTrace()])),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_stream(f"/{_SYNC}/Forever")(b"", timeout=5)
            n = 0
            async for _ in call:
                n += 1
                if n == 3:
                    break
            call.cancel()
            assert await asyncio.to_thread(closed.wait, 5)
    finally:
        await server.stop(None)
    assert seen[-1] == ("finally", f"/{_SYNC}/Forever"), seen[-3:]


class _Status(grpc.Status):
    """A ``grpc.Status`` (what ``grpc_status.rpc_status.to_status`` returns), here with a
    stand-in for a serialized ``google.rpc.Status`` under ``grpc-status-details-bin``."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


_DETAILS_BIN = ("grpc-status-details-bin", b"\x08\x05\x12\x11order 7 not found")


def _plain_decorator(fn: Any) -> Any:
    """A decorator written as many are (no ``functools.wraps``, no ``async def``): the
    wrapper is a plain function returning what the async handler returns (a coroutine or
    an async generator)."""

    def wrapper(request: Any, context: Any) -> Any:
        return fn(request, context)

    return wrapper


@_plain_decorator
async def _decorated_unary(request: bytes, context: Any) -> bytes:
    await context.send_initial_metadata((("x-seen", "yes"),))
    await context.abort_with_status(_Status(grpc.StatusCode.NOT_FOUND, "order 7 not found",
                                            (_DETAILS_BIN,)))
    raise AssertionError("unreachable")


@_plain_decorator
async def _decorated_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.NOT_FOUND, "order 7 not found", (_DETAILS_BIN,))


@_plain_decorator
async def _decorated_written(request: bytes, context: Any) -> None:
    await context.write(b"written")
    await context.abort(grpc.StatusCode.NOT_FOUND, "order 7 not found", (_DETAILS_BIN,))


@pytest.mark.parametrize("name", ["Unary", "Stream", "Written"])
async def test_an_async_result_of_a_plain_function_handler_may_await_its_context(
    registry: LocalRegistry, name: str,
) -> None:
    """A handler behind a plain (non-``async``) decorator returns a coroutine or an async
    generator, which meshkit awaits on the loop (``async_behaviour``: "What it returns is
    consumed on the loop when it is an async iterator or an awaitable"). It was handed the
    synchronous context the wrapper ran with, whose ``abort``/``abort_with_status``/
    ``send_initial_metadata`` raised ``RuntimeError`` on the loop's thread: the caller got
    ``UNKNOWN`` "Unexpected RuntimeError in the handler" instead of the ``NOT_FOUND`` the
    handler aborted with, and its ``grpc-status-details-bin`` (google.rpc.Status) details
    were lost. Now those awaited there are the call's own: ``NOT_FOUND`` with the details,
    after the messages sent before it."""
    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SYNC, {
            "Unary": grpc.unary_unary_rpc_method_handler(_decorated_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_decorated_stream),
            "Written": grpc.unary_stream_rpc_method_handler(_decorated_written),
        }),))

    srv = meshkit.MeshServer("sync", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                if name == "Unary":
                    await ch.unary_unary(f"/{_SYNC}/Unary")(b"x", timeout=5)
                else:
                    async for m in ch.unary_stream(f"/{_SYNC}/{name}")(b"x", timeout=5):
                        got.append(m)
    finally:
        await srv.drain()
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.NOT_FOUND, "order 7 not found"), err.value.details()
    assert _DETAILS_BIN in tuple(err.value.trailing_metadata() or ())
    if name == "Unary":
        assert ("x-seen", "yes") in tuple(err.value.initial_metadata() or ())
    else:
        assert got == [b"first" if name == "Stream" else b"written"]


async def _start_with_handler_executor(server: grpc.aio.Server, pool: Any) -> None:
    """Start ``server`` as :class:`meshkit.MeshServer` starts its own: in a context whose
    ``HANDLER_EXECUTOR`` is ``pool`` (grpc.aio runs each call in a copy of it)."""
    ctx = contextvars.copy_context()
    ctx.run(HANDLER_EXECUTOR.set, pool)
    await asyncio.get_running_loop().create_task(server.start(), context=ctx)


async def test_synchronous_handlers_run_in_the_executor_their_server_started_with() -> None:
    """The plain-function handlers of every call kind (and each step of a response
    generator) run in the ``HANDLER_EXECUTOR`` of the context their server started in
    (a MeshServer's own threads), with the call's context variables; a grpc.aio server
    started without one runs them in the loop's default executor, as grpc.aio does."""
    names: list[tuple[str, str, str]] = []

    def note(kind: str) -> None:
        names.append((kind, threading.current_thread().name, _TRACE.get()))

    def unary(request: bytes, context: Any) -> bytes:
        note("unary")
        return request

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        for item in (b"1", b"2"):
            note("server_stream")
            yield item

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        note("client_stream")
        return b"".join(requests)

    def bidi(requests: Iterator[bytes], context: Any) -> list[bytes]:
        note("bidi")  # a plain function returning a list: called in a thread too
        return [r.upper() for r in requests]

    service = guard_generic_handler(grpc.method_handlers_generic_handler(_SYNC, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }), handler_resolver([_SetsTrace()]))

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def serve_all(pool: ThreadPoolExecutor | None) -> list[tuple[str, str, str]]:
        names.clear()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((service,))
        port = server.add_insecure_port("127.0.0.1:0")
        if pool is None:
            await server.start()
        else:
            await _start_with_handler_executor(server, pool)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                def m(name: str) -> str:
                    return f"/{_SYNC}/{name}"

                assert await ch.unary_unary(m("Unary"))(b"x", timeout=5) == b"x"
                assert [r async for r in ch.unary_stream(m("ServerStream"))(b"", timeout=5)] \
                    == [b"1", b"2"]
                assert await ch.stream_unary(m("ClientStream"))(requests(), timeout=5) == b"ab"
                assert [r async for r in ch.stream_stream(m("Bidi"))(requests(), timeout=5)] \
                    == [b"A", b"B"]
        finally:
            await server.stop(None)
        return list(names)

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-handlers")
    try:
        seen = await serve_all(pool)
    finally:
        pool.shutdown(wait=True)
    assert [k for k, _, _ in seen] == ["unary", "server_stream", "server_stream",
                                       "client_stream", "bidi"]
    assert all(n.startswith("test-handlers") for _, n, _ in seen), seen
    assert [t for _, _, t in seen] == [f"/{_SYNC}/{m}" for m in (
        "Unary", "ServerStream", "ServerStream", "ClientStream", "Bidi")]
    seen = await serve_all(None)
    assert len(seen) == 5 and not any(n.startswith("test-handlers") for _, n, _ in seen), seen


async def test_a_response_generator_ended_after_its_servers_threads_were_released_is_closed(
) -> None:
    """A plain response generator whose call ends (cancelled) after its server released
    its handler threads (a MeshServer's drain ending while a handler was still blocked)
    is still closed with the call's context (scheduling the close on the shut-down pool
    raised ``RuntimeError`` in the call's ``finally``): on the thread that ran it, which
    runs the whole stream and closes it once its ``next`` under way returned."""
    step = threading.Event()
    closed_in: list[tuple[str, str]] = []
    closed = threading.Event()
    ran_on: list[str] = []

    def slow(request: bytes, context: Any) -> Iterator[bytes]:
        try:
            ran_on.append(threading.current_thread().name)
            yield b"first"
            step.wait(10)
            yield b"second"
        finally:
            closed_in.append((threading.current_thread().name, _TRACE.get()))
            closed.set()

    service = guard_generic_handler(grpc.method_handlers_generic_handler(_SYNC, {
        "Slow": grpc.unary_stream_rpc_method_handler(slow)}),
        handler_resolver([_SetsTrace()]))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-released")
    await _start_with_handler_executor(server, pool)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_stream(f"/{_SYNC}/Slow")(b"", timeout=10)
            assert await call.read() == b"first"
            await asyncio.sleep(0.2)  # its next step is under way, blocked in the pool
            pool.shutdown(wait=False)  # the server's threads released
            call.cancel()
            await asyncio.sleep(0.2)  # the call's finally ran: the close waits for the step
            step.set()
            assert await asyncio.to_thread(closed.wait, 5), "the generator was not closed"
    finally:
        step.set()
        await server.stop(None)
        pool.shutdown(wait=True)
    assert closed_in == [(ran_on[0], f"/{_SYNC}/Slow")], (closed_in, ran_on)
    assert ran_on[0].startswith("test-released"), ran_on


# -- plain-function handlers on a MeshServer's threads: the call's end, threads, slots ---

_SYNCH = "t.Sync"
_ROOT = Path(__file__).resolve().parents[1]


def _synch(name: str) -> str:
    return f"/{_SYNCH}/{name}"


async def _serve_sync(registry: LocalRegistry, handlers: dict[str, Any],
                      **options: Any) -> meshkit.MeshServer:
    """A MeshServer named ``synch`` serving ``handlers`` (service ``t.Sync``), started."""
    opts: dict[str, Any] = {"insecure": True, "drain_delay_s": 0.0, "grace_s": 0.5,
                            "admin": None}
    opts.update(options)

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SYNCH,
                                                                               handlers),))

    srv = meshkit.MeshServer("synch", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(**opts))
    await srv.start()
    return srv


_LATE_CONTEXT_SCRIPT = r'''
import asyncio, sys, tempfile, threading, time
from pathlib import Path
import grpc, meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.resilience import RateLimitOptions

what, config = sys.argv[1], sys.argv[2]
done = threading.Event()
left = threading.Event()  # the caller of Late saw its deadline pass
got = []
kept = []


def ask(context):
    try:
        got.append(repr(getattr(context, "auth_context" if what == "auth_context"
                                else what if what.startswith("peer") else "peer")()))
    except RuntimeError as e:  # the call has ended, and nothing was kept for it
        got.append(f"RuntimeError: {e}")


def late(request, context):
    # a slow handler (a slow database) that asks who called at the end; its caller's
    # deadline has passed by then (the caller saw it 0.4 s before: the server's own
    # deadline, set from the header as the call came, has ended the call meanwhile)
    try:
        left.wait(10)
        time.sleep(0.4)
        ask(context)
        return b"late"
    finally:
        done.set()


def watch(request, context):
    # a response stream whose finally asks who called, closed after the caller cancelled
    try:
        yield b"first"
        time.sleep(0.3)
        yield b"second"
    finally:
        try:
            ask(context)
        finally:
            done.set()


def leaks(request, context):
    # a handler that hands its context to a thread of its own, which asks after the call
    kept.append(context)
    threading.Timer(0.5, lambda: (ask(context), done.set())).start()
    return b"leaked"


def quick(request, context):
    return b"alive"


handlers = {"Late": grpc.unary_unary_rpc_method_handler(late),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
            "Leaks": grpc.unary_unary_rpc_method_handler(leaks),
            "Quick": grpc.unary_unary_rpc_method_handler(quick)}


class Substitute(grpc.aio.ServerInterceptor):
    # a user's interceptor serving a method with a plain handler of its own (a canned
    # answer, a stand-in): grpc.aio runs it per call, after meshkit's look-up
    async def intercept_service(self, continuation, details):
        name = details.method.rpartition("/")[2]
        return handlers[name] if name in handlers else await continuation(details)


# nothing of meshkit's per-call chain: no telemetry, deadline, unhandled-exception answer,
# request gate or call slots
BARE = {"telemetry": None, "deadline": None, "expose_exception_text": True,
        "limits": meshkit.ServerLimits(read_requests=False, max_concurrent_rpcs=None)}
CONFIGS = {
    "defaults": {},
    "bare": BARE,
    "bare+substitute": {**BARE, "interceptors": (Substitute(),)},
    # a meshkit check outermost with nothing to check for these methods (a rate limit
    # on another method only)
    "exempt+substitute": {**BARE, "interceptors": (Substitute(),),
                          "rate_limit": RateLimitOptions(
                              rules={"/t.Other/Limited": "10/second"})},
    # the request gate alone (default ServerLimits) in front of the user's interceptor;
    # "health" asks for the health service's Watch, which the gate gives no slot
    "gate+substitute": {**BARE, "limits": meshkit.ServerLimits(),
                        "interceptors": (Substitute(),)},
}


async def main():
    reg = LocalRegistry(LocalOptions(path=Path(tempfile.mkdtemp()) / "reg", ttl_s=5.0))

    def add(_s, server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Sync", handlers),))

    srv = meshkit.MeshServer("late", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        insecure=True, drain_delay_s=0.0, grace_s=0.5, admin=None, handler_threads=2,
        **CONFIGS[config]))
    await srv.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        if what in ("stream", "health"):
            call = ch.unary_stream("/grpc.health.v1.Health/Watch" if what == "health"
                                   else "/t.Sync/Watch")(b"", timeout=10)
            assert await call.read() == b"first"
            call.cancel()
        elif what == "leaked":
            assert await ch.unary_unary("/t.Sync/Leaks")(b"", timeout=5) == b"leaked"
        else:
            # (0.5 s: a 0.2 s deadline passed on a loaded box before grpc.aio ran the
            # handler at all, which then never set done)
            try:
                await ch.unary_unary("/t.Sync/Late")(b"", timeout=0.5)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
            finally:
                left.set()
        assert await asyncio.to_thread(done.wait, 5)
        await asyncio.sleep(0.3)
        print(got[0], flush=True)
        print(await ch.unary_unary("/t.Sync/Quick")(b"", timeout=5), flush=True)
    await srv.drain()
    await reg.close()
    print("exited", flush=True)


asyncio.run(main())
'''


_LATE_CASES = [
    *(pytest.param(what, "defaults", id=what) for what in (
        "peer", "auth_context", "peer_identities", "peer_identity_key", "stream", "leaked")),
    *(pytest.param(what, "bare", id=f"bare-{what}") for what in ("peer", "stream", "leaked")),
    *(pytest.param(what, "bare+substitute", id=f"bare+substitute-{what}")
      for what in ("peer", "auth_context", "stream", "leaked")),
    *(pytest.param(what, "exempt+substitute", id=f"exempt+substitute-{what}")
      for what in ("peer", "stream", "leaked")),
    *(pytest.param(what, "gate+substitute", id=f"gate+substitute-{what}")
      for what in ("peer", "stream", "health")),
]


class _LateRuns:
    """The server processes of the late-context cases, each case its own process, run a
    few at a time ahead of the test that judges it: a case is mostly waiting (its slow
    handler, the caller's deadline, the check that the server is still alive), so the
    next cases' processes start while one test waits for its own."""

    AHEAD = 3  # processes running at once, the judged case's included

    def __init__(self, cases: list[tuple[str, str]]) -> None:
        self.cases = cases
        self.procs: dict[tuple[str, str], subprocess.Popen[str]] = {}

    def _start(self, case: tuple[str, str]) -> None:
        if case not in self.procs:
            self.procs[case] = subprocess.Popen(
                [sys.executable, "-c", _LATE_CONTEXT_SCRIPT, *case], cwd=_ROOT,
                env={**os.environ, "PYTHONPATH": str(_ROOT)},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, what: str, config: str) -> subprocess.CompletedProcess[str]:
        case = (what, config)
        self._start(case)
        if case in self.cases:
            i = self.cases.index(case)
            for ahead in self.cases[i + 1:i + self.AHEAD]:
                self._start(ahead)
        proc = self.procs[case]
        out, err = proc.communicate(timeout=45)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def late_runs(request: pytest.FixtureRequest) -> Iterator[_LateRuns]:
    """The late-context cases this session runs, in the order it runs them."""
    name = "test_a_sync_handler_asking_its_context_after_the_caller_left_does_not_crash_the_server"
    cases = [(item.callspec.params["what"], item.callspec.params["config"])
             for item in request.session.items
             if getattr(item, "originalname", None) == name
             and item.module is request.module]
    runs = _LateRuns(cases)
    yield runs
    runs.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("what", "config"), _LATE_CASES)
def test_a_sync_handler_asking_its_context_after_the_caller_left_does_not_crash_the_server(
        late_runs: _LateRuns, what: str, config: str) -> None:
    """A plain-function handler that asks its context for the caller's address or
    identity (``peer()``, ``auth_context()``, ``peer_identities()``,
    ``peer_identity_key()``: logging who called, at the end of a slow call) after its
    caller's deadline passed, or a response generator whose ``finally`` does so when it
    is closed after a client cancel, killed the whole server process with SIGSEGV:
    grpc.aio releases the core call as soon as the call's task ends
    (``_schedule_rpc_coro``: ``grpc_call_unref``, ``call = NULL``) and the handler's
    thread, which outlives the task, then read the freed call. Now the synchronous
    context keeps those answers when the call ends while its handler still runs (read
    on the loop, the call still alive), and answers a context used after its handler
    returned (handed to a thread of the application's) with ``RuntimeError``.

    Whatever the server's configuration: with meshkit's per-call chain off (``bare``:
    no telemetry, deadline check, unhandled-exception answer, request gate or call
    slots) the handlers it looks up are still wrapped; but a plain handler that a
    user's interceptor, run by grpc.aio per call, returned in their place
    (``bare+substitute``), or returned under a meshkit check with nothing to check for
    the method (``exempt+substitute``: a rate limit on another method), was left to
    grpc.aio's own synchronous context, and crashed the server so; and so was, under the
    request gate alone (``gate+substitute-health``), a plain stand-in for the health
    service's ``Watch``, which the gate handed on as it was (no call slot for it)."""
    proc = late_runs.result(what, config)
    assert proc.returncode == 0, (
        f"the server process died (exit {proc.returncode}) after a sync handler asked its "
        f"context once its caller had left; stdout: {proc.stdout[-500:]!r} "
        f"stderr tail: {proc.stderr[-800:]!r}")
    got, *rest = proc.stdout.split("\n", 1)[0], *proc.stdout.split("\n")[1:]
    assert [line for line in rest if line] == ["b'alive'", "exited"], proc.stdout
    if what in ("stream", "health"):
        assert got.startswith("'ipv4:127.0.0.1:"), got  # kept from the live call
    elif what == "peer":
        # kept as the call ended: grpc core answers "" once the deadline passed (as an
        # async handler's context then does)
        assert got.startswith("'"), got
    elif what == "auth_context":
        assert got.startswith("{"), got
    elif what == "leaked":
        assert got.startswith("RuntimeError: ") and "ended" in got, got
    else:  # no TLS: no identities
        assert got == "None", got


async def test_a_cancelled_response_stream_blocked_in_its_next_holds_one_thread_not_two(
        registry: LocalRegistry) -> None:
    """A plain response generator waiting for its next message (a watch stream waiting
    for the next event) whose caller cancels keeps its thread until that ``next``
    returns, as on grpc.aio and a synchronous ``grpc.server``. Its close was scheduled
    on a *second* pool thread, which blocked on the generator's lock for up to 10 s
    waiting for the first: one cancelled stream held both threads of a server with
    ``handler_threads=2``, whose next unary call then missed its deadline. The
    generator is now closed on its own thread once that ``next`` returned."""
    event = threading.Event()
    closed = threading.Event()

    def watch(request: bytes, context: Any) -> Iterator[bytes]:
        try:
            yield b"first"
            event.wait(4)  # waiting for the next event
            yield b"second"
        finally:
            closed.set()

    def unary(request: bytes, context: Any) -> bytes:
        return b"answered"

    srv = await _serve_sync(registry, {"Watch": grpc.unary_stream_rpc_method_handler(watch),
                                       "Unary": grpc.unary_unary_rpc_method_handler(unary)},
                            handler_threads=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = ch.unary_stream(_synch("Watch"))(b"", timeout=10)
            assert await call.read() == b"first"
            await asyncio.sleep(0.2)  # its next step is under way, blocked on the event
            call.cancel()
            await asyncio.sleep(0.3)  # the close is scheduled
            t0 = time.monotonic()
            try:
                got: Any = await ch.unary_unary(_synch("Unary"))(b"", timeout=2.0)
            except grpc.aio.AioRpcError as e:
                got = e.code()
            took = time.monotonic() - t0
            assert got == b"answered", (
                f"a unary call on a server with handler_threads=2 got {got} after "
                f"{took:.2f} s: the one cancelled stream held both handler threads")
            assert not closed.is_set()  # closed once its next returns
    finally:
        event.set()
        assert await asyncio.to_thread(closed.wait, 5)
        await srv.drain()


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("read_requests", [True, False])
async def test_with_a_thread_per_call_slot_an_admitted_call_does_not_wait_for_a_thread(
        registry: LocalRegistry, kind: str, read_requests: bool) -> None:
    """``ServeOptions.handler_threads``: "give the call slots' count for a thread per
    admitted call". With ``handler_threads == max_concurrent_rpcs == 2``, two calls whose
    callers gave up (0.5 s deadline) while their handlers still ran (a slow database)
    gave their call slots back at once but kept both threads: a third call was admitted
    and waited, never running, for a thread until its deadline (``DEADLINE_EXCEEDED``
    after the whole timeout, an endpoint failure for its caller), where a synchronous
    ``grpc.server(ThreadPoolExecutor(2), maximum_concurrent_rpcs=2)``, which holds the
    slot until the handler returns, answers ``RESOURCE_EXHAUSTED`` at once. Now a
    plain-function handler's call holds its slot until its thread is free (unary and
    response streams; the request gate's and, with ``read_requests=False``, the call
    slots' count), and gives it back then."""
    release = threading.Event()
    ran: list[bytes] = []

    def handler(request: bytes, context: Any) -> bytes:
        ran.append(request)
        if request == b"slow":
            release.wait(3)
        return b"done"

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        ran.append(request)
        yield b"first"
        if request == b"slow":
            release.wait(3)
        yield b"done"

    srv = await _serve_sync(
        registry, {"Call": grpc.unary_unary_rpc_method_handler(handler),
                   "Stream": grpc.unary_stream_rpc_method_handler(stream)},
        handler_threads=2,
        limits=meshkit.ServerLimits(max_concurrent_rpcs=2, read_requests=read_requests))
    counter: Any = srv.gate if srv.gate is not None else srv.call_slots
    slots = counter.calls

    async def call(request: bytes, deadline_s: float) -> Any:
        if kind == "unary":
            return await ch.unary_unary(_synch("Call"))(request, timeout=deadline_s)
        return [m async for m in ch.unary_stream(_synch("Stream"))(request,
                                                                    timeout=deadline_s)]

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            early = await asyncio.gather(*(call(b"slow", 0.5) for _ in range(2)),
                                         return_exceptions=True)
            assert all(isinstance(e, grpc.aio.AioRpcError)
                       and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED for e in early), early
            await asyncio.sleep(0.2)
            assert ran == [b"slow", b"slow"]  # both handlers still hold their threads
            assert slots() == 2
            t0 = time.monotonic()
            try:
                got: Any = await call(b"quick", 1.5)
            except grpc.aio.AioRpcError as e:
                got = e.code()
            took = time.monotonic() - t0
            assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 1.0, (
                f"an admitted call on a server with a thread per call slot got {got} after "
                f"{took:.2f} s (ran: {ran}): it waited for a thread held by a handler "
                "whose call slot had been given back")
            release.set()
            await until(lambda: slots() == 0, timeout_s=5)
            expected = b"done" if kind == "unary" else [b"first", b"done"]
            assert await call(b"quick", 5) == expected  # the slots were given back
    finally:
        release.set()
        await srv.drain()


async def test_a_response_stream_whose_caller_left_before_it_got_a_thread_never_runs(
        registry: LocalRegistry) -> None:
    """A plain response generator whose call ends (its caller's deadline) while its job
    still waits for one of the server's threads never runs, as a unary call's handler
    queued so, and gives its call slot back at once: its job is cancelled, not left to
    run its first step once a thread frees."""
    release = threading.Event()
    ran: list[str] = []

    def block(request: bytes, context: Any) -> bytes:
        ran.append("block")
        release.wait(5)
        return b"done"

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        ran.append("stream")
        yield b"first"

    srv = await _serve_sync(registry, {"Block": grpc.unary_unary_rpc_method_handler(block),
                                       "Stream": grpc.unary_stream_rpc_method_handler(stream)},
                            handler_threads=1)
    assert srv.gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            blocked = asyncio.ensure_future(ch.unary_unary(_synch("Block"))(b"", timeout=8))
            await until(lambda: ran == ["block"], timeout_s=5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in ch.unary_stream(_synch("Stream"))(b"", timeout=0.5):
                    pass
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.2)
            assert srv.gate.calls() == 1  # the blocked call's slot only
            release.set()
            assert await blocked == b"done"
            await asyncio.sleep(0.3)
            assert ran == ["block"]
            assert [m async for m in ch.unary_stream(_synch("Stream"))(b"", timeout=5)] \
                == [b"first"]
    finally:
        release.set()
        await srv.drain()


async def test_a_request_stream_whose_caller_left_counts_until_its_thread_is_free(
        registry: LocalRegistry) -> None:
    """A plain-function request-streaming handler still running after its caller left
    (deadline) holds its call slot (the request gate's count: a plain request stream
    takes a slot, not one of the request streams' places) until its thread is free,
    then no more."""
    release = threading.Event()
    started = threading.Event()

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        first = next(requests)
        started.set()
        release.wait(3)
        return first

    srv = await _serve_sync(registry, {
        "Upload": grpc.stream_unary_rpc_method_handler(upload)}, handler_threads=2)
    assert srv.gate is not None

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(10)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.stream_unary(_synch("Upload"))(requests(), timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert started.is_set()
            await asyncio.sleep(0.2)
            assert srv.gate.calls() == 1  # its handler still holds its thread
            assert srv.gate.streams == 0
            release.set()
            await until(lambda: srv.gate is not None and srv.gate.calls() == 0, timeout_s=5)
    finally:
        release.set()
        await srv.drain()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("first", ["upload", "upload-left", "unary"])
@pytest.mark.parametrize("read_requests", [True, False])
async def test_with_a_thread_per_call_slot_a_plain_request_stream_holds_a_slot(
        registry: LocalRegistry, first: str, read_requests: bool) -> None:
    """README, ``ServeOptions.handler_threads``: "with ``handler_threads`` equal to
    ``max_concurrent_rpcs`` an admitted call never waits for a thread: one over the
    slots is refused ``RESOURCE_EXHAUSTED`` at once". Under the request gate (the
    default ``read_requests=True``) a request-streaming call took no call slot (it was
    counted with the open request streams, capped at the slots + 8) while a plain
    (``def``) request-streaming handler held a handler thread for as long as it ran. So
    with ``handler_threads=1, max_concurrent_rpcs=1``, a plain unary call beside one
    plain upload (its caller still sending, or gone while its handler ran) was admitted
    and waited for the thread until its deadline (``DEADLINE_EXCEEDED`` after 1.5 s),
    and a plain upload beside a plain unary call holding the thread did the same. A
    plain request-stream handler's call now takes a call slot until its thread is done
    with it, so either is refused at once. (``read_requests=False``, where
    :class:`~meshkit._limits.CallSlots` counts all four kinds, was right: kept so.)"""
    release = threading.Event()
    running: list[str] = []

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        for _ in requests:
            running.append("upload")
            release.wait(5)
        return b"uploaded"

    def plain(request: bytes, context: Any) -> bytes:
        running.append("plain")
        if request == b"hold":
            release.wait(5)
        return b"plain"

    srv = await _serve_sync(
        registry, {"Upload": grpc.stream_unary_rpc_method_handler(upload),
                   "Plain": grpc.unary_unary_rpc_method_handler(plain)},
        handler_threads=1,
        limits=meshkit.ServerLimits(max_concurrent_rpcs=1, read_requests=read_requests))
    counter: Any = srv.gate if srv.gate is not None else srv.call_slots
    held: Any = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            if first == "unary":
                held = asyncio.ensure_future(ch.unary_unary(_synch("Plain"))(b"hold",
                                                                             timeout=10))
                await until(lambda: running == ["plain"], timeout_s=5)
            else:
                held = ch.stream_unary(_synch("Upload"))(timeout=10)
                await held.write(b"part")
                await until(lambda: running == ["upload"], timeout_s=5)
                if first == "upload-left":
                    held.cancel()
                    await asyncio.sleep(0.3)  # the call ended; its handler still runs
            t0 = time.monotonic()
            try:
                if first == "unary":
                    # no message written: a refusal arriving while one is in flight can
                    # end the call grpc.aio's own client-side INTERNAL "Internal error
                    # from Core" (a write racing the status); admitted, it would still
                    # wait for the thread until its deadline
                    got: Any = await ch.stream_unary(_synch("Upload"))(timeout=1.5)
                else:
                    got = await ch.unary_unary(_synch("Plain"))(b"", timeout=1.5)
            except grpc.aio.AioRpcError as e:
                got = e.code()
            took = time.monotonic() - t0
            assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 1.0, (
                f"beside a plain {first} holding the only handler thread, an admitted call "
                f"got {got} after {took:.2f} s (handler_threads == max_concurrent_rpcs "
                "== 1): it waited for the thread instead of being refused at once")
            release.set()
            if first == "upload":
                await held.done_writing()
                assert await held == b"uploaded"
            elif first == "unary":
                assert await held == b"plain"
            await until(lambda: counter.calls() == 0, timeout_s=5,
                        what="the held call's slot given back once its thread was done")
            assert await ch.unary_unary(_synch("Plain"))(b"", timeout=5) == b"plain"
            assert await ch.stream_unary(_synch("Upload"))(iter([b"y"]), timeout=5) \
                == b"uploaded"
    finally:
        release.set()
        if held is not None and first != "upload-left":
            held.cancel()
        await srv.drain()


class _MessageCounter:
    """A reporter that asks for its calls' stream messages to be counted (``messages``),
    as telemetry's does."""

    def __init__(self) -> None:
        self.messages = Counts()

    def start(self, context: Any) -> None:
        return None

    def finish(self, state: Any, context: Any, exc: BaseException | None) -> None:
        return None


@pytest.mark.parametrize("kind", ["ClientStream", "Bidi"])
def test_a_request_stream_counted_for_a_reporter_runs_in_a_thread_only_when_its_handler_does(
        kind: str) -> None:
    """The server's wrap marks its behaviour as running in a thread
    (:func:`~meshkit._handlers.runs_in_a_thread`, which the request gate and the call
    slots ask per method) when the handler's own behaviour does. It asked after wrapping
    the behaviour in the request counter a reporter with ``messages`` gets (telemetry's,
    on by default), a plain function returning the async behaviour's result: every
    request-streaming method under telemetry counted as a plain-function handler's,
    async ones too (a request stream of such a handler takes a call slot: an open async
    upload would have held one)."""
    from meshkit._handlers import runs_in_a_thread
    from tests.support.echo import method_handlers

    own = method_handlers("e1")[kind]
    assert not runs_in_a_thread(wrap_handler(own, reporter=_MessageCounter()))

    def plain(requests: Iterator[bytes], context: Any) -> Any:
        return b"x" if kind == "ClientStream" else iter([b"x"])

    factory = (grpc.stream_unary_rpc_method_handler if kind == "ClientStream"
               else grpc.stream_stream_rpc_method_handler)
    assert runs_in_a_thread(wrap_handler(factory(plain), reporter=_MessageCounter()))


async def test_a_sync_response_generator_runs_on_one_thread_for_its_whole_stream(
        registry: LocalRegistry) -> None:
    """A plain response generator streaming rows from a ``sqlite3`` cursor (or using any
    thread-bound resource: ``threading.local`` sessions, a thread-affine client) runs on
    one thread on grpc.aio and on a synchronous ``grpc.server``. meshkit advanced it
    with one executor job per message, so when the thread that ran one step was taken
    by another call while the stream waited for its reader (HTTP/2 flow control), the
    next step ran on another thread: sqlite3 raised ``ProgrammingError`` mid-stream and
    the caller got ``UNKNOWN`` after some rows. Now the generator runs on one thread
    for its whole stream."""
    steps: list[int] = []
    release = threading.Event()
    blocking = threading.Event()

    def rows(request: bytes, context: Any) -> Iterator[bytes]:
        db = sqlite3.connect(":memory:")
        cursor = db.execute("with recursive c(x) as (select 1 union all select x + 1 "
                            "from c where x < 16) select x from c")
        for (x,) in cursor:
            steps.append(threading.get_ident())
            yield str(x).encode() * (1 << 18)  # 256 KiB: the stream waits for its reader

    def block(request: bytes, context: Any) -> bytes:
        blocking.set()
        release.wait(5)
        return b"done"

    srv = await _serve_sync(registry, {"Rows": grpc.unary_stream_rpc_method_handler(rows),
                                       "Block": grpc.unary_unary_rpc_method_handler(block)},
                            handler_threads=2)
    blocker: asyncio.Future[Any] | None = None
    try:
        # a reader whose flow-control window stays small (no BDP probing): the stream
        # waits for it after a message or two
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", options=(
                ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536))) as ch:
            got = 0
            failure: grpc.aio.AioRpcError | None = None
            try:
                async for _ in ch.unary_stream(_synch("Rows"))(b"", timeout=10):
                    got += 1
                    if blocker is None:
                        # the generator's thread is idle between steps: another call
                        # would take it while the stream waits for this reader
                        await asyncio.sleep(0.3)
                        blocker = asyncio.ensure_future(
                            ch.unary_unary(_synch("Block"))(b"", timeout=8))
                        assert await asyncio.to_thread(blocking.wait, 5)
                        await asyncio.sleep(0.1)
            except grpc.aio.AioRpcError as e:
                failure = e
            release.set()
            if blocker is not None:
                assert await blocker == b"done"
            assert failure is None and got == 16, (
                f"the row stream failed after {got} rows: "
                f"{failure.code() if failure else None} {failure.details() if failure else ''}"
                f" (steps ran on {len(set(steps))} threads)")
            assert len(set(steps)) == 1, f"the generator's steps ran on {len(set(steps))} threads"
    finally:
        release.set()
        if blocker is not None:
            await asyncio.gather(blocker, return_exceptions=True)
        await srv.drain()


class _ExitingIterator:
    """An iterator whose ``__next__`` raises ``GeneratorExit`` (a wrapped generator's
    close leaking through, a library iterator that re-raises it)."""

    def __iter__(self) -> _ExitingIterator:
        return self

    def __next__(self) -> bytes:
        raise GeneratorExit()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", ["generator", "iterator"])
async def test_a_response_stream_raising_generator_exit_gives_its_call_slot_back(
        registry: LocalRegistry, shape: str) -> None:
    """A plain response stream whose step raises ``GeneratorExit`` (a generator body, or
    an iterator returned by a plain function): the pump handed it as it was to the loop,
    where, raised out of the async generators serving the stream, it left them "already
    running" for good: the call never ended (the caller waited out its deadline) and the
    request gate's call slot was never given back (one ``max_concurrent_rpcs`` slot lost
    per such call until restart). It is now raised as ``EscapedGeneratorExit`` (as an
    escaped ``StopIteration``): the call ends ``UNKNOWN`` at once and the slot comes back
    (found by the review of b739f14)."""

    def generator(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        raise GeneratorExit()

    def plain(request: bytes, context: Any) -> Any:
        return _ExitingIterator()

    srv = await _serve_sync(
        registry, {"Exit": grpc.unary_stream_rpc_method_handler(
            generator if shape == "generator" else plain)},
        handler_threads=2, limits=meshkit.ServerLimits(max_concurrent_rpcs=4))
    assert srv.gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in ch.unary_stream(_synch("Exit"))(b"", timeout=10.0):
                    pass
            assert info.value.code() is grpc.StatusCode.UNKNOWN, info.value
            assert time.monotonic() - t0 < 5.0  # answered, not its deadline waited out
            with contextlib.suppress(AssertionError):
                await until(lambda: srv.gate is not None and srv.gate.calls() == 0,
                            timeout_s=3)
            assert srv.gate.calls() == 0, "the call's slot is still held: leaked"
    finally:
        await srv.drain()


class _Substitute(grpc.aio.ServerInterceptor):
    """A user's interceptor that serves the methods of ``handlers`` (by method name) with
    those handlers of its own instead of the server's (a canned answer, a stand-in); run
    by grpc.aio per call, after meshkit looked the server's handler up."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers

    async def intercept_service(self, continuation: Any, details: Any) -> Handler | None:
        own = self.handlers.get(details.method.rpartition("/")[2])
        return own if own is not None else await continuation(details)


# a MeshServer with nothing of meshkit's per-call chain (no telemetry, deadline check,
# unhandled-exception answer, request gate or call slots)
_BARE: dict[str, Any] = {
    "telemetry": None, "deadline": None, "expose_exception_text": True,
    "limits": meshkit.ServerLimits(read_requests=False, max_concurrent_rpcs=None)}


@pytest.mark.parametrize("config", ["bare", "bare+substitute", "exempt+substitute"])
async def test_plain_handlers_get_the_servers_threads_and_meshkits_context_whatever_the_chain(
        registry: LocalRegistry, config: str) -> None:
    """Plain-function handlers of every call kind run in the server's own threads
    (``ServeOptions.handler_threads``, never the loop's default executor) with meshkit's
    synchronous context (:class:`meshkit._handlers._SyncContext`, safe to ask after the
    call ended: see the subprocess test above), a response generator on one thread for
    its whole stream, whatever wraps the server's calls: with meshkit's per-call chain
    off (``bare``), and for a plain handler a user's interceptor returns in place of the
    server's (``bare+substitute``; ``exempt+substitute``: under a meshkit check with
    nothing to check for the method). The substituted ones ran under grpc.aio's own
    ``_SyncServicerContext`` (whose late ``peer()`` crashes the process), a response
    generator one grpc.aio executor job per message."""
    seen: list[tuple[str, str, bool]] = []

    def note(kind: str, context: Any) -> None:
        seen.append((kind, threading.current_thread().name, isinstance(context, _SyncContext)))

    def unary(request: bytes, context: Any) -> bytes:
        note("unary", context)
        return request

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        for item in (b"1", b"2", b"3"):
            note("server_stream", context)
            yield item

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        note("client_stream", context)
        return b"".join(requests)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for r in requests:
            note("bidi", context)
            yield r.upper()

    handlers: dict[str, Handler] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }

    async def refuse(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INTERNAL, "the server's own handler ran")
        raise AssertionError("unreachable")

    options = dict(_BARE)
    if config == "bare":
        served = handlers
    else:  # the server's own handlers are never called: the interceptor's are
        served = {name: grpc.unary_unary_rpc_method_handler(refuse) for name in handlers}
        options["interceptors"] = (_Substitute(handlers),)
        if config == "exempt+substitute":
            options["rate_limit"] = RateLimitOptions(rules={"/t.Other/Limited": "10/second"})
    srv = await _serve_sync(registry, served, handler_threads=2, **options)

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(0.05)  # the next message after the handler waited for it
        yield b"b"

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await ch.unary_unary(_synch("Unary"))(b"x", timeout=5) == b"x"
            assert [r async for r in ch.unary_stream(_synch("ServerStream"))(
                b"", timeout=5)] == [b"1", b"2", b"3"]
            assert await ch.stream_unary(_synch("ClientStream"))(
                requests(), timeout=5) == b"ab"
            assert [r async for r in ch.stream_stream(_synch("Bidi"))(
                requests(), timeout=5)] == [b"A", b"B"]
    finally:
        await srv.drain()
    assert [k for k, _, _ in seen] == ["unary", *["server_stream"] * 3, "client_stream",
                                       "bidi", "bidi"], seen
    assert all(name.startswith("meshkit-handler-synch") for _, name, _ in seen), seen
    assert all(ours for _, _, ours in seen), (
        f"a plain handler ran with grpc.aio's own synchronous context: {seen}")
    for kind in ("server_stream", "bidi"):  # each stream on one thread
        assert len({name for k, name, _ in seen if k == kind}) == 1, seen


_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# the request gate alone of meshkit's per-call chain (default ServerLimits reads requests)
_GATE_ONLY: dict[str, Any] = {**_BARE, "limits": meshkit.ServerLimits()}


class _ByFullName(grpc.aio.ServerInterceptor):
    """A user's interceptor serving some methods (by full method name) with handlers of
    its own."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers

    async def intercept_service(self, continuation: Any, details: Any) -> Handler | None:
        own = self.handlers.get(details.method)
        return own if own is not None else await continuation(details)


@pytest.mark.timeout(30)
async def test_a_plain_health_watch_a_users_interceptor_returns_under_the_gate_alone_is_meshkits(
        registry: LocalRegistry) -> None:
    """With the request gate the only piece of meshkit's per-call chain, a plain stand-in
    for the health service's ``Watch`` that a user's interceptor returns runs as any other
    plain handler it returns: in the server's threads with meshkit's synchronous context
    (safe to ask ``peer()`` after the call ended; see the subprocess test's
    ``gate+substitute-health``). The gate handed the ``Watch`` on as it was (it takes no
    slot for it), and the chain, led by the gate, got no off-loop wrap: grpc.aio ran it
    with its own ``_SyncServicerContext``. It still takes no call slot."""
    from grpc_health.v1 import health_pb2

    seen: list[tuple[str, str]] = []
    slots: list[int] = []
    srv: meshkit.MeshServer | None = None

    def watch(request: Any, context: Any) -> Iterator[Any]:
        seen.append((type(context).__name__, threading.current_thread().name))
        assert srv is not None and srv.gate is not None
        slots.append(srv.gate.calls())
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    handler = grpc.unary_stream_rpc_method_handler(
        watch, request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString)
    srv = await _serve_sync(registry, {}, handler_threads=2, **_GATE_ONLY,
                            interceptors=(_ByFullName({_HEALTH_WATCH: handler}),))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            got = [r async for r in ch.unary_stream(
                _HEALTH_WATCH,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString)(
                    health_pb2.HealthCheckRequest(service=""), timeout=5)]
            assert len(got) == 1
    finally:
        await srv.drain()
    assert len(seen) == 1, seen
    assert seen[0][0] == _SyncContext.__name__, (
        f"a plain Watch a user's interceptor returned ran with grpc.aio's own context: {seen}")
    assert seen[0][1].startswith("meshkit-handler-synch"), seen
    assert slots == [0], f"the Watch took a call slot: {slots}"


def test_the_gate_gives_a_plain_watch_meshkits_off_loop_run_and_no_slot() -> None:
    """:meth:`RequestGate.resolve` of the health ``Watch``: an async handler, and a plain
    one run off the loop by meshkit (an async behaviour; once per method), read their
    request under ``first_message_timeout_s`` (tests/test_hunt38_c7_gate_idle_health_watch.py)
    without a call slot (the ``Watch`` holds no slot); without that timeout the async
    one is left as it is."""
    gate = RequestGate(meshkit.ServerLimits())

    async def async_watch(request: Any, context: Any) -> AsyncIterator[bytes]:
        yield b""

    def plain_watch(request: Any, context: Any) -> Iterator[bytes]:
        yield b""

    async_handler = grpc.unary_stream_rpc_method_handler(async_watch)
    resolved_async = gate.resolve(_HEALTH_WATCH, async_handler)
    assert resolved_async is not None and resolved_async is not async_handler
    assert resolved_async.request_streaming and resolved_async.response_streaming
    no_timeout = RequestGate(meshkit.ServerLimits(first_message_timeout_s=None))
    assert no_timeout.resolve(_HEALTH_WATCH, async_handler) is async_handler
    plain_handler = grpc.unary_stream_rpc_method_handler(plain_watch)
    resolved = gate.resolve(_HEALTH_WATCH, plain_handler)
    assert resolved is not None and resolved is not plain_handler
    assert resolved.request_streaming and resolved.response_streaming
    assert inspect.isasyncgenfunction(resolved.stream_stream)
    assert gate.resolve(_HEALTH_WATCH, plain_handler) is resolved  # cached
    assert gate.resolve(_HEALTH_WATCH, None) is None


def _plain(request: bytes, context: Any) -> bytes:
    return request


def test_a_plain_handler_with_nothing_to_wrap_is_taken_off_the_loop_only_under_a_mesh_server(
        ) -> None:
    """``wrap_handler`` with nothing to wrap takes a plain handler off the loop (meshkit's
    synchronous context, the server's threads) only where :data:`HANDLER_EXECUTOR` is set,
    as in a :class:`meshkit.MeshServer`'s calls, whose grpc.aio ``migration_thread_pool``
    is that executor. Elsewhere (meshkit's interceptors on a grpc.aio server of your own)
    it returns the handler as it is, and grpc.aio runs it in the server's
    ``migration_thread_pool``: off-loop it ran in the loop's default executor instead
    (see tests/resilience/test_ratelimit.py)."""
    handler = grpc.unary_unary_rpc_method_handler(_plain)
    assert wrap_handler(handler) is handler
    pool = ThreadPoolExecutor(1)
    try:
        ctx = contextvars.copy_context()
        ctx.run(HANDLER_EXECUTOR.set, pool)
        wrapped = ctx.run(wrap_handler, handler)
    finally:
        pool.shutdown()
    assert wrapped is not handler and inspect.iscoroutinefunction(wrapped.unary_unary)


class _AsyncCallable:
    """A handler object whose ``__call__`` is a coroutine function (a class-based handler)."""

    async def __call__(self, request: bytes, context: Any) -> bytes:
        return b"acall|" + request


class _AsyncGenCallable:
    """A response-streaming handler object whose ``__call__`` is an async generator
    function."""

    async def __call__(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"agen|" + request
        yield b"agen|end"


class _WritingCallable:
    """A response-streaming handler object whose ``__call__`` is a coroutine function that
    answers with ``context.write``."""

    async def __call__(self, request: bytes, context: Any) -> None:
        await context.write(b"wrote|" + request)


async def _own(request: bytes, context: Any) -> bytes:
    return b"own|" + request


@pytest.mark.timeout(30)
@pytest.mark.parametrize("config", ["bare", "exempt", "gate", "own-server"])
async def test_an_async_callable_handler_a_users_interceptor_returns_is_awaited(
        registry: LocalRegistry, config: str) -> None:
    """A handler whose behaviour is an object with an ``async def __call__`` (or an async
    generator ``__call__``) that a user's interceptor returns is awaited (iterated) on the
    loop: with nothing of meshkit's per-call chain (``bare``), under a meshkit check with
    nothing to check for the method (``exempt``), under the request gate alone
    (``gate``), and under such a check on a grpc.aio server of your own
    (``own-server``). :func:`off_loop_handler` returned it as it was (an object counts as
    async for meshkit's wraps, which await what it returns), but grpc.aio's test is
    ``inspect.iscoroutinefunction`` of the object itself: it ran it in a thread and
    failed ``UNKNOWN`` "Expected bytes, got coroutine"."""
    from meshkit.resilience import RateLimitInterceptor

    own = {
        "/t.Sync/ACall": grpc.unary_unary_rpc_method_handler(_AsyncCallable()),
        "/t.Sync/AGen": grpc.unary_stream_rpc_method_handler(_AsyncGenCallable()),
        "/t.Sync/AWrite": grpc.unary_stream_rpc_method_handler(_WritingCallable()),
    }
    exempt = RateLimitOptions(rules={"/t.Other/Limited": "10/second"})
    srv: meshkit.MeshServer | None = None
    server: grpc.aio.Server | None = None
    limiter: Any = None
    if config == "own-server":
        limiter = RateLimitInterceptor(exempt)
        server = grpc.aio.server(interceptors=(limiter, _ByFullName(own)))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            _SYNCH, {"Unary": grpc.unary_unary_rpc_method_handler(_own)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
    else:
        opts = dict(_GATE_ONLY if config == "gate" else _BARE)
        if config == "exempt":
            opts["rate_limit"] = exempt
        srv = await _serve_sync(registry, {"Unary": grpc.unary_unary_rpc_method_handler(_own)},
                                handler_threads=2, **opts,
                                interceptors=(_ByFullName(own),))
        port = srv.port
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary_unary(_synch("ACall"))(b"q", timeout=5) == b"acall|q"
            assert [r async for r in ch.unary_stream(_synch("AGen"))(b"q", timeout=5)] == [
                b"agen|q", b"agen|end"]
            assert [r async for r in ch.unary_stream(_synch("AWrite"))(b"q", timeout=5)] == [
                b"wrote|q"]
            assert await ch.unary_unary(_synch("Unary"))(b"q", timeout=5) == b"own|q"
    finally:
        if srv is not None:
            await srv.drain()
        if server is not None:
            await server.stop(None)
            await limiter.aclose()


def test_a_plain_handlers_request_read_after_its_loop_closed_leaves_no_unawaited_coroutine(
) -> None:
    """A plain request-stream handler still reading after the server's loop closed (a
    handler resuming once the server stopped) gets ``RuntimeError`` from the read, and no
    coroutine is left unawaited: the read's coroutine was made before
    ``run_coroutine_threadsafe`` found the loop closed, and asyncio warned ``coroutine
    '_anext' was never awaited`` at its collection."""
    from meshkit._handlers import _blocking_requests

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"

    loop = asyncio.new_event_loop()
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        it = _blocking_requests(requests(), loop)
        with pytest.raises(RuntimeError, match="closed"):
            next(it)
        del it
        gc.collect()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == [], unawaited


@pytest.mark.timeout(40)
@pytest.mark.parametrize("unary", ["async", "plain"])
async def test_header_only_plain_uploads_do_not_lock_unary_callers_out(
        registry: LocalRegistry, unary: str) -> None:
    """``ServerLimits.max_concurrent_rpcs``: a plain (``def``) request-streaming
    handler's call holds a call slot (773b7dd), and "at the cap a new call takes the slot
    of a call that has waited ``evict_waiting_after_s`` for its request";
    ``evict_waiting_after_s``: calls that send headers only cannot lock callers out. A
    plain upload's slot was never in the gate's wait bookkeeping (nothing evicted it, no
    first-message timeout ended it): two clients opening plain uploads and sending
    nothing held both slots, and every unary call, async or plain (threads free), was
    shed ``RESOURCE_EXHAUSTED`` "server busy". Now such an upload waits for its first
    message as a unary call does: evicted, its handler's read fails and its thread is
    given back (review of 773b7dd)."""
    started: list[str] = []
    ended: list[str] = []

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        started.append("upload")
        try:
            for _ in requests:
                pass
        finally:
            ended.append("upload")
        return b"uploaded"

    async def fast_async(request: bytes, context: Any) -> bytes:
        return b"fast"

    def fast_plain(request: bytes, context: Any) -> bytes:
        return b"fast"

    srv = await _serve_sync(
        registry, {"Upload": grpc.stream_unary_rpc_method_handler(upload),
                   "Fast": grpc.unary_unary_rpc_method_handler(
                       fast_async if unary == "async" else fast_plain)},
        handler_threads=4,
        # eviction after 0.5 s (default 1 s), the waits below 1.5 times that as before
        limits=meshkit.ServerLimits(max_concurrent_rpcs=2, evict_waiting_after_s=0.5))
    idle: list[Any] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            # two slowloris uploads: headers sent, no message ever
            idle = [ch.stream_unary(_synch("Upload"))(timeout=30) for _ in range(2)]
            await until(lambda: len(started) == 2, timeout_s=10,
                        what="both idle uploads' handlers running")
            await asyncio.sleep(0.75)  # > evict_waiting_after_s (0.5): evictable by now
            got: list[Any] = []
            for _ in range(2):
                try:
                    got.append(await ch.unary_unary(_synch("Fast"))(b"", timeout=5))
                except grpc.aio.AioRpcError as e:
                    got.append(e.code())
                await asyncio.sleep(0.3)
            assert got == [b"fast", b"fast"], (
                f"{unary} unary calls beside two header-only plain uploads that had waited "
                f"0.75 s (> evict_waiting_after_s) for their first message: {got}; their "
                "slots are never evicted, so they lock every unary caller out")
            # an evicted upload's handler saw its read fail and gave its thread back
            await until(lambda: len(ended) >= 1, timeout_s=10,
                        what="an evicted upload's handler returned")
            assert srv.gate is not None and srv.gate.evicted >= 1
            gone = [c for c in idle if c.done()]
            assert gone and await gone[0].code() == grpc.StatusCode.CANCELLED
            assert await gone[0].details() == "request did not arrive in time"
            for call in idle:
                call.cancel()
            await until(lambda: srv.gate is not None and srv.gate.calls() == 0, timeout_s=5,
                        what="the uploads' slots given back")
            # an upload that sends its messages is served as before, and is never evicted
            # once its first message came
            slow = ch.stream_unary(_synch("Upload"))(timeout=20)
            await slow.write(b"part")
            await asyncio.sleep(0.75)  # > evict_waiting_after_s
            for _ in range(2):
                assert await ch.unary_unary(_synch("Fast"))(b"", timeout=5) == b"fast"
            await slow.write(b"more")
            await slow.done_writing()
            assert await slow == b"uploaded"
    finally:
        for call in idle:
            call.cancel()
        await srv.drain()


@pytest.mark.timeout(40)
async def test_a_header_only_plain_upload_ends_after_first_message_timeout(
        registry: LocalRegistry) -> None:
    """A plain upload that sends no message is ended ``CANCELLED`` "request did not
    arrive in time" after ``first_message_timeout_s`` (no call needs its slot), its
    handler's thread given back; one that sent its first message in time is not."""
    ended: list[str] = []

    def upload(requests: Iterator[bytes], context: Any) -> bytes:
        try:
            return b"%d" % sum(1 for _ in requests)
        finally:
            ended.append("upload")

    srv = await _serve_sync(
        registry, {"Upload": grpc.stream_unary_rpc_method_handler(upload)},
        handler_threads=4,
        limits=meshkit.ServerLimits(max_concurrent_rpcs=4, first_message_timeout_s=1.0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            quiet = ch.stream_unary(_synch("Upload"))(timeout=20)
            talking = ch.stream_unary(_synch("Upload"))(timeout=20)
            await talking.write(b"x")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(quiet, 10)
            assert err.value.code() == grpc.StatusCode.CANCELLED
            assert err.value.details() == "request did not arrive in time"
            await until(lambda: ended == ["upload"], timeout_s=10,
                        what="the quiet upload's handler returned")
            await talking.write(b"y")
            await talking.done_writing()
            assert await talking == b"2"
            await until(lambda: srv.gate is not None and srv.gate.calls() == 0, timeout_s=5)
    finally:
        await srv.drain()


@pytest.mark.timeout(40)
async def test_a_plain_bidi_stream_answering_before_any_request_is_not_timed_out(
        registry: LocalRegistry) -> None:
    """A plain bidi handler waits for its first message in the gate's bookkeeping
    (``first_message_timeout_s``), but a response it sends ends that wait as a request
    does: a server-push stream whose client sends nothing for longer than the timeout is
    served to its end; one that sends and receives nothing is ended ``CANCELLED``."""
    def push(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for i in range(5):
            yield b"%d" % i
            time.sleep(0.2)  # 1 s in all: twice first_message_timeout_s

    def silent(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        yield from requests

    srv = await _serve_sync(
        registry, {"Push": grpc.stream_stream_rpc_method_handler(push),
                   "Silent": grpc.stream_stream_rpc_method_handler(silent)},
        handler_threads=4,
        limits=meshkit.ServerLimits(max_concurrent_rpcs=4, first_message_timeout_s=0.5))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            quiet = ch.stream_stream(_synch("Silent"))(timeout=20)
            pushed = ch.stream_stream(_synch("Push"))(timeout=20)
            got = [m async for m in pushed]  # the client sends nothing for 1 s
            assert got == [b"0", b"1", b"2", b"3", b"4"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(quiet.read(), 10)
            assert err.value.code() == grpc.StatusCode.CANCELLED
            await until(lambda: srv.gate is not None and srv.gate.calls() == 0, timeout_s=10)
    finally:
        await srv.drain()
