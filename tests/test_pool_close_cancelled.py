"""A pool close cancelled half-way still closes every sub-channel (meshkit/_pool.py).

``MeshChannel.close()`` shields its close task, but the loop-ending sweep of
``asyncio.run()`` cancels it like any task left. ``EndpointPool.close()`` set ``closed``,
then awaited the watch's end: cancelled there, it never reached the sub-channels, which
stayed open (their streams kept working), and a later ``close()`` returned at once.
Real grpc.aio server on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.support.echo import handler, method, raw_server


async def test_a_close_cancelled_at_its_first_await_still_closes_the_sub_channels(
        registry: LocalRegistry) -> None:
    """Cancelled right after it starts, the pool's close still ends a stream open on its
    sub-channel; a second close returns."""
    async with raw_server(handler("e1")) as (_, port):
        await registry.register(Instance(service="echo", instance_id="e1",
                                         host="127.0.0.1", port=port))
        ch = meshkit.dial("echo", registry=registry,
                          options=meshkit.DialOptions(insecure=True, retry=None))
        try:
            await ch.wait_for_endpoints(1)
            bidi = ch.stream_stream(method("Bidi"))(timeout=20)
            await bidi.write(b"a")
            assert await asyncio.wait_for(bidi.read(), 3) == b"e1|a"
            closing = asyncio.create_task(ch._pool.close())
            await asyncio.sleep(0)  # it runs up to its first await
            closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(closing, 5)
            await asyncio.wait_for(ch._pool.close(), 3)  # returns at once: closed
            try:
                await asyncio.wait_for(bidi.write(b"b"), 2)
                got = await asyncio.wait_for(bidi.read(), 2)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError):
                got = None
            assert got is None or got is grpc.aio.EOF, \
                f"stream still works after the pool's close: {got!r}"
        finally:
            bidi.cancel()
            await asyncio.wait_for(ch.close(), 5)
