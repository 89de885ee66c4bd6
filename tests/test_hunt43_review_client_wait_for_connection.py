"""Review of 52ee09ba, at the level of the call the caller holds: a timed-out (cancelled)
``wait_for_connection()`` of a unary-unary call cancels the call, as grpc.aio's does
(its ``wait_for_connection`` awaits the call's invocation task, which the cancellation
reaches) and as 52ee09ba made an inline attempt's do. A stream-unary call's is left
alone (grpc.aio's waits for its request stream's metadata, an event). Real servers on
loopback; grpc.aio's own call as the control."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.echo import method


async def _ended(call: Any, bound_s: float = 10.0) -> bool:
    ended = asyncio.Event()
    call.add_done_callback(lambda _call: ended.set())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended.wait(), bound_s)
    return bool(call.done())


@pytest.mark.parametrize("path", ["grpc", "meshkit"], ids=["grpc", "meshkit"])
async def test_a_timed_out_wait_for_connection_cancels_a_unary_call(
        registry: LocalRegistry, echo_servers: EchoFactory, path: str) -> None:
    server = await echo_servers("e1")
    if path == "grpc":
        channel: Any = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    else:
        channel = meshkit.dial("echo", registry=registry,
                               options=meshkit.DialOptions(insecure=True, retry=None))
    async with channel:
        if path == "meshkit":
            await channel.wait_for_endpoints(1)
        call = channel.unary_unary(method("Sleep"))(b"20000", timeout=30)  # 20 s handler
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.wait_for_connection(), 0.5)
        assert await _ended(call), "the call ran on after its wait was cancelled"
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 10)


@pytest.mark.parametrize("path", ["grpc", "meshkit"], ids=["grpc", "meshkit"])
async def test_a_timed_out_wait_for_connection_of_a_running_awaited_call_cancels_it(
        registry: LocalRegistry, echo_servers: EchoFactory, path: str) -> None:
    """The call awaited by another task meanwhile: that await ends cancelled."""
    server = await echo_servers("e1")
    if path == "grpc":
        channel: Any = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    else:
        channel = meshkit.dial("echo", registry=registry,
                               options=meshkit.DialOptions(insecure=True, retry=None))
    async with channel:
        if path == "meshkit":
            await channel.wait_for_endpoints(1)
        call = channel.unary_unary(method("Sleep"))(b"20000", timeout=30)

        async def awaited() -> Any:
            return await call

        first = asyncio.ensure_future(awaited())
        await asyncio.sleep(0.2)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.wait_for_connection(), 0.5)
        done, _ = await asyncio.wait({first}, timeout=10)
        assert first in done, "the call ran on after its wait was cancelled"
        with pytest.raises(asyncio.CancelledError):
            first.result()
        assert call.cancelled()
