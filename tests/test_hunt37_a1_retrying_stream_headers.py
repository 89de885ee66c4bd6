"""A retried server stream's ``initial_metadata()`` waited for its first message.

A server stream safe to repeat (an idempotent read, a watch) is retried until it is
committed, at its first message. Its ``initial_metadata()`` waited for that commit, so a
subscription whose server sends its headers at once and its first event much later (an
``await context.send_initial_metadata(...)`` and then a wait) held a caller awaiting
the headers (to know it is subscribed) until that first event, for ever on a quiet
topic, where grpc.aio's own call, and the same stream under a policy that does not
retry it, answered at once. Now, as grpc-go's ``ClientStream.Header()`` (gRFC A6 commits
a call when its headers arrive): the headers of the attempt in flight are returned as
soon as they arrive, retrying an attempt that fails before sending any, and the call is
committed to that attempt (a later failure is the caller's, as after a first message).
Nobody asking for the headers, the stream still commits at its first message. Real
grpc.aio servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.support.echo import SERVICE, method, raw_server

pytestmark = pytest.mark.timeout(40)

FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)


def _subscriptions(started: list[bytes]) -> grpc.GenericRpcHandler:
    """``ServerStream``: request ``b"<fail>:<then>"``. The first ``fail`` streams end
    ``UNAVAILABLE`` before any header; the others send the header ``x-sub: <n>`` (``n``
    the stream's number) and then: ``then=wait``: wait 30 s; ``then=late``: answer
    ``b"late"`` after 0.3 s and end; ``then=abort``: end ``UNAVAILABLE`` after 0.3 s,
    nothing sent."""

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        started.append(request)
        fail, _, then = request.decode().partition(":")
        if len(started) <= int(fail):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        await context.send_initial_metadata((("x-sub", str(len(started))),))
        if then == "wait":
            await asyncio.sleep(30)
        await asyncio.sleep(0.3)
        if then == "abort":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "after the headers")
        yield b"late"

    return grpc.method_handlers_generic_handler(
        SERVICE, {"ServerStream": grpc.unary_stream_rpc_method_handler(stream)})


@contextlib.asynccontextmanager
async def _open(registry: LocalRegistry, idempotent: bool,
                started: list[bytes]) -> AsyncIterator[meshkit.MeshChannel]:
    async with raw_server(_subscriptions(started)) as (_, port):
        await registry.register(Instance(service="echo", instance_id="s1",
                                         host="127.0.0.1", port=port))
        policy = RetryPolicy(idempotent=idempotent, backoff=FAST)
        opts = meshkit.DialOptions(insecure=True, outlier=None,
                                   retry=RetryOptions(default=policy))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)
            yield ch


def _header(md: Any) -> str | None:
    return dict(md).get("x-sub")


@pytest.mark.parametrize("idempotent", [True, False], ids=["retried", "not-retried"])
async def test_headers_of_a_quiet_subscription_come_at_once(
        registry: LocalRegistry, idempotent: bool) -> None:
    """Headers sent, no message for 30 s: ``initial_metadata()`` answers at once,
    whether or not the policy retries the stream."""
    started: list[bytes] = []
    async with _open(registry, idempotent, started) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"0:wait", timeout=20)
        md = await asyncio.wait_for(call.initial_metadata(), 5)
        assert _header(md) == "1"
        assert not call.done()
        call.cancel()


async def test_headers_after_a_retried_attempt_are_the_new_attempts(
        registry: LocalRegistry) -> None:
    """The first attempt fails before any header: it is retried, and the headers and
    the message are the second attempt's."""
    started: list[bytes] = []
    async with _open(registry, True, started) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"1:late", timeout=20)
        md = await asyncio.wait_for(call.initial_metadata(), 5)
        assert _header(md) == "2"
        assert await asyncio.wait_for(call.read(), 5) == b"late"
        assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK
    assert len(started) == 2


async def test_messages_after_headers_read_in_order(registry: LocalRegistry) -> None:
    """Committed at its headers, the stream hands out its messages as before."""
    started: list[bytes] = []
    async with _open(registry, True, started) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"0:late", timeout=20)
        assert _header(await asyncio.wait_for(call.initial_metadata(), 5)) == "1"
        got = [m async for m in call]
        assert got == [b"late"]
        assert _header(await call.initial_metadata()) == "1"
    assert len(started) == 1


async def test_a_failure_after_headers_the_caller_saw_is_the_callers(
        registry: LocalRegistry) -> None:
    """A failure after the headers the caller has read is not retried (gRFC A6: the
    call is committed): the caller does not get another attempt's headers and
    messages behind the ones it acted on."""
    started: list[bytes] = []
    async with _open(registry, True, started) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"0:abort", timeout=20)
        assert _header(await asyncio.wait_for(call.initial_metadata(), 5)) == "1"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "after the headers"
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert len(started) == 1


async def test_unasked_headers_still_commit_at_the_first_message(
        registry: LocalRegistry) -> None:
    """Nobody asked for the headers: a failure after them and before any message is
    still retried (committed at the first message, as before)."""
    started: list[bytes] = []
    async with _open(registry, True, started) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"0:abort", timeout=20)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(call.read(), 10)
    assert len(started) == 3  # max_attempts
