"""A response stream cut by the drain of its departed endpoint (``drain_timeout_s`` ran
out) raised ``UNAVAILABLE`` "its endpoint left and drain_timeout_s ran out" to a reader,
but one its caller was not reading at that moment reported ``code()`` ``CANCELLED``,
``details()`` "Locally cancelled by application!" and ``cancelled()`` true, as if the
caller had cancelled it: a done callback (a caller's own accounting, a supervisor that
re-opens a watch unless it was cancelled on purpose) took the mesh's cut for the caller's
cancel. Now every accessor and done callback agrees with what a reader gets; a caller's
own ``cancel()`` and a channel's close still read ``CANCELLED``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import SERVICE, method, raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(40)


def _inst(instance_id: str, port: int) -> Instance:
    return Instance(service="echo", instance_id=instance_id, host="127.0.0.1", port=port)


def _handler(tag: bytes) -> grpc.GenericRpcHandler:
    """``ServerStream`` sends one message then (on ``e1``) waits 30 s; ``Bidi`` echoes
    each request and waits for more."""

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield tag + b"|0"
        if tag == b"e1":
            await asyncio.sleep(30)
        yield tag + b"|end"

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield tag + b"|" + r

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerStream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


@contextlib.asynccontextmanager
async def _pair(registry: LocalRegistry, retry: RetryOptions | None,
                ) -> AsyncIterator[tuple[meshkit.MeshChannel, Any]]:
    """A channel (drain 0.3 s) on e1 only, and a function that replaces e1 by e2."""
    async with raw_server(_handler(b"e1")) as (_, p1), \
            raw_server(_handler(b"e2")) as (_, p2):
        i1 = _inst("e1", p1)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=retry, drain_timeout_s=0.3)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)

            async def replace() -> None:
                await registry.register(_inst("e2", p2))
                await ch.wait_for_endpoints(2)
                await registry.deregister(i1)

            yield ch, replace


async def _ended(call: Any) -> None:
    await until(call.done, timeout_s=10, what="the call ended")


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "retried"])
async def test_an_unread_server_stream_cut_by_the_drain_reports_unavailable(
        registry: LocalRegistry, idempotent: bool) -> None:
    """A server stream cut while nobody reads it: ``code()``, ``details()``,
    ``cancelled()`` and a done callback say what a read then raises (``UNAVAILABLE``
    naming the drain), not a caller's cancel."""
    retry = RetryOptions(default=RetryPolicy(idempotent=True)) if idempotent else None
    async with _pair(registry, retry) as (ch, replace):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"e1|0"
        seen: list[tuple[grpc.StatusCode, str, bool]] = []
        heard = asyncio.Event()
        looks: list[asyncio.Future[None]] = []

        def on_done(c: Any) -> None:
            async def look() -> None:
                seen.append((await c.code(), await c.details(), c.cancelled()))
                heard.set()
            looks.append(asyncio.ensure_future(look()))

        call.add_done_callback(on_done)
        await replace()
        await _ended(call)
        assert not call.cancelled()
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        details = await call.details()
        assert "drain_timeout_s" in details, details
        await asyncio.wait_for(heard.wait(), 10)
        assert seen == [(grpc.StatusCode.UNAVAILABLE, details, False)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == details


async def test_an_unread_bidi_stream_cut_by_the_drain_reports_unavailable(
        registry: LocalRegistry) -> None:
    """A bidi stream cut between its reads: ``UNAVAILABLE`` too, and a write after the
    cut raises it."""
    async with _pair(registry, None) as (ch, replace):
        call = ch.stream_stream(method("Bidi"))()
        await call.write(b"a")
        assert await call.read() == b"e1|a"
        await replace()
        await _ended(call)
        assert not call.cancelled()
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "drain_timeout_s" in await call.details()
        # the channel closed since: what was cut stays cut
        await ch.close()
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_stream_cancelled_by_its_caller_or_the_close_still_reads_cancelled(
        registry: LocalRegistry) -> None:
    """A caller's ``cancel()`` and the channel's close still report ``CANCELLED``."""
    async with _pair(registry, None) as (ch, _replace):
        mine = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await mine.read() == b"e1|0"
        mine.cancel()
        assert mine.cancelled()
        assert await mine.code() is grpc.StatusCode.CANCELLED
        closed = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await closed.read() == b"e1|0"
        await ch.close()
        await _ended(closed)
        assert await closed.code() is grpc.StatusCode.CANCELLED
        assert closed.cancelled()
