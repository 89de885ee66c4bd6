"""A dead letter whose protocol line would not fit the server's ``max_control_line``
(4096: a ``dead_letter_subject`` near its 3,840-byte bound and a connection with a long
``inbox_prefix``, whose request inbox is the HPUB's reply subject) must be nak'ed, never
sent: the server answers such a line ``-ERR 'Maximum Control Line Exceeded'`` and
nats-py closes the connection for good."""

from __future__ import annotations

import asyncio

import nats
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery, PoisonMessage
from meshkit.resilience import Backoff
from tests.messaging.conftest import NATS_URL, Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


async def test_a_dead_letter_too_long_for_the_protocol_line_is_nakd_not_sent(
        bus: Bus) -> None:
    """dead_letter_subject of 3,800 bytes, inbox_prefix of 300: the poison message is
    nak'ed and delivered again (twice within 3 s), and the consumer's connection stays
    open (closed for good within about 0.1 s before, at the first dead letter)."""
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0,
                            inbox_prefix="_INBOX." + "p" * 300)
    deliveries: list[int] = []

    async def poison(d: Delivery) -> None:
        deliveries.append(d.delivery)
        raise PoisonMessage("cannot decode")

    try:
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "p-1"})
        consumer = Consumer(nc.jetstream(timeout=3), poison, ConsumerOptions(
            stream=bus.stream, durable="longline", filter_subject=bus.subject,
            dead_letter_subject=f"{bus.subject}.dlq." + "x" * 3750, fetch_timeout_s=0.2,
            max_deliveries=10, backoff=Backoff(base_delay_s=0.01, max_delay_s=0.02),
            registry=CollectorRegistry()))
        task = asyncio.create_task(consumer.run())
        try:
            await until(lambda: len(deliveries) >= 2 or task.done(), timeout_s=3,
                        what="the poison message delivered again")
            assert not nc.is_closed, "the dead letter's HPUB line closed the connection"
            assert not task.done()
            assert deliveries[:2] == [1, 2]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await nc.close()
