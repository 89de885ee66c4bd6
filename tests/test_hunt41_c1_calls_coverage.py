"""Behaviour of the call objects (``meshkit._calls``) in the cases the call and stream
tests left unexercised, as a user meets them: a stream's ``DEADLINE_EXCEEDED`` that ran
out a handler's propagated deadline (read, iterated, retried) answered so by the server,
and one under a timeout of its own told apart; ``debug_error_string()`` and
``details()`` of every kind of outcome; ``code()`` awaited while a unary call runs; a
stream-unary call's misuses and the writers that wait for their message to be taken
while the call ends; a bidi write cancelled while flow control holds it; a retried
stream committed at its headers whose read is cancelled; a drained stream's
``details()``; unary calls made on a thread without a running loop and on a loop in
debug mode. Real ``MeshServer``s on loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit._calls import own_deadline_of, propagated_deadline_of
from meshkit.discovery import Instance, LocalRegistry
from meshkit.errors import MeshRpcError
from meshkit.interceptors import ClientInterceptor
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.support.echo import raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

APP = "meshkit.test.C1Cov"
FRONT = "meshkit.test.C1Front"
RETRIED = RetryOptions(
    default=RetryPolicy(
        idempotent=True, max_attempts=3, backoff=Backoff(base_delay_s=0.001, max_delay_s=0.002)
    )
)
_DOWNSTREAM_DEADLINE = "deadline exceeded (in a call the handler made under it)"


def _m(name: str) -> str:
    return f"/{APP}/{name}"


class _Back:
    """The downstream service's handlers and what they saw."""

    def __init__(self) -> None:
        self.unary = 0
        self.cancelled: list[str] = []

    def add(self, _servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((self.handler(),))

    def handler(self) -> grpc.GenericRpcHandler:
        async def unary(request: bytes, context: Any) -> bytes:
            self.unary += 1
            await asyncio.sleep(int(request or b"0") / 1000)
            return b"echo|" + request

        async def fail(request: bytes, context: Any) -> bytes:
            await context.abort(grpc.StatusCode[request.decode()], "asked to fail")
            raise AssertionError("unreachable")

        async def collect(requests: AsyncIterator[bytes], context: Any) -> bytes:
            return b"+".join([r async for r in requests])

        async def one_then_wait(request: bytes, context: Any) -> AsyncIterator[bytes]:
            yield b"first"
            await asyncio.sleep(30)
            yield b"late"

        async def headers_then_wait(request: bytes, context: Any) -> AsyncIterator[bytes]:
            await context.send_initial_metadata((("x-stage", "headers"),))
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.append("HeadersThenWait")
                raise
            yield b"late"

        async def sink(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            try:
                await asyncio.sleep(30)  # reads nothing: flow control holds the writer
            except asyncio.CancelledError:
                self.cancelled.append("Sink")
                raise
            yield b"late"

        async def quiet(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            return
            yield b""  # (a generator: never reached)

        async def deny_now(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no grant")
            yield b""  # (a generator: never reached)

        async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
            for i in range(int(request)):
                yield str(i).encode()

        return grpc.method_handlers_generic_handler(
            APP,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Fail": grpc.unary_unary_rpc_method_handler(fail),
                "Collect": grpc.stream_unary_rpc_method_handler(collect),
                "OneThenWait": grpc.unary_stream_rpc_method_handler(one_then_wait),
                "HeadersThenWait": grpc.unary_stream_rpc_method_handler(headers_then_wait),
                "Sink": grpc.stream_stream_rpc_method_handler(sink),
                "Count": grpc.unary_stream_rpc_method_handler(count),
                "Quiet": grpc.stream_stream_rpc_method_handler(quiet),
                "DenyNow": grpc.stream_stream_rpc_method_handler(deny_now),
            },
        )


def _serve(name: str, registry: LocalRegistry, add: Any) -> meshkit.MeshServer:
    return meshkit.MeshServer(
        name,
        [(add, None)],
        registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, instance_id=f"{name}-1", drain_delay_s=0.0, grace_s=0.5
        ),
    )


@contextlib.asynccontextmanager
async def _back(
    registry: LocalRegistry, **dial: Any
) -> AsyncIterator[tuple[meshkit.MeshChannel, _Back]]:
    """The downstream server ``c1back`` and a channel to it (no retries unless given)."""
    back = _Back()
    srv = _serve("c1back", registry, back.add)
    await srv.start()
    dial.setdefault("retry", None)
    ch = meshkit.dial(
        "c1back", registry=registry, options=meshkit.DialOptions(insecure=True, **dial)
    )
    try:
        await asyncio.wait_for(ch.wait_for_endpoints(1), 10)
        yield ch, back
    finally:
        await ch.close()
        await srv.drain()


# -- a stream's DEADLINE_EXCEEDED under a handler's propagated deadline ---------------------


async def _downstream(down: meshkit.MeshChannel, how: str) -> bytes:
    """In a handler: open ``OneThenWait`` on ``down`` under the propagated deadline (or a
    timeout of its own, ``own``), read its first message, then wait for the next."""
    call = down.unary_stream(_m("OneThenWait"))(b"", timeout=0.3 if how == "own" else None)
    if how in ("iterate", "retried-iterate"):
        async for message in call:
            assert message == b"first"
    else:
        assert await call.read() == b"first"
        await call.read()
    raise AssertionError("unreachable: the server waits 30 s")


@pytest.mark.parametrize("how", ["read", "iterate", "retried-read", "retried-iterate"])
async def test_a_stream_run_out_the_propagated_deadline_is_answered_deadline_exceeded(
    registry: LocalRegistry, how: str
) -> None:
    """A handler's server stream (plain, or retried until its first message: then
    committed) that runs out the handler's propagated deadline (the caller's 2 s less the
    channel's 1 s margin) lets ``DEADLINE_EXCEEDED`` escape, read or iterated, after its
    first message: the error is marked as the propagated deadline's (the handled call's
    deadline, ``time.monotonic()`` seconds, about 1 s from the call), so the front server
    answers its caller ``DEADLINE_EXCEEDED`` (details naming no downstream), a margin
    before the caller's own timer, not ``UNKNOWN``."""
    retry = RETRIED if how.startswith("retried") else None
    async with _back(registry, retry=retry, deadline_margin_s=1.0) as (down, _):
        marks: list[Any] = []

        async def front(request: bytes, context: Any) -> bytes:
            try:
                return await _downstream(down, how)
            except grpc.aio.AioRpcError as exc:
                marks.append((exc.code(), propagated_deadline_of(exc), own_deadline_of(exc)))
                raise

        def add(_servicer: Any, server: Any) -> None:
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        FRONT, {"Call": grpc.unary_unary_rpc_method_handler(front)}
                    ),
                )
            )

        srv = _serve("c1front", registry, add)
        await srv.start()
        try:
            async with meshkit.dial(
                "c1front", registry=registry, options=meshkit.DialOptions(insecure=True, retry=None)
            ) as ch:
                await asyncio.wait_for(ch.wait_for_endpoints(1), 10)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(ch.unary_unary(f"/{FRONT}/Call")(b"", timeout=2.0), 10)
                took = loop.time() - t0
        finally:
            await srv.drain()
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, info.value
    assert info.value.details() == _DOWNSTREAM_DEADLINE
    assert len(marks) == 1, marks
    code, deadline, own = marks[0]
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(deadline, float) and not own
    assert took < 1.9, took  # the margin's answer, before the caller's own timer


async def test_a_stream_under_its_own_timeout_is_not_the_propagated_deadline(
    registry: LocalRegistry,
) -> None:
    """A handler's server stream under a timeout of its own (0.3 s, shorter than the
    propagated deadline) that runs it out: its ``DEADLINE_EXCEEDED`` is marked as the
    stream's own deadline, not the handled call's, so the front server answers the
    escaped error ``UNKNOWN`` (its caller's deadline did not run out)."""
    async with _back(registry, deadline_margin_s=1.0) as (down, _):
        marks: list[Any] = []

        async def front(request: bytes, context: Any) -> bytes:
            try:
                return await _downstream(down, "own")
            except grpc.aio.AioRpcError as exc:
                marks.append((exc.code(), propagated_deadline_of(exc), own_deadline_of(exc)))
                raise

        def add(_servicer: Any, server: Any) -> None:
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        FRONT, {"Call": grpc.unary_unary_rpc_method_handler(front)}
                    ),
                )
            )

        srv = _serve("c1front", registry, add)
        await srv.start()
        try:
            async with meshkit.dial(
                "c1front", registry=registry, options=meshkit.DialOptions(insecure=True, retry=None)
            ) as ch:
                await asyncio.wait_for(ch.wait_for_endpoints(1), 10)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(ch.unary_unary(f"/{FRONT}/Call")(b"", timeout=5.0), 10)
        finally:
            await srv.drain()
    assert info.value.code() is grpc.StatusCode.UNKNOWN, info.value
    assert marks == [(grpc.StatusCode.DEADLINE_EXCEEDED, None, True)]


# -- accessors ------------------------------------------------------------------------------


async def test_code_awaited_while_a_unary_call_runs_waits_for_its_end(
    registry: LocalRegistry,
) -> None:
    """``code()`` asked of a unary call still running (its server answers after 200 ms)
    starts it and waits for its end: ``OK``; the ``await`` then gives the response
    without sending the call again; ``details()`` and ``debug_error_string()`` are
    empty."""
    async with _back(registry) as (ch, back):
        call = ch.unary_unary(_m("Unary"))(b"200", timeout=10)
        assert await asyncio.wait_for(call.code(), 10) is grpc.StatusCode.OK
        assert call.done()
        assert await call == b"echo|200"
        assert await call.details() == ""
        assert await call.debug_error_string() == ""
        assert back.unary == 1


async def test_debug_error_string_of_a_failed_call_is_its_errors(
    registry: LocalRegistry,
) -> None:
    """A unary call its server failed: ``debug_error_string()`` is grpc core's string of
    that status, as the raised error's (``PERMISSION_DENIED`` from the peer)."""
    async with _back(registry) as (ch, _):
        call = ch.unary_unary(_m("Fail"))(b"PERMISSION_DENIED", timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        debug = await call.debug_error_string()
        assert debug == info.value.debug_error_string()
        assert "asked to fail" in debug, debug
        assert await call.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_debug_error_string_of_a_mesh_error_and_a_cancelled_call_is_empty(
    registry: LocalRegistry,
) -> None:
    """Outcomes that have no grpc core status: a call cancelled before it was sent and a
    call with no endpoint to go to (the mesh's ``UNAVAILABLE``) give ``""``."""
    async with _back(registry) as (ch, back):
        call = ch.unary_unary(_m("Unary"))(b"", timeout=10)
        assert call.cancel()
        assert await call.debug_error_string() == ""
        assert await call.details() == "Locally cancelled by application!"
        assert await call.code() is grpc.StatusCode.CANCELLED
        nowhere = meshkit.dial(
            "c1nobody",
            registry=registry,
            options=meshkit.DialOptions(insecure=True, retry=None, resolve_timeout_s=0.2),
        )
        try:
            lost = nowhere.unary_unary(_m("Unary"))(b"", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await lost
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert await lost.debug_error_string() == ""
        finally:
            await nowhere.close()
        assert back.unary == 0


class _Raises(ClientInterceptor):
    """A per-call interceptor that fails every call with an exception of its own."""

    async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
        raise LookupError("no such tenant")

    async def intercept_stream(self, details: Any, request: Any, proceed: Any) -> Any:
        raise LookupError("no such tenant")


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_a_call_an_interceptor_failed_reports_unknown_without_details(
    registry: LocalRegistry, kind: str
) -> None:
    """A call a client interceptor failed with an exception of its own (no gRPC status):
    the exception is raised as itself, ``code()`` is ``UNKNOWN``, ``details()`` and
    ``debug_error_string()`` are empty, as grpc.aio's call whose interceptor raised."""
    async with _back(registry, interceptors=(_Raises(),)) as (ch, back):
        if kind == "unary":
            call: Any = ch.unary_unary(_m("Unary"))(b"", timeout=10)
            with pytest.raises(LookupError, match="no such tenant"):
                await call
        else:
            call = ch.unary_stream(_m("Count"))(b"2", timeout=10)
            with pytest.raises(LookupError, match="no such tenant"):
                await call.read()
        assert await call.code() is grpc.StatusCode.UNKNOWN
        assert await call.details() == ""
        assert await call.debug_error_string() == ""
        assert back.unary == 0


async def test_debug_error_string_of_a_finished_stream(registry: LocalRegistry) -> None:
    """A server stream read to its end: ``code()`` ``OK``, ``details()`` and
    ``debug_error_string()`` empty (the attempt's own)."""
    async with _back(registry) as (ch, _):
        call = ch.unary_stream(_m("Count"))(b"3", timeout=10)
        assert [m async for m in call] == [b"0", b"1", b"2"]
        assert await call.code() is grpc.StatusCode.OK
        assert await call.details() == ""
        assert await call.debug_error_string() == ""


# -- stream-unary calls: misuse, and writers waiting while the call ends --------------------


async def test_a_stream_unary_call_s_write_api_misused(registry: LocalRegistry) -> None:
    """As grpc.aio's: ``write()``/``done_writing()`` of a call made with a request
    iterator raise ``UsageError``; a ``write()`` after ``done_writing()`` raises
    ``InvalidStateError`` (half closed), a second ``done_writing()`` does nothing, and a
    ``write()`` once the call has answered raises ``InvalidStateError`` (finished)."""

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async with _back(registry) as (ch, _):
        collect = ch.stream_unary(_m("Collect"))
        iterated = collect(requests(), timeout=10)
        with pytest.raises(grpc.aio.UsageError):
            await iterated.write(b"c")
        with pytest.raises(grpc.aio.UsageError):
            await iterated.done_writing()
        assert await iterated == b"a+b"

        written = collect(timeout=10)
        await written.write(b"x")
        await written.done_writing()
        with pytest.raises(asyncio.InvalidStateError, match="half closed"):
            await written.write(b"y")
        await written.done_writing()  # again: nothing
        assert await asyncio.wait_for(written, 10) == b"x"
        with pytest.raises(asyncio.InvalidStateError, match="already finished"):
            await written.write(b"z")
        await written.done_writing()  # ended: nothing
        assert await written.code() is grpc.StatusCode.OK


class _Gate(ClientInterceptor):
    """Holds every unary-response call before its attempt until ``opened`` is set; then
    fails it with ``fail`` if given, else lets it go on."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.fail: BaseException | None = None
        self.proceeded = 0

    async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
        await self.opened.wait()
        if self.fail is not None:
            raise self.fail
        self.proceeded += 1
        return await proceed(details, request)


async def _a_waiting_writer(call: Any) -> asyncio.Task[None]:
    """A second ``write()`` of ``call`` (its first message not taken: the gate holds the
    attempt), waiting for room when this returns."""
    await call.write(b"first")  # into the free slot at once
    started = asyncio.Event()

    async def second() -> None:
        started.set()  # then, in this same step, the write reaches its wait for room
        await call.write(b"second")

    task = asyncio.ensure_future(second())
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.05)
    assert not task.done()
    return task


@pytest.mark.parametrize("end", ["writer-cancelled", "call-cancelled", "call-failed"])
async def test_a_stream_unary_writer_waiting_for_room_when_the_call_ends(
    registry: LocalRegistry, end: str
) -> None:
    """A stream-unary ``write()`` waiting for its message to be taken (the one before it
    not taken yet) when the call ends: its task cancelled cancels the call (as
    grpc.aio's write; nothing is sent); the call cancelled raises ``CancelledError`` in
    the writer; the call failed with a status raises that status in the writer."""
    gate = _Gate()
    async with _back(registry, interceptors=(gate,)) as (ch, _):
        call = ch.stream_unary(_m("Collect"))(timeout=10)
        writer = await _a_waiting_writer(call)
        if end == "writer-cancelled":
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(writer, 10)
            assert call.cancelled()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, 10)
        elif end == "call-cancelled":
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(writer, 10)
            assert await call.code() is grpc.StatusCode.CANCELLED
        else:
            gate.fail = MeshRpcError(grpc.StatusCode.UNAVAILABLE, "no tenant shard")
            gate.opened.set()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(writer, 10)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == "no tenant shard"
            assert await call.code() is grpc.StatusCode.UNAVAILABLE
        gate.opened.set()
        await asyncio.sleep(0.1)
        assert gate.proceeded == 0  # nothing was sent
        with pytest.raises(asyncio.InvalidStateError):
            await call.write(b"third")


# -- a bidi write held by flow control, cancelled -------------------------------------------


async def test_a_bidi_write_held_by_flow_control_cancelled_cancels_the_call(
    registry: LocalRegistry,
) -> None:
    """A bidi ``write()`` that flow control holds (the server reads nothing) cancelled by
    its ``asyncio.wait_for`` timeout raises ``TimeoutError`` (the caller's own
    cancellation, not a mesh error), cancels the call (``cancelled()``, ``CANCELLED``)
    and its server sees the cancellation."""
    async with _back(registry) as (ch, back):
        call = ch.stream_stream(_m("Sink"))(timeout=30)
        big = b"x" * (256 * 1024)
        held = False
        for _ in range(256):  # at most 64 MiB; flow control stops it far sooner
            try:
                await asyncio.wait_for(call.write(big), 2.0)
            except TimeoutError:
                held = True
                break
        assert held, "flow control never held a write"
        assert call.cancelled()
        assert await asyncio.wait_for(call.code(), 10) is grpc.StatusCode.CANCELLED
        await until(lambda: "Sink" in back.cancelled, timeout_s=10, what="the server's cancel")


# -- a retried stream committed at its headers ----------------------------------------------


async def test_a_read_of_a_stream_committed_at_its_headers_cancelled_cancels_it(
    registry: LocalRegistry,
) -> None:
    """A retried server stream whose server sent its headers and waits: its
    ``initial_metadata()`` commits it; a ``read()`` then cancelled by its
    ``asyncio.wait_for`` timeout cancels the call (as grpc.aio's read), and the server
    sees it cancelled."""
    async with _back(registry, retry=RETRIED) as (ch, back):
        call = ch.unary_stream(_m("HeadersThenWait"))(b"", timeout=30)
        md = await asyncio.wait_for(call.initial_metadata(), 10)
        assert ("x-stage", "headers") in tuple(md)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call.read(), 0.3)
        assert call.cancelled()
        assert await asyncio.wait_for(call.code(), 10) is grpc.StatusCode.CANCELLED
        await until(
            lambda: "HeadersThenWait" in back.cancelled, timeout_s=10, what="the server's cancel"
        )


# -- a drained stream's details -------------------------------------------------------------


async def test_details_of_a_stream_cut_by_the_drain_while_unread(registry: LocalRegistry) -> None:
    """A server stream cut by its departed endpoint's drain while nobody reads it:
    ``details()``, asked first, names the drain (``UNAVAILABLE``'s), and ``code()`` and
    ``cancelled()`` agree (not the attempt's "Locally cancelled by application!")."""
    handler = _Back().handler()
    async with raw_server(handler) as (_, p1), raw_server(handler) as (_, p2):
        i1 = Instance(service="c1raw", instance_id="r1", host="127.0.0.1", port=p1)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=None, drain_timeout_s=0.3)
        async with meshkit.dial("c1raw", registry=registry, options=opts) as ch:
            await asyncio.wait_for(ch.wait_for_endpoints(1), 10)
            call = ch.unary_stream(_m("OneThenWait"))(b"", timeout=20)
            assert await asyncio.wait_for(call.read(), 10) == b"first"
            await registry.register(
                Instance(service="c1raw", instance_id="r2", host="127.0.0.1", port=p2)
            )
            await asyncio.wait_for(ch.wait_for_endpoints(2), 10)
            await registry.deregister(i1)
            await until(call.done, timeout_s=10, what="the drain's cut")
            details = await call.details()
            assert "drain_timeout_s" in details, details
            assert await call.code() is grpc.StatusCode.UNAVAILABLE
            assert not call.cancelled()


# -- unary calls made off the loop, or on a loop in debug mode ------------------------------


async def test_a_call_made_on_a_thread_without_a_loop_is_sent_when_awaited(
    registry: LocalRegistry,
) -> None:
    """A unary call made on a thread with no running event loop is not started there
    (nothing to start it on); awaited on the channel's loop it is sent once and
    answers."""
    async with _back(registry) as (ch, back):
        unary = ch.unary_unary(_m("Unary"))
        made: list[Any] = []
        thread = threading.Thread(target=lambda: made.append(unary(b"7", timeout=10)))
        thread.start()
        thread.join(10)
        assert len(made) == 1
        await asyncio.sleep(0.2)
        assert back.unary == 0 and not made[0].done()
        assert await asyncio.wait_for(made[0], 10) == b"echo|7"
        assert back.unary == 1


async def test_a_call_made_on_a_loop_in_debug_mode_is_sent_unawaited(
    registry: LocalRegistry,
) -> None:
    """On a loop in debug mode (its ready queue not written to directly) a unary call
    made and never awaited is still sent, once, from the loop's next turns."""
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    async with _back(registry) as (ch, back):
        unary = ch.unary_unary(_m("Unary"))

        async def on_a_fresh_loop_record() -> Any:
            # a task of its own: made first on this loop since debug mode was turned on
            return unary(b"5", timeout=10)

        loop.set_debug(True)
        try:
            # another loop's call first, so this loop's record is made again, in debug mode
            other = threading.Thread(target=lambda: asyncio.run(_make_one(unary)))
            other.start()
            other.join(10)
            call = await on_a_fresh_loop_record()
            await until(lambda: back.unary == 1, timeout_s=10, what="the unawaited call sent")
        finally:
            loop.set_debug(debug)
        assert await asyncio.wait_for(call, 10) == b"echo|5"
        assert back.unary == 1


async def _make_one(unary: Any) -> None:
    """Make a call on this (another) loop, and cancel it: nothing is sent."""
    call = unary(b"0", timeout=10)
    call.cancel()


class _StreamGate(ClientInterceptor):
    """Holds every stream's opening until ``opened`` is set; then fails it with ``fail``
    if given, else opens it. ``entered`` is set once a stream waits here."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail: BaseException | None = None
        self.proceeded = 0

    async def intercept_stream(self, details: Any, request: Any, proceed: Any) -> Any:
        self.entered.set()
        await self.opened.wait()
        if self.fail is not None:
            raise self.fail
        self.proceeded += 1
        return await proceed(details, request)


@pytest.mark.parametrize("end", ["cancelled", "failed"])
async def test_a_bidi_write_waiting_for_the_opening_when_the_call_ends(
    registry: LocalRegistry, end: str
) -> None:
    """A bidi ``write()`` waiting for its stream to open (an interceptor holds the
    opening) when ``cancel()`` ends the call raises ``InvalidStateError`` "RPC already
    finished." (as grpc.aio's intercepted call's write, not a ``CancelledError`` in a
    task nobody cancelled); when the opening fails with a status, that status. Nothing
    is sent either way."""
    gate = _StreamGate()
    async with _back(registry, interceptors=(gate,)) as (ch, back):
        call = ch.stream_stream(_m("Sink"))(timeout=10)
        writer = asyncio.ensure_future(call.write(b"a"))
        await asyncio.wait_for(gate.entered.wait(), 10)
        if end == "cancelled":
            assert call.cancel()
            with pytest.raises(asyncio.InvalidStateError, match="already finished"):
                await asyncio.wait_for(writer, 10)
            assert await call.code() is grpc.StatusCode.CANCELLED
        else:
            gate.fail = MeshRpcError(grpc.StatusCode.UNAVAILABLE, "no tenant shard")
            gate.opened.set()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(writer, 10)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert await call.details() == "no tenant shard"
        gate.opened.set()
        await asyncio.sleep(0.1)
        assert gate.proceeded == 0 and back.cancelled == []
        with pytest.raises(asyncio.InvalidStateError, match="already finished"):
            await call.write(b"b")


# -- bidi streams whose write met the server's early end (grpc/grpc#36066) -------------------

_STREAMS = 12


async def _write_all(call: Any) -> bool:
    """Write 50 messages of 1 KiB and half-close; whether a write met the call's end."""
    try:
        for _ in range(50):
            await call.write(b"x" * 1024)
        await call.done_writing()
    except asyncio.InvalidStateError:
        return True
    return False


async def test_a_stream_ended_ok_unanswered_while_written_iterates_to_its_end(
    registry: LocalRegistry,
) -> None:
    """A bidi stream whose handler returned ``OK`` at once, unanswered, while its caller
    wrote: iterated (``async for``), it ends without a message and without an error (the
    server's ``OK``, kept by the channel, not grpc.aio's stand-in ``INTERNAL``), and
    ``code()`` is ``OK``."""
    async with _back(registry) as (ch, _):
        met = 0
        for _ in range(_STREAMS):
            call = ch.stream_stream(_m("Quiet"))(timeout=10)
            met += await _write_all(call)

            async def drain(call: Any = call) -> list[Any]:
                return [m async for m in call]

            assert await asyncio.wait_for(drain(), 10) == []
            assert await call.code() is grpc.StatusCode.OK
        assert met >= _STREAMS // 3, met


async def test_debug_error_string_of_a_stream_denied_while_written(
    registry: LocalRegistry,
) -> None:
    """A bidi stream whose handler aborted ``PERMISSION_DENIED`` at once while its
    caller wrote: ``debug_error_string()`` is grpc core's string of the server's denial
    (kept by the channel where grpc.aio reports its own ``INTERNAL``), as ``code()`` and
    ``details()`` give the denial."""
    denied = grpc.StatusCode.PERMISSION_DENIED
    async with _back(registry) as (ch, _):
        for _ in range(_STREAMS):
            call = ch.stream_stream(_m("DenyNow"))(timeout=10)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await _write_all(call)
            debug = await asyncio.wait_for(call.debug_error_string(), 10)
            assert "no grant" in debug, debug
            assert await call.code() is denied
            assert await call.details() == "no grant"


class _SwallowingGate(ClientInterceptor):
    """Holds every stream's opening until ``opened`` is set, swallowing a cancellation
    of that wait (an interceptor that must finish its work), then opens it."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = asyncio.Event()
        self.proceeded = 0

    async def intercept_stream(self, details: Any, request: Any, proceed: Any) -> Any:
        self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.opened.wait()
        self.proceeded += 1
        return await proceed(details, request)


async def test_a_stream_opened_after_its_cancel_is_cancelled_at_once(
    registry: LocalRegistry,
) -> None:
    """A stream cancelled while an interceptor that swallows the cancellation holds its
    opening: ``cancel()`` ends the call at once (``CANCELLED``); the attempt the
    interceptor opens after it is cancelled as it opens (nobody will read it), so its
    endpoint's in-flight count goes back to 0 instead of the stream running on for the
    server's 30 s."""
    gate = _SwallowingGate()
    async with _back(registry, interceptors=(gate,)) as (ch, _):
        call = ch.stream_stream(_m("Sink"))(timeout=60)
        call.add_done_callback(lambda _c: None)  # starts its opening
        await asyncio.wait_for(gate.entered.wait(), 10)
        assert call.cancel()
        assert call.done() and call.cancelled()
        await until(lambda: gate.proceeded == 1, timeout_s=10, what="the late opening")
        await until(
            lambda: all(e.in_flight == 0 for e in ch.endpoints()),
            timeout_s=10,
            what="the late attempt ended",
        )
        assert await call.code() is grpc.StatusCode.CANCELLED
