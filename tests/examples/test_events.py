"""Order events end to end on real NATS and both stores: the outbox is written with the
order, a relay killed between publish and mark loses nothing and duplicates nothing, and
the projection converges to the orders table (poison events go to the dead letters).
Here the relay's death is simulated in-process; real SIGKILLed processes are in
``test_event_processes.py``."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from examples.ecom import events
from examples.ecom.storage import ItemRecord, NewOrder, Store
from meshkit.messaging import (
    Consumer,
    Delivery,
    MessageSigner,
    MessageVerifier,
    OutboxEvent,
    OutboxRelay,
    PoisonMessage,
    Publisher,
    PublishOptions,
    RelayOptions,
)
from meshkit.resilience import Backoff
from tests.messaging import conftest as messaging_fixtures
from tests.messaging.conftest import Bus, Workloads
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

USERS = ("u-a", "u-b", "u-c")
bus = messaging_fixtures.bus  # the shared NATS with a fresh stream per test
workloads = messaging_fixtures.workloads


def _order(i: int) -> NewOrder:
    items = (ItemRecord("sku-1", 1 + i % 3, 250),)
    return NewOrder(user_id=USERS[i % 3], items=items, currency="EUR",
                    total_minor=(1 + i % 3) * 250, idempotency_key=f"k{i}",
                    fingerprint=f"f{i}", event_headers=(("traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),))


class CrashAfterPublish:
    """The store as a relay sees it, 'killed' (CancelledError, like a SIGKILL's lost
    work) at its first mark_sent: after publishing a batch, before marking it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def pending_events(self, limit: int) -> Sequence[OutboxEvent]:
        return await self.store.pending_events(limit)

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        raise asyncio.CancelledError


class ToTestStream:
    """An outbox store whose events go to the test's own stream (its subject instead of
    the ecom one); counts pending events when the inner store can."""

    def __init__(self, inner: CrashAfterPublish | Store, subject: str) -> None:
        self.inner = inner
        self.subject = subject

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return [OutboxEvent(e.event_id, self.subject, e.payload, e.headers)
                for e in await self.inner.pending_events(limit)]

    async def mark_sent(self, ids: Sequence[str]) -> None:
        await self.inner.mark_sent(ids)

    async def count_pending(self) -> int:
        count = getattr(self.inner, "count_pending", None)
        assert count is not None
        return int(await count())


async def test_outbox_written_with_the_order_and_rolled_back_with_it(store: Store) -> None:
    """A new order writes one pending OrderPlaced event; a keyed repeat writes none."""
    order, created = await store.place_order(_order(0))
    again, created2 = await store.place_order(_order(0))
    assert created and not created2 and again.id == order.id
    pending = await store.pending_events(10)
    assert len(pending) == 1
    body = json.loads(pending[0].payload)
    assert body["order_id"] == order.id and body["total_minor"] == order.total_minor
    assert pending[0].headers["traceparent"].startswith("00-0af76519")
    await store.mark_sent([pending[0].event_id, "unknown"])
    assert await store.pending_events(10) == []


async def test_relay_crash_then_projection_converges(
        store: Store, bus: Bus, workloads: Workloads) -> None:
    """40 orders; a relay dies after publishing its batch before marking it; a second
    relay republishes (dropped by the dedupe window); the projection, also fed a
    poison event, ends equal to the orders table, each event applied once."""
    prom = CollectorRegistry()
    for i in range(40):
        await store.place_order(_order(i))
    pub = Publisher(bus.js, PublishOptions(registry=prom,
                                           signer=MessageSigner(*workloads.orderd)))
    sub = bus.subject
    crashing = OutboxRelay(ToTestStream(CrashAfterPublish(store), sub), pub)
    with pytest.raises(asyncio.CancelledError):
        await crashing.relay_once()
    assert len(await store.pending_events(100)) == 40  # published, not marked
    relay = OutboxRelay(ToTestStream(store, sub), pub)
    assert await relay.relay_once() == 40
    assert await store.pending_events(100) == []
    dup = prom.get_sample_value("meshkit_messaging_published_total",
                                {"subject": sub, "outcome": "duplicate"})
    assert dup == 40
    await bus.js.publish(sub, b"not json", headers={"Nats-Msg-Id": "poison-1"})
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 41

    projection = events.Projection(store)
    consumer = Consumer(bus.js, projection, events.consumer_options(
        MessageVerifier(workloads.ca_pem), stream=bus.stream, filter_subject=sub,
        dead_letter_subject=bus.dlq, registry=prom, fetch_timeout_s=0.2,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.02)))

    async def drained() -> bool:
        await consumer.run_once()
        return projection.applied == 40 and prom.get_sample_value(
            "meshkit_messaging_consumed_total",
            {"subject": sub, "consumer": events.DURABLE, "outcome": "refused"}) == 1

    await until(drained, timeout_s=20, interval_s=0.01, what="projection drained")
    want = Counter[str]()
    totals = Counter[str]()
    for i in range(40):
        want[USERS[i % 3]] += 1
        totals[USERS[i % 3]] += (1 + i % 3) * 250
    for u in USERS:
        s = await store.order_summary(u)
        assert (s.order_count, s.total_minor) == (want[u], totals[u])
    # an event redelivered after the dedupe window counts once
    assert await store.apply_order_placed("late", "u-a", 1)
    assert not await store.apply_order_placed("late", "u-a", 1)
    assert (await store.order_summary("u-a")).order_count == want["u-a"] + 1


async def test_relay_exports_the_pending_count(store: Store, bus: Bus) -> None:
    """With a store that counts its outbox, each relay round sets
    meshkit_messaging_outbox_pending{outbox} to what is left."""
    prom = CollectorRegistry()
    for i in range(5):
        await store.place_order(_order(i))
    relay = OutboxRelay(ToTestStream(store, bus.subject),
                        Publisher(bus.js, PublishOptions(registry=prom)),
                        RelayOptions(batch_size=2, name="orders"))
    left = []
    for _ in range(4):
        await relay.relay_once()
        left.append(prom.get_sample_value("meshkit_messaging_outbox_pending",
                                          {"outbox": "orders"}))
    assert left == [3, 1, 0, 0]


class _RecordingStore:
    """The part of the ecom Store the projection uses, recording what it applies."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str, object]] = []

    async def apply_order_placed(self, event_id: str, user_id: str, total_minor: int) -> bool:
        self.applied.append((event_id, user_id, total_minor))
        return True


@pytest.mark.parametrize("total", ["true", "false", "1.5", '"250"', "null"])
async def test_projection_refuses_a_total_that_is_not_a_json_integer(total: str) -> None:
    """total_minor must be a JSON integer: a boolean (a Python int subclass, which
    isinstance(total, int) let through as an order of 1 or 0 minor units), a float, a
    string or null is poison (dead letter), never applied."""
    store = _RecordingStore()
    projection = events.Projection(store)  # type: ignore[arg-type]
    body = (b'{"type":"OrderPlaced","event_id":"e-1","user_id":"u-1","total_minor":'
            + total.encode() + b"}")
    with pytest.raises(PoisonMessage):
        await projection(Delivery("ecom.orders.placed", body, "e-1", {}, None, 1))
    assert store.applied == []
    ok = body.replace(total.encode(), b"250")
    await projection(Delivery("ecom.orders.placed", ok, "e-1", {}, None, 1))
    assert store.applied == [("e-1", "u-1", 250)]


def test_projection_redeliveries_outlast_a_store_outage() -> None:
    """The projection's consumer keeps redelivering an event it failed on (the summary
    store down) for over a minute before dead-lettering it, in 99 % of cases (full
    jitter), and about two minutes on average; with the consumer's defaults (5
    deliveries, 100 ms doubling) a valid event was dead-lettered after a 1.5 s outage."""
    opts = events.consumer_options(None)
    rng = random.Random(7)
    backoff = Backoff(base_delay_s=opts.backoff.base_delay_s,
                      max_delay_s=opts.backoff.max_delay_s,
                      multiplier=opts.backoff.multiplier, rng=rng)
    naks = range(1, opts.max_deliveries)  # the last failed delivery is dead-lettered
    waits = sorted(sum(backoff.delay_s(n) for n in naks) for _ in range(2000))
    assert waits[len(waits) // 100] > 60.0, waits[:20]
    assert 90.0 < waits[len(waits) // 2] < 180.0


async def test_the_demo_durable_starts_at_its_run(bus: Bus) -> None:
    """The demo's projection consumer (``demo_events.create_durable``) delivers the events
    stored from its run's start on, not a day of every earlier run's (the stream is shared
    and keeps them; a durable with ``DeliverPolicy.ALL`` replayed them all first), and
    the projection's ``Consumer.start`` binds to it as it is (no config update)."""
    from datetime import UTC, datetime

    from examples.ecom import demo_events
    from meshkit.messaging import ConsumerOptions

    for i in range(3):
        await bus.js.publish(bus.subject, b"earlier run", headers={"Nats-Msg-Id": f"old{i}"})
    await asyncio.sleep(0.05)
    since = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await bus.js.publish(bus.subject, b"this run", headers={"Nats-Msg-Id": "new"})
    where = {"stream": bus.stream, "filter_subject": bus.subject}
    await demo_events.create_durable(bus.js, since, **where)
    seen: list[bytes] = []

    async def handle(d: Delivery) -> None:
        seen.append(d.data)

    opts = events.consumer_options(None, durable=demo_events.DURABLE, metrics=False,
                                   tracing=False, access_log=False, fetch_timeout_s=0.3,
                                   **where)
    assert isinstance(opts, ConsumerOptions)
    consumer = Consumer(bus.js, handle, opts)
    await consumer.start()
    info = await bus.js.consumer_info(bus.stream, demo_events.DURABLE)
    assert info.config.deliver_policy == "by_start_time"  # nats-py gives the str back
    while await consumer.run_once():
        pass
    assert seen == [b"this run"]
