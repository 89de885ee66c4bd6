"""An inline unary attempt (meshkit/_inline.py) awaited by a second task while its first
await runs: cancelling that second awaiting task cancels the call, as it does grpc.aio's
own call (its ``__await__`` cancels the call whichever awaiting task is cancelled), so
the RPC does not run on for nobody. Real server, loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit._inline import InlineUnaryUnary, inline_unary_unary
from tests.conftest import EchoFactory
from tests.support.echo import method


@pytest.mark.parametrize("path", ["grpc", "inline"], ids=["grpc", "inline"])
async def test_cancelling_a_second_awaiter_cancels_the_call(
        echo_servers: EchoFactory, path: str) -> None:
    server = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        public = channel.unary_unary(method("Sleep"))
        start = inline_unary_unary(public) if path == "inline" else public
        if path == "inline":
            assert isinstance(start, InlineUnaryUnary)
        call = start(b"20000", timeout=30)  # the handler sleeps 20 s

        async def awaited() -> Any:
            return await call

        first = asyncio.ensure_future(awaited())
        await asyncio.sleep(0.2)  # the first await runs the call
        second = asyncio.ensure_future(awaited())
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done()
        second.cancel()
        done, _ = await asyncio.wait({first}, timeout=10)
        assert first in done, "the call ran on after its awaiting task was cancelled"
        with pytest.raises(asyncio.CancelledError):
            first.result()
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED



@pytest.mark.parametrize("path", ["grpc", "inline"], ids=["grpc", "inline"])
async def test_a_cancelled_wait_for_connection_cancels_a_running_call(
        echo_servers: EchoFactory, path: str) -> None:
    """The same for a ``wait_for_connection()`` timed out while the call runs: grpc.aio's
    awaits the call's task, which its cancel cancels; the inline call's waits as a
    later await."""
    server = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        public = channel.unary_unary(method("Sleep"))
        start = inline_unary_unary(public) if path == "inline" else public
        call = start(b"20000", timeout=30)  # the handler sleeps 20 s

        async def awaited() -> Any:
            return await call

        first = asyncio.ensure_future(awaited())
        await asyncio.sleep(0.2)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.wait_for_connection(), 0.2)
        done, _ = await asyncio.wait({first}, timeout=10)
        assert first in done, "the call ran on after its wait was cancelled"
        with pytest.raises(asyncio.CancelledError):
            first.result()
        assert call.cancelled()
