"""A failed message is nak'ed with its backoff's delay, which nats-py sends as
``int(delay * 10**9)`` nanoseconds. A ``Backoff`` with ``max_delay_s=math.inf`` (documented:
"no cap but the largest float") can draw delays past what JetStream takes: past 2**63 - 1
ns (about 292 years) nats-server 2.9 could not read the nak's delay and redelivered the
message at once (a retry storm where the backoff asked for years), and past ~1.8e299 s
nats-py's ``int(inf)`` raised ``OverflowError``, so the message was never settled and the
consumer's run() slept its backoff. The consumer now caps a nak's delay at JetStream's
longest duration (MAX_DURATION_S)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


class _Top(random.Random):
    """A random source whose uniform(a, b) is always b: the backoff's full cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize("base_s", [1e12, 1e300], ids=["past-int64-ns", "past-float-ns"])
async def test_a_huge_backoff_delays_the_redelivery(bus: Bus, base_s: float) -> None:
    """A handler failure with a backoff delay past JetStream's range is nak'ed ``retry``
    and not redelivered at once."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "huge-1"})
    calls: list[int] = []

    async def handler(d: Delivery) -> None:
        calls.append(d.delivery)
        raise RuntimeError("boom")

    consumer = Consumer(bus.js, handler, ConsumerOptions(
        stream=bus.stream, durable="huge", dead_letter_subject=bus.dlq,
        backoff=Backoff(base_delay_s=base_s, max_delay_s=math.inf, rng=_Top()),
        fetch_timeout_s=0.2, max_deliveries=5, registry=CollectorRegistry()))
    await consumer.start()
    try:
        for _ in range(3):  # the first pull takes the message; then nothing comes
            await asyncio.wait_for(consumer.run_once(), 10)
        info = await bus.js.consumer_info(bus.stream, "huge")
    finally:
        await consumer.aclose()
    assert calls == [1], f"redelivered at once: deliveries {calls}"
    assert info.num_ack_pending == 1 and info.num_redelivered == 0, info
