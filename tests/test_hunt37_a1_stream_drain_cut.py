"""A response stream still running on an endpoint that left the registry when its
``drain_timeout_s`` is up is cut by the client, the connection taken away under it. A
unary or client-streaming call so cut ends ``UNAVAILABLE`` "its endpoint left and
drain_timeout_s ran out" (grpc-java's "closed transport due to address change"), which a
policy for calls safe to repeat retries; a server stream or a bidi stream so cut ended
``CANCELLED`` ("the channel was closed or its endpoint left"), which nothing retries: an
idempotent server stream that had not yet delivered anything failed on a scale-down though
another endpoint stood ready. Closing the channel itself still ends a stream
``CANCELLED``."""

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


def _handler(tag: bytes, first: int) -> grpc.GenericRpcHandler:
    """``ServerStream`` sends ``first`` messages then (on ``e1``) waits 30 s; ``Bidi``
    echoes each request and then waits after ``first`` of them (``e1``)."""

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(first):
            yield tag + b"|" + str(i).encode()
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
                first: int) -> AsyncIterator[tuple[meshkit.MeshChannel, Any]]:
    """A channel (drain 0.3 s) on e1 only, and a function that replaces e1 by e2."""
    async with raw_server(_handler(b"e1", first)) as (_, p1), \
            raw_server(_handler(b"e2", first)) as (_, p2):
        i1 = _inst("e1", p1)
        await registry.register(i1)
        opts = meshkit.DialOptions(insecure=True, retry=retry, drain_timeout_s=0.3)
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1)

            async def replace() -> None:
                await until(lambda: any(e.in_flight for e in ch.endpoints()),
                            what="in flight")
                await registry.register(_inst("e2", p2))
                await ch.wait_for_endpoints(2)
                await registry.deregister(i1)

            yield ch, replace


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "retried"])
async def test_a_server_stream_cut_by_the_drain_fails_unavailable(
        registry: LocalRegistry, idempotent: bool) -> None:
    """A server stream cut after its first message: the next read raises
    ``UNAVAILABLE`` naming the drain, and ``code()`` says the same; a stream its policy
    retries is committed by then, and not opened again."""
    retry = RetryOptions(default=RetryPolicy(idempotent=True)) if idempotent else None
    async with _pair(registry, retry, 1) as (ch, replace):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"e1|0"
        await replace()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
        assert "drain_timeout_s" in (info.value.details() or "")
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert not call.cancelled()


async def test_a_bidi_stream_cut_by_the_drain_fails_unavailable(
        registry: LocalRegistry) -> None:
    """A bidi stream cut while its reader waits: ``UNAVAILABLE`` too."""
    async with _pair(registry, None, 1) as (ch, replace):
        call = ch.stream_stream(method("Bidi"))()
        await call.write(b"a")
        assert await call.read() == b"e1|a"
        await replace()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
        assert "drain_timeout_s" in (info.value.details() or "")


async def test_an_idempotent_server_stream_cut_before_its_first_message_is_retried(
        registry: LocalRegistry) -> None:
    """An idempotent server stream cut before it delivered anything (not committed) is
    opened again on the endpoint that stayed."""
    retry = RetryOptions(default=RetryPolicy(idempotent=True))
    async with _pair(registry, retry, 0) as (ch, replace):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        reading = asyncio.ensure_future(call.read())
        await replace()
        assert await asyncio.wait_for(reading, 10) == b"e2|end"
        assert await call.code() is grpc.StatusCode.OK


async def test_a_stream_of_a_closed_channel_still_ends_cancelled(
        registry: LocalRegistry) -> None:
    """Closing the channel under a stream's reader still ends it ``CANCELLED``."""
    async with _pair(registry, None, 1) as (ch, _replace):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"e1|0"
        reading = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.05)
        await ch.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(reading, 10)
        assert info.value.code() is grpc.StatusCode.CANCELLED, info.value


async def test_a_cut_stream_reports_the_same_error_after_the_channel_closes(
        registry: LocalRegistry) -> None:
    """A read after the cut, once the channel has closed too, raises the cut's error
    again (as ``code()`` and ``details()`` report it), not the close's ``CANCELLED``."""
    async with _pair(registry, None, 1) as (ch, replace):
        call = ch.unary_stream(method("ServerStream"))(b"x", timeout=20)
        assert await call.read() == b"e1|0"
        await replace()
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await asyncio.wait_for(call.read(), 10)
        await ch.close()
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await asyncio.wait_for(call.read(), 10)
        assert again.value.code() is first.value.code() is grpc.StatusCode.UNAVAILABLE
        assert again.value.details() == first.value.details() == await call.details()
