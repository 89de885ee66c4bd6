"""Telemetry leaves no reference cycles per call: anything cyclic waits for the garbage
collector (at concurrency 32 a cycle per call made `traced` collect twice as often, with
twice the GC time, when a completion rode on grpc.aio's ``add_done_callback``, whose
``partial(callback, context)`` closes a cycle through the call's state)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

from tests.observability.conftest import FRONT, ChainFactory, Tracing
from tests.support.echo import method, raw_echo

CALLS = 200


async def cyclic_per_call(call: Callable[[], Awaitable[Any]]) -> float:
    """Objects the cyclic collector finds per ``call()``, with collection paused."""
    for _ in range(50):  # warm-up: connections, caches
        await call()
    gc.collect()
    gc.disable()
    try:
        for _ in range(CALLS):
            await call()
        await asyncio.sleep(0.05)  # completions run after the response
        return gc.collect() / CALLS
    finally:
        gc.enable()


async def test_a_traced_call_leaves_no_more_cycles_than_grpc_itself(
        chain: ChainFactory, tracing: Tracing) -> None:
    """A traced two-hop call (client span, server span, access log, metrics on both
    hops) leaves only grpc.aio's own cyclic garbage for its two calls: grpc's handler
    lookup (``_find_method_handler``'s closure) is a cycle holding the call's metadata,
    to which the ``traceparent`` header adds one entry per hop."""
    async with raw_echo() as plain:
        unary = plain.unary_unary(method("Unary"))
        raw = await cyclic_per_call(lambda: unary(b"x", timeout=5))
    c = await chain()
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    meshed = await cyclic_per_call(lambda: relay(b"x", timeout=5))
    assert meshed <= 2 * raw + 2, (meshed, raw)
