"""The call objects (meshkit/_calls.py): the grpc.aio call API on every kind of meshkit call,
against real in-process echo servers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientInterceptor
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.echo import method, raw_echo, raw_server
from tests.support.wait import until

OK = grpc.StatusCode.OK


def _opts(**kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, **kw)


async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class _LongestDelay(random.Random):
    """A random source whose backoff jitter always picks the longest delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_unary_call_api_after_success(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """An awaited unary call answers code/details/metadata/done from the answering attempt."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert not call.done() and not call.cancelled()
        assert await call == b"e1|x"
        assert call.done() and not call.cancelled()
        assert await call.code() is OK
        assert await call.details() in ("", None)
        assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
        assert await call == b"e1|x"  # awaiting again gives the same answer
        assert call.cancel() is False  # already finished
        remaining = call.time_remaining()
        assert remaining is not None and remaining <= 5
        await call.wait_for_connection()
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        await asyncio.sleep(0)
        assert seen == [call]


async def test_unary_call_started_by_an_accessor_runs_in_a_task(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """code() before await starts the call; callbacks added before the end run once."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.unary_unary(method("Unary"))(b"y", timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        assert await call.code() is OK
        assert await call == b"e1|y"
        await asyncio.sleep(0.01)
        assert seen == [call]


async def test_unary_call_failure_status_and_trailers(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A failing unary call raises, and its accessors give the status and the trailers."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_unary(method("Fail"))(b"NOT_FOUND:3", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert await call.code() is grpc.StatusCode.NOT_FOUND
        assert "asked to fail" in await call.details()
        assert ("retry-after", "3") in list(await call.trailing_metadata())
        assert call.done() and not call.cancelled()
        with pytest.raises(grpc.aio.AioRpcError):
            await call  # the same error again


async def test_unary_call_without_endpoint_reports_unavailable(
    registry: LocalRegistry
) -> None:
    """With no endpoint the call settles with the mesh's UNAVAILABLE and no attempt."""
    opts = _opts(retry=None, resolve_timeout_s=0.2)
    async with meshkit.dial("nobody", registry=registry, options=opts) as ch:
        call = ch.unary_unary(method("Unary"))(b"", timeout=2)
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "nobody" in await call.details()
        assert list(await call.trailing_metadata()) == []
        assert list(await call.initial_metadata()) == []
        with pytest.raises(grpc.aio.AioRpcError):
            await call.wait_for_connection()


async def test_unary_call_cancel_in_flight(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """cancel() on a call in flight cancels its attempt; the call ends CANCELLED."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_unary(method("Sleep"))(b"2000", timeout=5)
        task = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.2)
        assert call.cancel() is True
        assert await asyncio.wait_for(task, 3) is grpc.StatusCode.CANCELLED
        assert call.cancelled() and call.done()


async def test_unary_call_cancel_before_it_starts(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A call cancelled before its first step settles as CANCELLED without hanging."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.unary_unary(method("Unary"))(b"", timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        waiter = asyncio.ensure_future(call.code())
        await asyncio.sleep(0)  # the call's task exists, not yet run
        call.cancel()
        assert await asyncio.wait_for(waiter, 3) is grpc.StatusCode.CANCELLED
        assert call.cancelled()
        await asyncio.sleep(0.01)
        assert seen == [call]


async def test_stream_call_api(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """A server stream opens on first use; then every accessor is the attempt's."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"3", timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        assert not call.done()
        got = [m async for m in call]
        assert got == [b"e1|0", b"e1|1", b"e1|2"]
        assert await call.code() is OK
        assert await call.details() in ("", None)
        assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
        await call.wait_for_connection()
        await asyncio.sleep(0.01)
        assert call.done() and not call.cancelled() and seen == [call]
        assert call.cancel() is False
        late: list[Any] = []
        call.add_done_callback(late.append)
        await asyncio.sleep(0.01)
        assert late == [call]


async def test_bidi_call_read_write(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """write/read/done_writing on a stream-stream call made without an iterator."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.stream_stream(method("Bidi"))(timeout=5)
        await call.write(b"a")
        assert await call.read() == b"e1|a"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is OK


async def test_stream_call_that_cannot_open(registry: LocalRegistry) -> None:
    """A stream with no endpoint: iteration raises UNAVAILABLE, accessors report it."""
    opts = _opts(retry=None, resolve_timeout_s=0.2)
    async with meshkit.dial("nobody", registry=registry, options=opts) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"1", timeout=2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "nobody" in await call.details()
        assert list(await call.trailing_metadata()) == []
        assert call.done()
        with pytest.raises(grpc.aio.AioRpcError):
            await call.wait_for_connection()


async def test_stream_call_cancel(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """cancel() on an open stream cancels it; before opening, it cancels the opening. The
    server (telemetry and access log on) survives the cancelled stream: it used to read the
    peer after grpc core had freed the transport and crash (grpc/grpc#29069)."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"1000000", timeout=5)
        assert await call.read() == b"e1|0"
        assert call.cancel() is True
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert call.cancelled()
        early = ch.unary_stream(method("ServerStream"))(b"1", timeout=5)
        waiter = asyncio.ensure_future(early.code())
        await asyncio.sleep(0)
        early.cancel()
        assert await asyncio.wait_for(waiter, 3) is grpc.StatusCode.CANCELLED
        assert early.cancelled() and early.done()
        with pytest.raises(asyncio.CancelledError):
            await early.read()


def _retry_streams() -> meshkit.DialOptions:
    return _opts(retry=RetryOptions(methods={
        "Echo/FailStream": RetryPolicy(idempotent=True, max_attempts=3)}))


async def test_retrying_stream_commits_on_first_message(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A server stream failing before its first message on one instance is retried on
    another; the call then answers from the committed attempt."""
    await echo_servers("e1")
    await echo_servers("e2")
    async with meshkit.dial("echo", registry=registry, options=_retry_streams()) as ch:
        await ch.wait_for_endpoints(2)
        for _ in range(4):
            call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0@e1", timeout=5)
            seen: list[Any] = []
            call.add_done_callback(seen.append)
            got = [m async for m in call]
            assert got == [b"e2|0", b"e2|1", b"e2|2"]
            assert await call.code() is OK
            assert await call.details() in ("", None)
            assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
            assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
            await call.wait_for_connection()
            await asyncio.sleep(0.01)
            assert call.done() and not call.cancelled() and seen == [call]


async def test_retrying_stream_gives_up_with_the_last_error(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Every attempt failing before its first message: the call ends with that status."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_retry_streams()) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "asked to fail" in await call.details()
        assert call.done() and not call.cancelled()
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)


async def test_retrying_stream_cancel(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Cancelling a retried stream ends it CANCELLED and stops further attempts."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_retry_streams()) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:1000000", timeout=5)
        assert (await call.read()).startswith(b"e1|")
        assert call.cancel() is True
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert call.cancelled() and call.done()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            while await call.read() is not grpc.aio.EOF:
                pass


async def test_unary_call_cancel_reaches_its_retry_backoff(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """cancel() on an awaited unary call waiting out a retry's backoff returns True, the
    awaiting task gets CancelledError and no further attempt is sent."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    slow = RetryPolicy(idempotent=True, max_attempts=3,
                       backoff=Backoff(base_delay_s=1.0, max_delay_s=1.0, rng=_LongestDelay()))
    opts = _opts(retry=RetryOptions(default=slow), outlier=None)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        call = ch.unary_unary(method("Fail"))(b"UNAVAILABLE", timeout=10)

        async def run() -> Any:
            return await call

        task = asyncio.ensure_future(run())
        await _until(lambda: ch.stats().retry.retries == 1)  # type: ignore[union-attr]
        assert call.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert task.cancelled()
        assert call.cancelled() and call.done()
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert served == ["Fail"], "attempts went on after cancel()"
        assert call.cancel() is False  # already cancelled


async def test_unary_call_cancel_caught_by_the_caller_leaves_its_task_usable(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A caller that catches the CancelledError of a call cancelled by cancel() goes on
    awaiting other calls: the call's cancel does not stay pending on the caller's task."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_unary(method("Sleep"))(b"2000", timeout=5)

        async def run() -> tuple[str, int, bytes]:
            with contextlib.suppress(asyncio.CancelledError):
                await call
            task = asyncio.current_task()
            assert task is not None
            after = await ch.unary_unary(method("Unary"))(b"next", timeout=5)
            return "caught", task.cancelling(), after

        task = asyncio.ensure_future(run())
        await _until(lambda: sum(e.in_flight for e in ch.stats().endpoints) == 1)
        assert call.cancel() is True
        assert await asyncio.wait_for(task, 5) == ("caught", 0, b"e1|next")


async def test_unary_call_cancel_reaches_every_hedge_in_flight(
    registry: LocalRegistry
) -> None:
    """cancel() on an awaited hedged call cancels the attempts still in flight, not only
    the last one sent (here a hedge that already failed): the caller gets CancelledError
    and the server sees the first attempt cancelled."""
    count = 0
    server_saw: list[str] = []

    async def get(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal count
        count += 1
        if count == 1:  # the first attempt: slow
            try:
                await asyncio.sleep(5.0)
            except asyncio.CancelledError:
                server_saw.append("cancelled")
                raise
            server_saw.append("completed")
            return b"slow"
        await context.abort(grpc.StatusCode.UNAVAILABLE, "down")  # the hedge fails
        raise AssertionError("unreachable")

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "meshkit.test.Hedge", {"Get": grpc.unary_unary_rpc_method_handler(get)}),))

    servers = []
    for instance_id in ("h1", "h2"):
        srv = meshkit.MeshServer("hedge", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=instance_id,
                                     drain_delay_s=0.0, grace_s=1.0))
        await srv.start()
        servers.append(srv)
    try:
        policy = RetryPolicy(idempotent=True, hedge_delay_s=0.05, max_attempts=2)
        opts = _opts(retry=RetryOptions(default=policy), balancer=RoundRobin, outlier=None)
        async with meshkit.dial("hedge", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(2)
            call = ch.unary_unary("/meshkit.test.Hedge/Get")(b"", timeout=10)

            async def run() -> Any:
                return await call

            task = asyncio.ensure_future(run())
            await _until(lambda: sum(e.failures for e in ch.stats().endpoints) == 1)
            assert call.cancel() is True
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            await _until(lambda: bool(server_saw))
        assert server_saw == ["cancelled"]
        assert await call.code() is grpc.StatusCode.CANCELLED
    finally:
        for srv in servers:
            await srv.drain()


async def test_unary_call_cancelled_before_use_is_not_sent(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """cancel() on a unary call nothing has used returns True and settles it CANCELLED:
    awaiting it raises CancelledError and no request reaches a server."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert call.cancel() is True
        assert call.cancelled() and call.done()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 5)
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert call.cancel() is False
        await asyncio.sleep(0.05)  # a request sent anyway would reach the server by now
        assert served == [], "a cancelled call reached the server"


async def test_stream_call_cancelled_before_use_is_not_sent(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """cancel() on a server stream nothing has used returns True; reading it raises
    CancelledError and nothing reaches a server."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=5)
        assert call.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await asyncio.sleep(0.05)
        assert served == []


async def test_unary_call_started_by_an_accessor_and_awaited_is_sent_once(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """One call object is one RPC: code() (which starts it in a task) and an await
    before that task ran share the one attempt."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_unary(method("Unary"))(b"x", timeout=5)
        code, response = await asyncio.wait_for(asyncio.gather(call.code(), call), 5)
        assert code is OK and response == b"e1|x"
        await asyncio.sleep(0.05)  # a second request would reach the server by now
        assert served == ["Unary"]


async def test_add_done_callback_starts_the_call(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A unary call and a server stream whose only use is add_done_callback run, and call
    back once."""
    served: list[str] = []
    await echo_servers("e1", served=served)
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))(b"x", timeout=5)
        stream = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=5)
        seen: list[Any] = []
        unary.add_done_callback(seen.append)
        stream.add_done_callback(seen.append)
        await _until(lambda: len(seen) == 2)
        assert sorted(served) == ["FailStream", "Unary"]
        assert unary in seen and stream in seen
        assert await unary == b"e1|x"
        assert await stream.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("settled_first", [False, True])
async def test_a_raising_done_callback_is_logged_not_raised(
    registry: LocalRegistry, echo_servers: EchoFactory, settled_first: bool
) -> None:
    """A done callback that raises is logged; the caller still gets the response and the
    callbacks after it still run (added before the call ends, or after)."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_unary(method("Unary"))(b"x", timeout=5)
        if settled_first:
            assert await call == b"e1|x"
        seen: list[str] = []

        def bad(_c: Any) -> None:
            seen.append("bad")
            raise RuntimeError("a buggy done callback")

        with structlog.testing.capture_logs() as logs:
            call.add_done_callback(bad)
            call.add_done_callback(lambda _c: seen.append("good"))
            assert await asyncio.wait_for(call, 5) == b"e1|x"
            await _until(lambda: len(seen) == 2)
            await asyncio.sleep(0.01)
        assert seen == ["bad", "good"]
        errors = [e for e in logs if e["event"] == "done callback raised"]
        assert len(errors) == 1 and errors[0]["error_type"] == "RuntimeError"


async def test_time_remaining_is_never_negative(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """time_remaining() is a nonnegative float (grpc.aio's contract), 0.0 once the
    deadline has passed."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_unary(method("Sleep"))(b"1000", timeout=0.1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, 5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.05)
        assert call.time_remaining() == 0.0


@pytest.mark.parametrize("use", ["read", "iterate", "write"])
async def test_stream_whose_reader_is_cancelled_while_it_waits_for_an_endpoint_is_not_sent(
    registry: LocalRegistry, echo_servers: EchoFactory, use: str
) -> None:
    """Cancelling a read, an iteration or a write of a wait_for_ready stream still waiting
    for an endpoint cancels the call, as grpc.aio's read/write do: it is done and
    cancelled at once and is not sent when an endpoint appears later."""
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await asyncio.sleep(0.2)  # discovery answered: no instance yet
        if use == "write":
            call = ch.stream_stream(method("Bidi"))(timeout=10, wait_for_ready=True)
            user = asyncio.ensure_future(call.write(b"x"))
        else:
            call = ch.unary_stream(method("ServerStream"))(b"1", timeout=10,
                                                           wait_for_ready=True)
            user = asyncio.ensure_future(
                call.read() if use == "read" else anext(aiter(call)))
        await asyncio.sleep(0.05)  # the opening waits for an endpoint
        user.cancel()
        with pytest.raises(asyncio.CancelledError):
            await user
        assert call.done() and call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await echo_servers("late")
        await ch.wait_for_endpoints(1)
        await asyncio.sleep(0.1)  # a stream sent anyway would be on its way by now
        assert [e.calls for e in ch.stats().endpoints] == [0]


async def test_stream_accessor_cancelled_before_it_opens_leaves_the_call(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Cancelling the task awaiting an accessor (code()) of a stream still opening does not
    cancel the call (grpc.aio's accessors neither): it opens and answers once an endpoint
    appears."""
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        await asyncio.sleep(0.2)  # discovery answered: no instance yet
        call = ch.unary_stream(method("ServerStream"))(b"1", timeout=10, wait_for_ready=True)
        waiter = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not call.done() and not call.cancelled()
        await echo_servers("late")
        assert await asyncio.wait_for(call.read(), 5) == b"late|0"
        assert await call.code() is OK


async def test_done_writing_on_a_finished_stream_does_nothing(
    registry: LocalRegistry
) -> None:
    """done_writing() on a stream-stream call that ended before it opened (cancelled, or
    no endpoint) returns, as grpc.aio's on a finished call."""
    opts = _opts(retry=None, resolve_timeout_s=0.2)
    async with meshkit.dial("nobody", registry=registry, options=opts) as ch:
        cancelled = ch.stream_stream(method("Bidi"))(timeout=5)
        assert cancelled.cancel() is True
        await cancelled.done_writing()
        failed = ch.stream_stream(method("Bidi"))(timeout=5)
        assert await failed.code() is grpc.StatusCode.UNAVAILABLE
        await failed.done_writing()


# -- call objects used without await (grpc.aio starts a call when it is made) -------------
_SLEEP_S = 0.5


def _counting_handler(seen: list[str]) -> grpc.GenericRpcHandler:
    """A service ``t.Calls`` whose methods record each call they receive in ``seen``:
    ``Note`` (unary-unary), ``Notes`` (stream-unary), ``Slow`` (unary-unary, sleeps
    ``_SLEEP_S`` then answers)."""

    async def note(request: bytes, context: Any) -> bytes:
        seen.append("Note")
        return b"ok"

    async def notes(requests: Any, context: Any) -> bytes:
        seen.append("Notes")
        return b",".join([r async for r in requests])

    async def slow(request: bytes, context: Any) -> bytes:
        seen.append("Slow")
        try:
            await asyncio.sleep(_SLEEP_S)
        except asyncio.CancelledError:
            seen.append("Slow cancelled")
            raise
        return b"ok"

    return grpc.method_handlers_generic_handler("t.Calls", {
        "Note": grpc.unary_unary_rpc_method_handler(note),
        "Notes": grpc.stream_unary_rpc_method_handler(notes),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })


@contextlib.asynccontextmanager
async def _side_by_side(registry: LocalRegistry, *handlers: grpc.GenericRpcHandler,
                        **dial_kw: Any) -> AsyncIterator[tuple[Any, Any]]:
    """``(raw grpc.aio channel, meshkit channel)`` to one plain grpc.aio server serving
    ``handlers``, registered as service ``calls``."""
    async with raw_server(*handlers) as (_server, port):
        await registry.register(
            Instance(service="calls", instance_id="c1", host="127.0.0.1", port=port))
        raw = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        mesh = meshkit.dial("calls", registry=registry, options=_opts(**dial_kw))
        try:
            await mesh.wait_for_endpoints(1)
            await asyncio.wait_for(raw.channel_ready(), 5)
            yield raw, mesh
        finally:
            await raw.close()
            await mesh.close()


async def test_a_unary_call_never_awaited_is_still_sent(registry: LocalRegistry) -> None:
    """A user who fires a notification (``stub.Note(req)`` / ``stub.Notes(iter(...))``
    without awaiting the call object: grpc.aio's ``UnaryUnaryCall``/``StreamUnaryCall``
    start a task for it in their constructor) saw the server receive it through plain
    grpc.aio and never through ``dial()``: the unary-response call object only started
    when awaited or asked something, so the call was silently dropped. Now a call nothing
    started in the loop turn it was made in is started from the next turns, in a task."""
    seen: list[str] = []
    async with _side_by_side(registry, _counting_handler(seen)) as (raw, mesh):
        raw_calls = (raw.unary_unary("/t.Calls/Note")(b"n", timeout=5),
                     raw.stream_unary("/t.Calls/Notes")(iter([b"a", b"b"]), 5))
        await until(lambda: len(seen) == 2, timeout_s=3,
                    what="plain grpc.aio sends both calls")
        assert sorted(seen) == ["Note", "Notes"]
        del raw_calls
        seen.clear()

        mesh_calls = (mesh.unary_unary("/t.Calls/Note")(b"n", timeout=5),
                      mesh.stream_unary("/t.Calls/Notes")(iter([b"a", b"b"]), 5))
        await until(lambda: len(seen) == 2, timeout_s=3,
                    what="the server receiving both calls made through dial()")
        assert sorted(seen) == ["Note", "Notes"]
        assert [await call for call in mesh_calls] == [b"ok", b"a,b"]


async def test_unary_calls_made_before_they_are_awaited_run_concurrently(
        registry: LocalRegistry) -> None:
    """The common grpc.aio fan-out ``calls = [stub.Get(r, timeout=2) for r in reqs]`` then
    ``[await c for c in calls]``: through grpc.aio every call is in flight from the moment
    it is made (about one server time for all four); through ``dial()`` each call started
    only when the loop reached its ``await``, so they ran one after another (four server
    times) and, each deadline being set when its call was made, the last ones failed
    ``DEADLINE_EXCEEDED`` without having been sent. Now the first runs inline in the
    awaiting task and the others start from the loop's next turns, as grpc.aio's."""
    seen: list[str] = []
    async with _side_by_side(registry, _counting_handler(seen)) as (raw, mesh):
        for name, ch in (("raw", raw), ("mesh", mesh)):
            t0 = time.monotonic()
            calls = [ch.unary_unary("/t.Calls/Slow")(b"", timeout=4 * _SLEEP_S + 0.1)
                     for _ in range(4)]
            outcomes = []
            for call in calls:
                try:
                    outcomes.append(await call)
                except grpc.RpcError as err:
                    outcomes.append(err.code())
            took = time.monotonic() - t0
            assert outcomes == [b"ok"] * 4, (name, outcomes)
            # concurrent: about one _SLEEP_S; serial: 4 x _SLEEP_S (2.0 s)
            assert took < 3 * _SLEEP_S, f"{name}: 4 calls took {took:.2f} s"


_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("test_tenant", default="-")


class _TenantSeen(ClientInterceptor):
    """Records the ``_TENANT`` of the context each unary call runs in (what a token
    forwarder, a trace parent or any other per-call context read at send time sees)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
        self.seen.append((_TENANT.get(), request))
        return await proceed(details, request)


async def test_calls_started_after_their_turn_run_in_their_makers_contexts(
        registry: LocalRegistry) -> None:
    """Two tasks of one loop turn each make a call for their own tenant (a context
    variable, as the caller identity a ``TokenForwarder`` forwards, the current span or
    the propagated deadline) and await it later: both calls were started from the loop's
    next turns by one callback scheduled by the turn's first call, in that call's maker's
    context, so the second tenant's call ran as the first tenant (its token forwarded,
    its trace parented). Each call now starts in the context it was made in."""
    seen = _TenantSeen()
    handled: list[str] = []
    async with _side_by_side(registry, _counting_handler(handled),
                             interceptors=(seen,)) as (_raw, mesh):
        note = mesh.unary_unary("/t.Calls/Note")
        go = asyncio.Event()

        async def tenant(name: str) -> bytes:
            _TENANT.set(name)
            call = note(name.encode(), timeout=5)
            await go.wait()
            result: bytes = await call
            return result

        tasks = [asyncio.ensure_future(tenant(n)) for n in ("alice", "bob")]
        await until(lambda: len(seen.seen) == 2, timeout_s=3, what="both calls sent")
        go.set()
        assert await asyncio.gather(*tasks) == [b"ok", b"ok"]
    assert sorted(seen.seen) == [("alice", b"alice"), ("bob", b"bob")], seen.seen


async def test_a_started_call_awaited_under_a_timeout_is_cancelled_when_it_runs_out(
        registry: LocalRegistry) -> None:
    """A call already running in its own task (made, then awaited only after the turn it
    was made in) and awaited under ``asyncio.wait_for``: when the timeout cancels the
    awaiting task the call is cancelled (its code ``CANCELLED``, the server's handler
    cancelled), as grpc.aio's ``__await__`` and as a call running inline in that task;
    it does not go on for nobody."""
    seen: list[str] = []
    async with _side_by_side(registry, _counting_handler(seen)) as (_raw, mesh):
        call = mesh.unary_unary("/t.Calls/Slow")(b"", timeout=5)
        await until(lambda: seen == ["Slow"], timeout_s=3, what="the call sent")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call, 0.05)
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await until(lambda: "Slow cancelled" in seen, timeout_s=3,
                    what="the server's handler cancelled")


async def test_a_call_awaited_in_the_turn_it_was_made_in_runs_once_inline(
        registry: LocalRegistry) -> None:
    """The fast path stays: a call awaited in the turn it was made in (directly, or
    through ``asyncio.wait_for``/``gather``, whose tasks run before the call would be
    started on its own) runs in the awaiting task, sent once."""
    seen: list[str] = []
    async with _side_by_side(registry, _counting_handler(seen)) as (_raw, mesh):
        note = mesh.unary_unary("/t.Calls/Note")
        direct = note(b"n", timeout=5)
        assert await direct == b"ok"
        assert direct._task is asyncio.current_task()
        wrapped = note(b"n", timeout=5)
        assert await asyncio.wait_for(wrapped, 5) == b"ok"
        gathered = [note(b"n", timeout=5) for _ in range(3)]
        assert await asyncio.gather(*gathered) == [b"ok"] * 3
        for call in (wrapped, *gathered):
            # awaited by the caller's task or asyncio's wrapper task: not one of its own
            assert call._task is not None
            assert call._task.get_coro().__qualname__ != "UnaryResponseCall._run"
        await asyncio.sleep(0.05)
        assert seen == ["Note"] * 5


async def test_a_call_cancelled_in_the_turn_it_was_made_in_is_never_sent(
        registry: LocalRegistry) -> None:
    """A call made and cancelled in one loop turn (or cancelled before the turn that
    would start it) is never sent, for a unary and a stream-unary call."""
    seen: list[str] = []
    async with _side_by_side(registry, _counting_handler(seen)) as (_raw, mesh):
        calls = [mesh.unary_unary("/t.Calls/Note")(b"n", timeout=5),
                 mesh.stream_unary("/t.Calls/Notes")(iter([b"a"]), 5)]
        assert all(call.cancel() for call in calls)
        later = mesh.unary_unary("/t.Calls/Note")(b"n", timeout=5)
        await asyncio.sleep(0)  # the turn that made it is over; not started yet
        assert later.cancel() is True
        await asyncio.sleep(0.1)  # a call sent anyway would reach the server by now
        assert seen == []
        for call in (*calls, later):
            assert await call.code() is grpc.StatusCode.CANCELLED


class _TenantSeenStreams(_TenantSeen):
    """:class:`_TenantSeen` for streams too: the ``_TENANT`` each stream opens in."""

    async def intercept_stream(self, details: Any, request: Any, proceed: Any) -> Any:
        self.seen.append((_TENANT.get(), details.method.encode()))
        return await proceed(details, request)


@pytest.mark.timeout(60)
async def test_calls_awaited_outside_the_context_they_were_made_in_run_in_it(
        registry: LocalRegistry) -> None:
    """A unary call made in one context and awaited in another in the same loop turn (a
    helper that sets a context variable, makes the call and resets the variable before
    returning it; calls made for several tenants, then ``gather``-ed; a call made in one
    task and awaited by another) ran inline in the *awaiting* context, and one first
    asked something (``add_done_callback``, ``code()``) started in the asker's: it went
    out as another tenant (its token forwarded, its trace parented, its deadline
    propagated from there), while the same call awaited a turn later ran as its maker.
    Now every call runs in the context it was made in, as grpc.aio's, however it is
    awaited; still inline in the awaiting task (no task of its own), sent once."""
    seen = _TenantSeenStreams()
    handled: list[str] = []
    async with _side_by_side(registry, _counting_handler(handled),
                             interceptors=(seen,)) as (_raw, mesh):
        note = mesh.unary_unary("/t.Calls/Note")

        def made_as(tenant: str, request: bytes) -> Any:
            token = _TENANT.set(tenant)
            try:
                return note(request, timeout=5)
            finally:
                _TENANT.reset(token)

        helper = made_as("alice", b"helper")
        assert await helper == b"ok"
        assert helper._task is asyncio.current_task()  # inline, in the awaiting task
        calls = [made_as("bob", b"gather-1"), made_as("carol", b"gather-2")]
        assert await asyncio.gather(*calls) == [b"ok", b"ok"]
        asked = made_as("dave", b"asked")
        asked.add_done_callback(lambda _call: None)
        assert await asked.code() is OK

        handed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def maker() -> None:
            _TENANT.set("erin")
            handed.set_result(note(b"handed", timeout=5))

        async def awaiter() -> bytes:
            _TENANT.set("frank")
            result: bytes = await (await handed)
            return result

        waiting = asyncio.ensure_future(awaiter())
        await asyncio.ensure_future(maker())
        assert await waiting == b"ok"

        token = _TENANT.set("grace")
        try:
            stream = mesh.unary_stream("/t.Calls/Stream")(b"", timeout=5)
        finally:
            _TENANT.reset(token)
        with contextlib.suppress(grpc.RpcError):  # no such method: opened all the same
            await stream.read()
        await asyncio.sleep(0.05)
        assert sorted(handled) == ["Note"] * 5
    assert sorted(seen.seen) == [
        ("alice", b"helper"), ("bob", b"gather-1"), ("carol", b"gather-2"),
        ("dave", b"asked"), ("erin", b"handed"), ("grace", b"/t.Calls/Stream")], seen.seen


class _Uncomparable:
    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value of an array is ambiguous")

    __hash__ = object.__hash__


_UNCOMPARABLE: contextvars.ContextVar[Any] = contextvars.ContextVar("test_uncomparable")


@pytest.mark.timeout(60)
async def test_a_call_run_in_its_makers_context_keeps_the_await_semantics(
        registry: LocalRegistry) -> None:
    """A call awaited outside the context it was made in (run inline in that context)
    behaves as one awaited where it was made: an error is raised by the ``await``, the
    awaiting task's cancellation (an ``asyncio.wait_for`` timeout) cancels the call at the
    server, ``cancel()`` ends the ``await`` with ``CancelledError``, and nothing the call
    sets in its context leaks into the awaiting one."""
    handled: list[str] = []
    async with _side_by_side(registry, _counting_handler(handled)) as (_raw, mesh):
        slow = mesh.unary_unary("/t.Calls/Slow")
        missing = mesh.unary_unary("/t.Calls/Missing")

        def made_as(tenant: str, make: Callable[[], Any]) -> Any:
            token = _TENANT.set(tenant)
            try:
                return make()
            finally:
                _TENANT.reset(token)

        failing = made_as("alice", lambda: missing(b"", timeout=5))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await failing
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert await failing.code() is grpc.StatusCode.UNIMPLEMENTED

        timed_out = made_as("bob", lambda: slow(b"", timeout=5))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(timed_out, 0.2)
        assert timed_out.cancelled()
        assert await timed_out.code() is grpc.StatusCode.CANCELLED
        await until(lambda: "Slow cancelled" in handled, timeout_s=3,
                    what="the server's handler cancelled")

        cancelled = made_as("carol", lambda: slow(b"", timeout=5))

        async def cancel_soon() -> None:
            await until(lambda: handled.count("Slow") == 2, timeout_s=3, what="sent")
            assert cancelled.cancel() is True

        canceller = asyncio.ensure_future(cancel_soon())
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await canceller
        assert await cancelled.code() is grpc.StatusCode.CANCELLED
        assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]
        assert _TENANT.get() == "-"

        # a variable whose values' == raises (as a numpy array's) set where the call is
        # made and, to another value, where it is awaited: run in the maker's all the same
        _UNCOMPARABLE.set(_Uncomparable())
        token = _UNCOMPARABLE.set(_Uncomparable())
        try:
            odd = mesh.unary_unary("/t.Calls/Note")(b"", timeout=5)
        finally:
            _UNCOMPARABLE.reset(token)
        with pytest.raises(ValueError):  # the contexts' == raises
            assert contextvars.copy_context() == odd._ctx
        assert await odd == b"ok"


# -- a client interceptor's own error (no gRPC status): that exception, every time --------

_TOKEN_FILE = "/nonexistent/meshkit-test/token"


def _read_token() -> bytes:
    """What a credentials interceptor does; fails with FileNotFoundError naming the file."""
    with open(_TOKEN_FILE, "rb") as f:
        return f.read()


class _TokenInterceptor(ClientInterceptor):
    async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
        _read_token()
        return await proceed(details, request)

    async def intercept_stream(self, details: Any, request: Any, proceed: Any) -> Any:
        _read_token()
        return await proceed(details, request)


class _RawTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        _read_token()
        return await continuation(details, request)


def _frames(exc: BaseException) -> list[str]:
    return [frame.f_code.co_name for frame, _ in traceback.walk_tb(exc.__traceback__)]


async def _failure_of_a_call_awaited_later(unary: Any, started_by: str) -> BaseException:
    """The exception ``await`` raises for a call that ran in its own task: started on its
    own (awaited a turn later) or by ``add_done_callback``."""
    call = unary(b"x", timeout=5)
    if started_by == "add_done_callback":
        call.add_done_callback(lambda _c: None)
    await asyncio.sleep(0.05)  # not awaited in its turn: it runs (and fails) in a task
    try:
        await call
    except Exception as exc:  # the exception under test
        return exc
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize("started_by", ["next turn", "add_done_callback"])
async def test_an_interceptor_error_of_a_call_run_in_its_own_task_keeps_its_traceback_and_text(
    registry: LocalRegistry, echo_servers: EchoFactory, started_by: str,
) -> None:
    """A client interceptor's error that is no gRPC status (a credentials file missing)
    on a unary call awaited after it ran in a task of its own: as grpc.aio, the caller
    gets the interceptor's exception itself, its traceback going down to the line that
    raised it, ``filename`` and ``str()`` naming the file, the same object each time.
    Before (6df6b39's ``_fresh``): a copy made from its ``args``, whose traceback had
    only the caller's frame and ``_result``, without ``filename``."""
    async with asyncio.timeout(20):
        # grpc.aio, the reference
        async with raw_echo(channel_interceptors=[_RawTokenInterceptor()]) as raw:
            raw_exc = await _failure_of_a_call_awaited_later(
                raw.unary_unary(method("Unary")), started_by)
        assert isinstance(raw_exc, FileNotFoundError)
        assert "_read_token" in _frames(raw_exc)
        assert raw_exc.filename == _TOKEN_FILE

        await echo_servers("e1")
        async with meshkit.dial("echo", registry=registry, options=_opts(
                interceptors=[_TokenInterceptor()])) as ch:
            await ch.wait_for_endpoints(1)
            unary: Any = ch.unary_unary(method("Unary"))
            exc = await _failure_of_a_call_awaited_later(unary, started_by)
            assert isinstance(exc, FileNotFoundError)
            assert "_read_token" in _frames(exc), _frames(exc)
            assert exc.filename == _TOKEN_FILE, str(exc)
            assert _TOKEN_FILE in str(exc), str(exc)
            # reported again: the same exception, its traceback from the caller down to
            # the interceptor's line once (not one more caller per report)
            call = unary(b"x", timeout=5)
            await asyncio.sleep(0.05)
            reports = []
            for _ in range(3):
                with pytest.raises(FileNotFoundError) as info:
                    await call
                reports.append(info.value)
            assert reports[0] is reports[1] is reports[2]
            frames = _frames(reports[2])
            assert frames.count("_read_token") == 1, frames
            assert frames.count("_result") == 1, frames


async def test_an_interceptor_error_opening_a_stream_keeps_its_traceback_and_text(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """The same for a response stream, where it is every call: a stream opens in a task of
    its own (on first use), so the error ``intercept_stream`` raised reached the reader
    only as ``StreamResponseCall._opened``'s copy (6df6b39's ``_fresh``): no frame of the
    interceptor, no ``filename``. grpc.aio raises the interceptor's exception itself on
    the first read; so does meshkit, on every read."""
    await echo_servers("e1")
    async with asyncio.timeout(20), meshkit.dial("echo", registry=registry, options=_opts(
            interceptors=[_TokenInterceptor()])) as ch:
        await ch.wait_for_endpoints(1)
        stream: Any = ch.unary_stream(method("ServerStream"))
        with pytest.raises(FileNotFoundError) as info:
            async for _ in stream(b"3", timeout=5):
                pass
        assert "_read_token" in _frames(info.value), _frames(info.value)
        assert info.value.filename == _TOKEN_FILE, str(info.value)
        bidi: Any = ch.stream_stream(method("Bidi"))(timeout=5)
        with pytest.raises(FileNotFoundError) as first:
            await bidi.write(b"a")
        with pytest.raises(FileNotFoundError) as again:
            await bidi.read()
        assert again.value is first.value
        assert "_read_token" in _frames(again.value), _frames(again.value)


class _SlotError(Exception):
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__("refused")
        self.reason = reason


def _raise_missing_file() -> None:
    _read_token()


def _raise_undecodable() -> None:
    b"\xff".decode("utf-8")


def _raise_slot_error() -> None:
    raise _SlotError("quota")


def _raise_attribute_error() -> None:
    _ = {}.token  # type: ignore[attr-defined]


def _check_missing_file(exc: BaseException) -> None:
    assert isinstance(exc, FileNotFoundError)
    assert exc.filename == _TOKEN_FILE, str(exc)


def _check_undecodable(exc: BaseException) -> None:
    assert isinstance(exc, UnicodeDecodeError)
    assert str(exc) == "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    assert exc.object == b"\xff"


def _check_slot_error(exc: BaseException) -> None:
    assert isinstance(exc, _SlotError)
    assert getattr(exc, "reason", None) == "quota"


def _check_attribute_error(exc: BaseException) -> None:
    assert isinstance(exc, AttributeError)
    assert exc.name == "token"


@pytest.mark.parametrize(("raise_", "check"), [
    pytest.param(_raise_missing_file, _check_missing_file, id="OSError.filename"),
    pytest.param(_raise_undecodable, _check_undecodable, id="UnicodeDecodeError"),
    pytest.param(_raise_slot_error, _check_slot_error, id="__slots__"),
    pytest.param(_raise_attribute_error, _check_attribute_error, id="AttributeError.name"),
])
async def test_an_interceptor_error_reported_again_is_still_that_error(
    registry: LocalRegistry, echo_servers: EchoFactory, raise_: Any, check: Any,
) -> None:
    """A call failed by a client interceptor's exception, awaited twice: every report is
    that exception (as grpc.aio's, which re-raises its interceptors' task's exception).
    Before (6df6b39's ``_fresh``: ``cls.__new__(cls, *args)`` and ``__dict__``, no
    ``__init__``) the second report lost what the exception keeps elsewhere:
    ``OSError.filename``, ``UnicodeDecodeError``'s fields (its ``str()`` was ``""``),
    ``__slots__`` fields, ``AttributeError.name``."""

    class Failing(ClientInterceptor):
        async def intercept_unary(self, details: Any, request: Any, proceed: Any) -> Any:
            raise_()
            return await proceed(details, request)

    await echo_servers("e1")
    async with asyncio.timeout(20), meshkit.dial("echo", registry=registry, options=_opts(
            interceptors=[Failing()])) as ch:
        await ch.wait_for_endpoints(1)
        unary: Any = ch.unary_unary(method("Unary"))
        call = unary(b"x", timeout=5)
        with pytest.raises(Exception) as first:  # checked below
            await call  # inline: the error itself
        check(first.value)
        with pytest.raises(Exception) as again:  # checked below
            await call  # reported again
        check(again.value)
        assert again.value is first.value
