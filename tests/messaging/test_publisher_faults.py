"""Faults found reviewing the publishing side (Publisher, OutboxRelay) against JetStream's
semantics, each on the real NATS (the shared server, a stream of the test's own)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy, StreamConfig
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    OutboxEvent,
    Publisher,
    PublishError,
    PublishOptions,
)
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class _MemOutbox:
    def __init__(self, events: list[OutboxEvent]) -> None:
        self.events = events
        self.sent: list[str] = []

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return [e for e in self.events if e.event_id not in self.sent][:limit]

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        self.sent.extend(i for i in event_ids if i not in self.sent)


@pytest.fixture
async def full_stream(bus: Bus) -> AsyncIterator[tuple[str, str]]:
    """A stream of one message at most, discard new, already holding it: (name, subject)."""
    tag = uuid.uuid4().hex[:10]
    name, subject = f"F{tag}", f"f{tag}.x"
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"f{tag}.>"], max_msgs=1,
                                         discard=DiscardPolicy.NEW, duplicate_window=60))
    await bus.js.publish(subject, b"first", headers={"Nats-Msg-Id": "first"})
    try:
        yield name, subject
    finally:
        await bus.js.delete_stream(name)


async def test_a_stream_full_with_discard_new_is_not_retried(
        bus: Bus, full_stream: tuple[str, str], prom: CollectorRegistry) -> None:
    """A stream at its limits with discard new answers a publish 503 "maximum messages
    exceeded" (err_code 10077): the stream refuses to store it, and will until room is
    made (an ack in a work queue, max_age). That is no outage to retry at once: the
    publish fails at its first attempt, spends nothing of the retry budget other
    publishes share, and its cause names the refusal."""
    _, subject = full_stream
    publisher = Publisher(bus.js, PublishOptions(
        registry=prom, max_attempts=3,
        backoff=Backoff(base_delay_s=0.2, max_delay_s=0.2, rng=_NoJitter())))
    with pytest.raises(PublishError) as err:
        await asyncio.wait_for(publisher.publish(subject, b"second", msg_id="second"), 8)
    cause = err.value.__cause__
    assert isinstance(cause, nats.js.errors.APIError) and cause.err_code == 10077
    assert "maximum messages exceeded" in str(err.value)
    assert _sample(prom, "meshkit_messaging_publish_retries_total", subject=subject) == 0
    assert publisher.budget.retries_in_window() == 0
