"""Shutdown with a message in the pulls' inbox: one that came for a pull the consumer no
longer waited for (late, on a slow connection) waits in the inbox for the next
run_once. Closing the consumer (run() cancelled, a rolling restart) dropped it with the
inbox, unacked: another process of the durable got it only after the ack wait (30 s by
default). It is now given back (nak) like the messages of a batch cut short."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

ACK_WAIT_S = 10.0
PROMPT_S = 3.0


async def test_a_message_waiting_in_the_inbox_goes_to_another_process_on_close(
        bus: Bus) -> None:
    """A late message sits in consumer A's inbox (a pull made on A's inbox the way a late
    answer arrives); A is closed: consumer B of the durable handles it within 3 s (the
    ack wait is 10 s)."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "late-1"})
    options = ConsumerOptions(stream=bus.stream, durable="inbox", ack_wait_s=ACK_WAIT_S,
                              fetch_timeout_s=0.2, registry=CollectorRegistry())

    async def unused(d: Delivery) -> None:
        raise AssertionError("A handles nothing")

    a = Consumer(bus.js, unused, options)
    await a.start()
    pulls = a._pulls
    assert pulls is not None
    await bus.js._nc.publish(pulls._nms, json.dumps({"batch": 1, "no_wait": True}).encode(),
                             f"{pulls.reply_prefix}.99")
    await until(lambda: pulls._inbox._pending_queue.qsize() >= 1, timeout_s=3,
                what="the late message in A's inbox")
    await a.aclose()
    closed_at = time.monotonic()
    handled: dict[str, float] = {}

    async def handler(d: Delivery) -> None:
        handled.setdefault(d.msg_id, time.monotonic() - closed_at)

    b = asyncio.create_task(Consumer(bus.js, handler, options).run())
    try:
        await until(lambda: "late-1" in handled, timeout_s=PROMPT_S,
                    what="the message handled by the other process")
    finally:
        b.cancel()
        await asyncio.gather(b, return_exceptions=True)
