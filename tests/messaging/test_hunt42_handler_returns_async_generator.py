"""A Consumer's handler whose coroutine returns an async generator (``async def h(d):
return stream_rows(d)`` with ``stream_rows`` an ``async def ... yield``: an ``async for``
forgotten) never ran that work: the generator object was dropped unstarted and the
message acked as handled, lost in silence, as the returned coroutine was before
test_hunt41_h2_handler_returns_coroutine.py. It is the same programming error: the
message is given back (nak'ed) and run() ends with TypeError."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_delay_s=0.01, max_delay_s=0.02)


def _options(bus: Bus) -> ConsumerOptions:
    return ConsumerOptions(stream=bus.stream, durable="agen", dead_letter_subject=bus.dlq,
                           backoff=FAST, fetch_timeout_s=0.2, max_deliveries=3,
                           registry=CollectorRegistry())


async def test_a_handler_returning_an_async_generator_is_not_acked(bus: Bus) -> None:
    """``async def handler(d): return rows(d)``: run() ends with TypeError naming the
    missing ``async for``, ``rows`` never ran, the message is not acked: the fixed
    handler gets it at once (its 2nd delivery)."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "g1"})
    processed: list[int] = []
    calls: list[int] = []

    async def rows(d: Delivery) -> AsyncIterator[int]:
        processed.append(d.delivery)
        yield d.delivery

    async def handler(d: Delivery) -> None:
        calls.append(d.delivery)
        return rows(d)  # type: ignore[return-value]  # the async for forgotten

    task = asyncio.create_task(Consumer(bus.js, handler, _options(bus)).run())
    try:
        done, _ = await asyncio.wait((task,), timeout=5)
        assert done, f"run() still going; handler calls {calls}"
        with pytest.raises(TypeError, match="async generator"):
            task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls == [1]
    assert processed == []

    got: list[int] = []

    async def fixed(d: Delivery) -> None:  # the code fixed: handled at once, not lost
        got.append(d.delivery)

    again = asyncio.create_task(Consumer(bus.js, fixed, _options(bus)).run())
    try:
        await until(lambda: got == [2], timeout_s=5, what="the message handled again")
    finally:
        again.cancel()
        await asyncio.gather(again, return_exceptions=True)
