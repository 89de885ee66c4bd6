"""A message whose publisher set a ``Status`` header (an order's ``Status: shipped``, or
one that looks like JetStream's ``408``) is a message, not one of the status messages
JetStream ends a pull with: the consumer handles and acks it, rather than dropping it
unacked to be redelivered, and dropped again, every ack wait for ever."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("status", ["shipped", "408", "404", "409", "100"])
async def test_a_message_with_a_status_header_is_handled(bus: Bus, status: str) -> None:
    """Published with ``Status: <status>`` between two plain events: all three handled
    in order by one consumer within 3 s, and none left unacked."""
    for i, headers in enumerate(({}, {"Status": status}, {})):
        await bus.js.publish(bus.subject, b"x",
                             headers={**headers, "Nats-Msg-Id": f"e{i}"})
    seen: list[str] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.msg_id)

    consumer = Consumer(bus.js, handler, ConsumerOptions(
        stream=bus.stream, durable="status", ack_wait_s=10, fetch_timeout_s=0.2,
        registry=CollectorRegistry()))
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: len(seen) == 3, timeout_s=3, what="three events handled")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == ["e0", "e1", "e2"]

    async def settled() -> bool:
        info = await bus.js.consumer_info(bus.stream, "status")
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await until(settled, timeout_s=5, what="all acked")
