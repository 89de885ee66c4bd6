"""A NATS connection closed for good (``nc.close()``, or nats-py's reconnect attempts
spent: 60 by default, about two minutes of outage) never comes back: a consumer's or
relay's ``run()`` on it ends with ``ConnectionClosedError`` instead of retrying for ever
with nothing but one warning, so whoever supervises it sees the process stopped working."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    Consumer,
    ConsumerOptions,
    Delivery,
    OutboxEvent,
    OutboxRelay,
    Publisher,
    PublishOptions,
    RelayOptions,
)
from meshkit.resilience import Backoff
from tests.messaging.conftest import NATS_URL, Bus

pytestmark = pytest.mark.timeout(30)

#: How soon run() must end once the connection is closed (its backoff is 10..50 ms).
ENDS_WITHIN_S = 2.0
FAST = Backoff(base_delay_s=0.01, max_delay_s=0.05)


class _Store:
    """An outbox with one event that stays pending."""

    def __init__(self, subject: str) -> None:
        self.event = OutboxEvent("e1", subject, b"x", {})

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return [self.event][:limit]

    async def mark_sent(self, event_ids: object) -> None:
        return None


async def test_a_consumer_on_a_closed_connection_ends(bus: Bus) -> None:
    """Consumer.run() whose connection is closed raises ConnectionClosedError (within
    2 s) rather than pulling again every backoff for ever."""
    nc = await nats.connect(NATS_URL)

    async def handler(d: Delivery) -> None:
        return None

    consumer = Consumer(nc.jetstream(), handler, ConsumerOptions(
        stream=bus.stream, durable="closed", backoff=FAST, fetch_timeout_s=0.2,
        registry=CollectorRegistry()))
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.1)
    await nc.close()
    try:
        done, _ = await asyncio.wait((task,), timeout=ENDS_WITHIN_S)
        assert done, "run() still going on a closed connection"
        with pytest.raises(nats.errors.ConnectionClosedError):
            task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_relay_on_a_closed_connection_ends(bus: Bus) -> None:
    """OutboxRelay.run() whose publisher's connection is closed raises
    ConnectionClosedError (within 2 s) rather than failing a round every backoff for
    ever; the event stays pending."""
    nc = await nats.connect(NATS_URL)
    publisher = Publisher(nc.jetstream(), PublishOptions(registry=CollectorRegistry()))
    relay = OutboxRelay(_Store(bus.subject), publisher, RelayOptions(error_backoff=FAST))
    await nc.close()
    task = asyncio.create_task(relay.run())
    try:
        done, _ = await asyncio.wait((task,), timeout=ENDS_WITHIN_S)
        assert done, "run() still going on a closed connection"
        with pytest.raises(nats.errors.ConnectionClosedError):
            task.result()
        assert relay.published == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
