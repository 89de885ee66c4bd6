"""Shutdown with messages in flight: a consumer cancelled (a rolling restart) while the
handler of one message of a fetched batch runs gives the messages still waiting their
turn back at once, so another process of the durable handles them now, not after the
ack wait (30 s by default) they would otherwise be held for."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

#: The durable's ack wait: what the waiting messages were held for before the fix.
ACK_WAIT_S = 10.0
#: How soon the other process must have them (a wide margin on a loaded box).
PROMPT_S = 3.0


async def test_messages_waiting_in_a_cancelled_batch_go_to_another_process_at_once(
        bus: Bus) -> None:
    """Three events fetched in one batch; the consumer is cancelled while the first one's
    handler runs: a second consumer of the durable handles the other two within 3 s
    (the ack wait is 10 s)."""
    for i in range(3):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"e{i}"})
    started = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        started.set()
        await asyncio.sleep(60)

    options = ConsumerOptions(stream=bus.stream, durable="roll", ack_wait_s=ACK_WAIT_S,
                              registry=CollectorRegistry())
    first = asyncio.create_task(Consumer(bus.js, stuck, options).run())
    await asyncio.wait_for(started.wait(), 5)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    cancelled_at = time.monotonic()

    handled: dict[str, float] = {}

    async def handler(d: Delivery) -> None:
        handled.setdefault(d.msg_id, time.monotonic() - cancelled_at)

    second = asyncio.create_task(Consumer(bus.js, handler, options).run())
    try:
        await until(lambda: {"e1", "e2"} <= handled.keys(), timeout_s=PROMPT_S,
                    what="e1 and e2 handled by the other process")
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
