"""A Consumer's handler whose coroutine returns another coroutine (``async def h(d):
return process(d)``, an ``await`` forgotten) never ran that work: the inner coroutine
was dropped (Python's 'coroutine ... was never awaited' RuntimeWarning, not a log line)
and the message acked as handled, lost to the service in silence. It is a programming
error like a plain ``def`` handler (test_consumer_handler_kind.py): the message is
given back (nak'ed) and run() ends with TypeError."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_delay_s=0.01, max_delay_s=0.02)


def _options(bus: Bus) -> ConsumerOptions:
    return ConsumerOptions(stream=bus.stream, durable="inner", dead_letter_subject=bus.dlq,
                           backoff=FAST, fetch_timeout_s=0.2, max_deliveries=3,
                           registry=CollectorRegistry())


async def test_a_handler_returning_a_coroutine_is_not_acked(bus: Bus) -> None:
    """``async def handler(d): return process(d)``: run() ends with TypeError naming the
    missing await, ``process`` never ran, the message is not acked: the fixed handler
    gets it at once (its 2nd delivery)."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "e1"})
    processed: list[int] = []
    calls: list[int] = []

    async def process(d: Delivery) -> None:
        processed.append(d.delivery)

    async def handler(d: Delivery) -> None:
        calls.append(d.delivery)
        return process(d)  # type: ignore[return-value]  # the await forgotten

    task = asyncio.create_task(Consumer(bus.js, handler, _options(bus)).run())
    try:
        done, _ = await asyncio.wait((task,), timeout=5)
        assert done, f"run() still going; handler calls {calls}"
        with pytest.raises(TypeError, match="await"):
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
