"""A reflection stream (``meshkit call``'s probe) or a health ``Watch`` cancelled in the
loop turn its pending read ended left that read's ``StopAsyncIteration`` unretrieved: the
server printed ``Task exception was never retrieved ... StopAsyncIteration`` on stderr
(seen once running the README's ``meshkit call`` against the Greeter)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from meshkit.server import _HealthWatches, _until_ending


def _capture(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


def _unretrieved(seen: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("message")) for c in seen
            if isinstance(c.get("exception"), StopAsyncIteration)]


async def test_request_read_ended_as_the_call_is_cancelled() -> None:
    loop = asyncio.get_running_loop()
    seen = _capture(loop)
    try:
        gate = asyncio.Event()

        async def requests() -> Any:
            await gate.wait()  # the client's end of the stream ...
            return
            yield

        async def consume() -> None:
            async for _ in _until_ending(requests(), asyncio.Event()):
                pass

        await _end_and_cancel_in_one_turn(consume, gate, seen)
    finally:
        loop.set_exception_handler(None)


async def _end_and_cancel_in_one_turn(consume: Callable[[], Awaitable[None]],
                                      gate: asyncio.Event, seen: Any) -> None:
    """Run ``consume`` until it waits on its read, then end the stream (``gate``) and
    cancel the call in the same loop turn: the task ends cancelled and no task's
    exception is left unretrieved."""
    task = asyncio.create_task(consume())
    for _ in range(3):
        await asyncio.sleep(0)  # the consumer waits on its read
    gate.set()  # ... and, in the same turn, the call's cancel
    task.cancel()
    done, _ = await asyncio.wait((task,), timeout=5)
    assert task in done and task.cancelled()
    del task, done
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    assert _unretrieved(seen) == []


async def test_health_watch_ended_as_the_call_is_cancelled() -> None:
    loop = asyncio.get_running_loop()
    seen = _capture(loop)
    try:
        gate = asyncio.Event()

        async def servicer_watch(request: Any, context: Any) -> Any:
            await gate.wait()  # the servicer ends its watch ...
            return
            yield

        handler = grpc.unary_stream_rpc_method_handler(servicer_watch)
        wrapped = _HealthWatches().wrap(handler)

        async def consume() -> None:
            async for _ in wrapped.unary_stream(None, object()):
                pass

        await _end_and_cancel_in_one_turn(consume, gate, seen)
    finally:
        loop.set_exception_handler(None)
