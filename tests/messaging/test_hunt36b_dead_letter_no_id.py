"""A message published without ``Nats-Msg-Id`` (another client's, or a core NATS
publish a stream captures) whose dead letter was stored but whose ``term`` was lost (the
connection dropped, the process died before it) is delivered again and dead-lettered
again: its dead letter must not be stored twice, as one with an id is not (the dead
letter's ``Nats-Msg-Id`` makes the repeat a duplicate)."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    DLQ_MSG_ID_HEADER,
    DLQ_SUBJECT_HEADER,
    Consumer,
    ConsumerOptions,
    Delivery,
    PoisonMessage,
)
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def _one(bus: Bus, consumer: Consumer) -> Msg:
    pulls = consumer._pulls
    assert pulls is not None
    msgs: list[Msg] = []
    await pulls.pull(1, 2.0, msgs)
    assert len(msgs) == 1
    return msgs[0]


async def test_a_dead_letter_of_a_message_without_id_is_stored_once(bus: Bus) -> None:
    """Before: the second dead-lettering of the same delivery (its term lost) stored a
    second dead letter; now the stream drops it as a duplicate, and the dead letter
    still says the original had no id."""
    await bus.nc.publish(bus.subject, b"no id here")  # a core NATS publish
    await bus.nc.flush()

    async def poison(d: Delivery) -> None:
        raise PoisonMessage("cannot decode")

    consumer = Consumer(bus.js, poison, ConsumerOptions(
        stream=bus.stream, durable="noid", filter_subject=bus.subject,
        dead_letter_subject=bus.dlq, registry=CollectorRegistry(), tracing=False,
        access_log=False))
    await consumer.start()
    try:
        msg = await _one(bus, consumer)
        assert await consumer.handle(msg) == "dead_letter"
        # the term was lost: JetStream delivers it again (the same reply subject: the
        # consumer's count of deliveries is then the server's), the handler fails again
        msg._ackd = False
        assert await consumer.handle(msg) == "dead_letter"
    finally:
        await consumer.aclose()
    info = await bus.js.stream_info(bus.stream, subjects_filter=bus.dlq)
    assert (info.state.subjects or {}).get(bus.dlq) == 1
    stored = await bus.js.get_last_msg(bus.stream, bus.dlq)
    headers = stored.headers or {}
    assert headers[DLQ_SUBJECT_HEADER] == bus.subject
    assert headers.get(DLQ_MSG_ID_HEADER, "") == ""
