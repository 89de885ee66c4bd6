"""Retries of streaming-response calls until they are committed (gRFC A6), through a real
MeshChannel and real servers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.echo import method

FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)
IDEMPOTENT = RetryPolicy(idempotent=True, max_attempts=3, backoff=FAST)
SLOW_SERVICE = "meshkit.test.SlowStream"


class LongestDelay(random.Random):
    """A random source whose jitter always picks the longest delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


def opts(policy: RetryPolicy | None, **kw: object) -> meshkit.DialOptions:
    """DialOptions with one retry policy for every method and no outlier ejection."""
    kw.setdefault("outlier", None)
    return meshkit.DialOptions(insecure=True, retry=RetryOptions(default=policy),
                               **kw)  # type: ignore[arg-type]


@pytest.fixture
async def served(echo_servers: EchoFactory) -> list[str]:
    """One echo instance ``a``; the list of methods it has started serving."""
    calls: list[str] = []
    await echo_servers("a", served=calls)
    return calls


async def collect(call: object) -> list[bytes]:
    """Every response of a streaming call."""
    return [r async for r in call]  # type: ignore[attr-defined]


async def test_stream_failing_before_its_first_message_is_retried_elsewhere(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A server stream that fails UNAVAILABLE before answering is opened again on another
    endpoint; the caller sees only the good stream, and done callbacks run once per call."""
    served_a: list[str] = []
    served_b: list[str] = []
    await echo_servers("a", served=served_a)
    await echo_servers("b", served=served_b)
    # Round robin: every other first attempt goes to the failing instance.
    options = opts(IDEMPOTENT, balancer=RoundRobin)
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        stream = ch.unary_stream(method("FailStream"))
        for _ in range(8):
            call = stream(b"UNAVAILABLE:0@a", timeout=5)
            finished: list[object] = []
            call.add_done_callback(finished.append)
            assert await collect(call) == [b"b|0", b"b|1", b"b|2"]
            assert await call.code() is grpc.StatusCode.OK
            await asyncio.sleep(0.01)
            assert finished == [call] and call.done() and not call.cancelled()
        assert ch.retry is not None
        retries = ch.retry.stats.retries
    assert len(served_b) == 8
    assert retries == len(served_a) >= 4  # a took at least every other first attempt


async def test_stream_is_not_retried_after_its_first_message(
    registry: LocalRegistry, served: list[str]
) -> None:
    """Once a message reached the caller the stream is committed: a later error is final."""
    async with meshkit.dial("echo", registry=registry, options=opts(IDEMPOTENT)) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:1", timeout=5)
        got: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for r in call:
                got.append(r)
        assert got == [b"a|0"]
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert served == ["FailStream"]


async def test_stream_failing_every_attempt_ends_with_the_last_status(
    registry: LocalRegistry, served: list[str]
) -> None:
    """max_attempts attempts in all, then the last attempt's status, through read() too."""
    async with meshkit.dial("echo", registry=registry, options=opts(IDEMPOTENT)) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "asked to fail on a" in await call.details()
        assert call.done()
    assert served == ["FailStream"] * 3


async def test_unsafe_stream_is_retried_only_with_an_idempotency_key(
    registry: LocalRegistry, served: list[str]
) -> None:
    """A stream of a method not declared idempotent is opened once, unless keyed."""
    policy = RetryPolicy(max_attempts=3, backoff=FAST)
    async with meshkit.dial("echo", registry=registry, options=opts(policy)) as ch:
        stream = ch.unary_stream(method("FailStream"))
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(stream(b"UNAVAILABLE:0", timeout=5))
        assert len(served) == 1
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(stream(b"UNAVAILABLE:0", timeout=5,
                                 metadata=(("idempotency-key", "k1"),)))
        assert len(served) == 1 + 3


async def test_cancel_during_the_backoff_ends_the_stream(
    registry: LocalRegistry, served: list[str]
) -> None:
    """Cancelling a stream that waits to retry cancels it: no further attempt is made."""
    slow = RetryPolicy(idempotent=True, max_attempts=3,
                       backoff=Backoff(base_delay_s=2.0, max_delay_s=2.0, rng=LongestDelay()))
    async with meshkit.dial("echo", registry=registry, options=opts(slow)) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=10)
        reader = asyncio.ensure_future(collect(call))
        for _ in range(100):
            if served:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the first attempt failed; the retry waits 2 s
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert call.cancelled() and call.done()
        assert await call.code() is grpc.StatusCode.CANCELLED
    assert served == ["FailStream"]


async def test_streams_wait_out_a_moment_without_endpoints(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A stream opened while the service has no endpoint is retried (nothing was sent),
    for server streams and bidirectional streams alike."""
    policy = RetryPolicy(max_attempts=20, backoff=Backoff(base_delay_s=0.05, max_delay_s=0.1))
    async with meshkit.dial("echo", registry=registry, options=opts(policy)) as ch:
        await asyncio.sleep(0.2)  # discovery answered: no instance yet
        server_stream = asyncio.ensure_future(
            collect(ch.unary_stream(method("ServerStream"))(b"2", timeout=5)))
        bidi = asyncio.ensure_future(
            collect(ch.stream_stream(method("Bidi"))(iter([b"x", b"y"]), timeout=5)))
        await asyncio.sleep(0.1)
        await echo_servers("late")
        assert await server_stream == [b"late|0", b"late|1"]
        assert await bidi == [b"late|x", b"late|y"]


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def backing_off(delay_s: float, max_attempts: int = 3) -> RetryPolicy:
    """An idempotent policy whose every retry waits exactly ``delay_s``."""
    return RetryPolicy(idempotent=True, max_attempts=max_attempts,
                       backoff=Backoff(base_delay_s=delay_s, max_delay_s=delay_s,
                                       rng=LongestDelay()))


@pytest.fixture
async def slow_streams(registry: LocalRegistry) -> AsyncIterator[list[str]]:
    """One instance of service ``echo`` serving ``/meshkit.test.SlowStream/First``: a
    request ``b"<n>:<s>"`` fails the first ``n`` streams UNAVAILABLE at once, and the
    others send their initial metadata (as a subscription answering on events) and
    ``b"late"`` after ``s`` seconds. The list of streams it started."""
    started: list[str] = []

    async def first(request: bytes, context: Any) -> AsyncIterator[bytes]:
        started.append("First")
        failing, _, delay_s = request.decode().partition(":")
        if len(started) <= int(failing):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
        await context.send_initial_metadata(())
        await asyncio.sleep(float(delay_s))
        yield b"late"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SLOW_SERVICE, {"First": grpc.unary_stream_rpc_method_handler(first)}),))

    srv = meshkit.MeshServer("echo", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="s1",
                                                          drain_delay_s=0.0, grace_s=1.0))
    await srv.start()
    yield started
    await srv.drain()


async def test_reader_cancelled_during_the_backoff_ends_the_stream(
    registry: LocalRegistry, served: list[str]
) -> None:
    """Cancelling the task blocked in read() while the stream waits to retry cancels the
    stream, as grpc.aio's read: it is done and cancelled at once and no attempt follows."""
    async with meshkit.dial("echo", registry=registry,
                            options=opts(backing_off(0.3))) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=10)
        reader = asyncio.ensure_future(call.read())
        assert ch.retry is not None
        await until(lambda: ch.retry.stats.retries == 1)  # type: ignore[union-attr]
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert call.done() and call.cancelled()
        await asyncio.sleep(0.5)  # past the backoff: a retry would have been sent
        assert await call.code() is grpc.StatusCode.CANCELLED
    assert served == ["FailStream"]


async def test_read_timing_out_before_the_first_message_ends_the_stream(
    registry: LocalRegistry, slow_streams: list[str]
) -> None:
    """asyncio.wait_for(call.read(), t) timing out before the first message cancels the
    retried stream and its attempt (as grpc.aio's): done at once, the endpoint idle."""
    async with meshkit.dial("echo", registry=registry,
                            options=opts(backing_off(0.3))) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(f"/{SLOW_SERVICE}/First")(b"0:5", timeout=10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call.read(), 0.3)
        assert call.done() and call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await until(lambda: [e.in_flight for e in ch.stats().endpoints] == [0], 2.0)
    assert slow_streams == ["First"]


async def test_cancel_during_the_backoff_is_done_at_once(
    registry: LocalRegistry, served: list[str]
) -> None:
    """cancel() on a stream waiting to retry sets its outcome at once, as grpc.aio's
    cancel(): done() and cancelled() are True when it returns, and the done callbacks run
    (once) without waiting for the backoff."""
    async with meshkit.dial("echo", registry=registry,
                            options=opts(backing_off(1.0))) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=10)
        seen: list[object] = []
        call.add_done_callback(seen.append)
        assert ch.retry is not None
        await until(lambda: ch.retry.stats.retries == 1)  # type: ignore[union-attr]
        assert call.cancel() is True
        assert call.done() and call.cancelled()
        assert call.cancel() is False
        await asyncio.sleep(0.01)
        assert seen == [call]
        assert await call.code() is grpc.StatusCode.CANCELLED
    assert served == ["FailStream"]


async def test_wait_for_connection_returns_once_an_attempt_is_connected(
    registry: LocalRegistry, slow_streams: list[str]
) -> None:
    """wait_for_connection() of a retried stream returns once its attempt is connected
    (grpc.aio's unary-stream: its initial metadata received), not at its first message (a
    subscription answering only on events would hang)."""
    async with meshkit.dial("echo", registry=registry, options=opts(backing_off(0.3))) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(f"/{SLOW_SERVICE}/First")(b"0:5", timeout=10)
        await asyncio.wait_for(call.wait_for_connection(), 2.0)
        assert not call.done()
        call.cancel()


async def test_wait_for_connection_in_the_backoff_waits_for_the_next_attempt(
    registry: LocalRegistry, slow_streams: list[str]
) -> None:
    """In the backoff, wait_for_connection() waits for the retry's attempt (not the failed
    one's error); cancelling that wait leaves the call alone (as any accessor); once the
    call has failed for good it raises the final error."""
    async with meshkit.dial("echo", registry=registry, options=opts(backing_off(0.3))) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(f"/{SLOW_SERVICE}/First")(b"1:5", timeout=10)
        seen: list[object] = []
        call.add_done_callback(seen.append)  # starts the call
        assert ch.retry is not None
        await until(lambda: ch.retry.stats.retries == 1)  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call.wait_for_connection(), 0.05)
        assert not call.done() and not call.cancelled()
        await asyncio.wait_for(call.wait_for_connection(), 2.0)
        await until(lambda: len(slow_streams) == 2)
        assert not call.done() and seen == []
        call.cancel()
        failing = ch.unary_stream(f"/{SLOW_SERVICE}/First")(b"9:0", timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await failing.read()
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await failing.wait_for_connection()
        # the same error, a new object each time as grpc.aio raises one (6df6b39: the
        # same object raised again held the call in a reference cycle)
        assert type(again.value) is type(info.value)
        assert (again.value.code(), again.value.details()) == (
            info.value.code(), info.value.details())
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
