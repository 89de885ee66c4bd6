"""When :meth:`Consumer.start` updates an existing durable whose ack wait, ``max_deliver``
or filter subject differ from the options, the durable's other settings (an operator's
``max_ack_pending``, ``max_waiting``, its description...) must stay: the update sent a
config of the options' fields only, and JetStream reset the rest to its defaults (a
``max_ack_pending`` of 3, bounding the messages in flight, became 1,000)."""

from __future__ import annotations

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def _ignore(d: Delivery) -> None:
    return None


@pytest.mark.parametrize("differs", ["ack_wait", "max_deliver", "filter_subject"])
async def test_an_updated_durable_keeps_its_other_settings(bus: Bus, differs: str) -> None:
    """Before: max_ack_pending 3 -> 1000, max_waiting 7 -> 512, description dropped."""
    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="ops", ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=5.0 if differs == "ack_wait" else 30.0,
        max_deliver=10 if differs == "max_deliver" else -1,
        filter_subject=None if differs == "filter_subject" else bus.subject,
        max_ack_pending=3, max_waiting=7, description="set by ops"))
    consumer = Consumer(bus.js, _ignore, ConsumerOptions(
        stream=bus.stream, durable="ops", filter_subject=bus.subject,
        registry=CollectorRegistry(), tracing=False, access_log=False))
    await consumer.start()
    try:
        c = (await bus.js.consumer_info(bus.stream, "ops")).config
    finally:
        await consumer.aclose()
    assert (c.ack_wait, c.max_deliver, c.filter_subject) == (30.0, -1, bus.subject)
    assert (c.max_ack_pending, c.max_waiting, c.description) == (3, 7, "set by ops")
    assert consumer._pull_batch == 3  # pulled within it
