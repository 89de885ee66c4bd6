"""A pull must not bring more bytes than the consumer's pull inbox holds: nats-py drops
what does not fit in a subscription's pending limit (a slow consumer, 128 MiB by
default), and a dropped message stays delivered but unacked on the server, held until
its ack wait and counted as a delivery each time (``max_deliveries`` such drops and it
is dead-lettered without its handler having run). Here the inbox's limit is made small
(60 kB) so that a batch of ten 10 kB messages stands for a batch of large messages
against the 128 MiB default."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(60)

_INBOX_LIMIT = 60_000


def _small_inboxes(nc: Client, slow: list[Any]) -> None:
    """Make the subscriptions ``nc`` opens from now on hold at most 60 kB pending, and
    record the slow-consumer errors nats-py reports."""
    subscribe = nc.subscribe

    async def small(subject: str, **kw: Any) -> Any:
        kw.setdefault("pending_bytes_limit", _INBOX_LIMIT)
        return await subscribe(subject, **kw)

    nc.subscribe = small  # type: ignore[method-assign]
    report = nc._error_cb

    async def error_cb(exc: Exception) -> None:
        slow.append(exc)
        await report(exc)

    nc._error_cb = error_cb


async def test_a_batch_larger_than_the_inbox_is_not_dropped(bus: Bus) -> None:
    """Before: the pull for 10 brought all 10; nats-py kept 5 and dropped the rest
    (SlowConsumerError), which were then neither handled nor given back: after three
    rounds 5 of 10 were handled, the others held until their ack wait (30 s)."""
    for i in range(10):
        await bus.js.publish(bus.subject, bytes([48 + i]) * 10_000,
                             headers={"Nats-Msg-Id": f"m{i}"})
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.msg_id)

    slow: list[Any] = []
    _small_inboxes(bus.nc, slow)
    consumer = Consumer(bus.js, handler, ConsumerOptions(
        stream=bus.stream, durable="bytes", filter_subject=bus.subject, batch_size=10,
        registry=CollectorRegistry(), tracing=False, access_log=False))
    try:
        for _ in range(4):
            await consumer.run_once()
            if len(handled) == 10:
                break
    finally:
        await consumer.aclose()
    assert sorted(handled) == [f"m{i}" for i in range(10)]
    assert not [e for e in slow if type(e).__name__ == "SlowConsumerError"]


async def test_a_durable_with_its_own_max_bytes_is_still_pulled(bus: Bus) -> None:
    """A durable made with a ``max_bytes`` (``MaxRequestMaxBytes``, 100 kB here) refuses
    a pull whose ``max_bytes`` is larger (``409 Exceeded MaxRequestMaxBytes``); the
    consumer then pulls without one, as before the ``max_bytes`` above. Before that: every
    pull refused, nothing ever handled."""
    for i in range(3):
        await bus.js.publish(bus.subject, b"x" * 100, headers={"Nats-Msg-Id": f"m{i}"})
    config = {"durable_name": "capped", "ack_policy": "explicit", "max_deliver": -1,
              "ack_wait": 30_000_000_000, "filter_subject": bus.subject,
              "max_bytes": 100_000}  # nats-py's ConsumerConfig has no field for it
    reply = await bus.nc.request(
        f"$JS.API.CONSUMER.DURABLE.CREATE.{bus.stream}.capped",
        json.dumps({"stream_name": bus.stream, "config": config}).encode(), timeout=5)
    assert "error" not in json.loads(reply.data)
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.msg_id)

    consumer = Consumer(bus.js, handler, ConsumerOptions(
        stream=bus.stream, durable="capped", filter_subject=bus.subject,
        registry=CollectorRegistry(), tracing=False, access_log=False))
    try:
        for _ in range(3):
            await consumer.run_once()
            if len(handled) == 3:
                break
    finally:
        await consumer.aclose()
    assert handled == ["m0", "m1", "m2"]
