"""Review of f9fc7cf1/bff628ee (``meshkit/_calls.py``'s ``_wait_for_connection``).

``wait_for_connection()`` of a stream call made through ``DialOptions.attempt_interceptors``
awaited grpc.aio's ``_interceptors_task`` (the attempt interceptors' run, the attempt's
own) directly: cancelling that wait (its task, an ``asyncio.wait_for`` timeout: a
connection probe bounded in time) while an interceptor was still at work (one fetching a
token, say) cancelled the attempt with it, and the call ended ``CANCELLED`` though nobody
cancelled it. Without attempt interceptors, and for the stream-unary and retried calls'
``wait_for_connection`` (documented: "Cancelling the wait leaves the call alone"), the
same timeout leaves the call going on. The test: a bidi call whose attempt interceptor
waits for an event; a 0.2 s ``wait_for`` of ``wait_for_connection()`` times out; the
interceptor goes on; the call's write and read still work and the call ends ``OK``.
The stream-unary case is a control: its ``wait_for_connection`` shields the attempt's wait
itself, and passed before the fix too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from tests.support.echo import method
from tests.test_grpc_parity import side_by_side


class _Held(grpc.aio.StreamStreamClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """An attempt interceptor that waits for ``go`` before handing the attempt on."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.entered = asyncio.Event()

    async def _next(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.entered.set()
        await self.go.wait()
        return await continuation(details, requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await self._next(continuation, details, request_iterator)

    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await self._next(continuation, details, request_iterator)


@pytest.mark.parametrize("kind", ["bidi", "stream_unary"])
async def test_a_timed_out_wait_for_connection_leaves_an_intercepted_call_alone(
        registry: LocalRegistry, kind: str) -> None:
    held = _Held()
    async with side_by_side(registry, {"attempt_interceptors": (held,)}) as (_raw, mesh):
        call = (mesh.stream_stream(method("Bidi"))() if kind == "bidi"
                else mesh.stream_unary(method("ClientStream"))())
        waiter = asyncio.ensure_future(call.wait_for_connection())
        await asyncio.wait_for(held.entered.wait(), 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), 0.2)
        waiter.cancel()  # the caller gives up on its probe
        await asyncio.gather(waiter, return_exceptions=True)
        held.go.set()
        await asyncio.wait_for(call.write(b"a"), 5)
        if kind == "bidi":
            assert await asyncio.wait_for(call.read(), 5) == b"e1|a"
        await asyncio.wait_for(call.done_writing(), 5)
        if kind == "stream_unary":
            assert await asyncio.wait_for(call, 5) == b"e1|a"
        assert await asyncio.wait_for(call.code(), 5) is grpc.StatusCode.OK
        assert not call.cancelled()
