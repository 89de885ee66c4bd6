"""nats-server (2.9.10, the one here) finds a JetStream control header of a message by
the FIRST occurrence of its name in the header block, and when that occurrence is not at
the start of a line (another header's name ends with it, ``X-Nats-Msg-Id``, or a value
mentions it, ``Note: copied Nats-Msg-Id``) it takes the message as having none. A
publisher that wrote ``Nats-Msg-Id`` after the caller's headers, and a consumer that
wrote it after the copied headers and the reason of a dead letter, then published with
the dedupe off: a retried publish, a relay repeating an event, a dead letter whose
``term`` was lost were stored twice. meshkit now writes ``Nats-Msg-Id`` (and
``Nats-Expected-Stream``) first."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    DLQ_MSG_ID_HEADER,
    MSG_ID_HEADER,
    Consumer,
    ConsumerOptions,
    Delivery,
    PoisonMessage,
    Publisher,
    PublishOptions,
)
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)

_HEADERS = {
    "name-ends-with-it": {"X-Nats-Msg-Id": "upstream-7"},
    "value-mentions-it": {"Note": "forwarded with its Nats-Msg-Id"},
    "lowercase-copy": {"nats-msg-id": "other"},
}


def _publisher(bus: Bus, *, stream: str | None = None) -> Publisher:
    return Publisher(bus.js, PublishOptions(
        stream=stream, tracing=False, metrics=False, access_log=False))


@pytest.mark.parametrize("headers", list(_HEADERS.values()), ids=list(_HEADERS))
async def test_a_repeat_is_dropped_whatever_the_callers_headers_say(
        bus: Bus, headers: dict[str, str]) -> None:
    """Before: with the first two, both publishes were stored (seq 1 and 2)."""
    publisher = _publisher(bus)
    first = await publisher.publish(bus.subject, b"e", msg_id="evt-1", headers=headers)
    again = await publisher.publish(bus.subject, b"e", msg_id="evt-1", headers=headers)
    assert again.duplicate
    assert again.seq == first.seq
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 1
    stored = await bus.js.get_last_msg(bus.stream, bus.subject)
    assert (stored.headers or {})[MSG_ID_HEADER] == "evt-1"
    for k, v in headers.items():  # the caller's headers still travel
        assert (stored.headers or {})[k] == v


async def test_the_expected_stream_is_checked_whatever_the_callers_headers_say(
        bus: Bus) -> None:
    """Before: a header mentioning ``Nats-Expected-Stream`` hid the expectation and the
    message was stored in a stream that is not the one asked for."""
    publisher = _publisher(bus, stream="NOT" + bus.stream)
    with pytest.raises(Exception, match="expected stream"):
        await publisher.publish(bus.subject, b"e", msg_id="evt-2",
                                headers={"X-Nats-Expected-Stream": bus.stream})
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 0


async def test_a_dead_letter_whose_reason_mentions_the_header_is_stored_once(
        bus: Bus) -> None:
    """A handler's PoisonMessage text goes in the dead letter's reason header, before
    its ``Nats-Msg-Id``: before, the second dead-lettering (the term lost) stored a
    second dead letter."""
    publisher = _publisher(bus)
    await publisher.publish(bus.subject, b"x", msg_id="evt-3")

    async def poison(d: Delivery) -> None:
        raise PoisonMessage("no order in it: check the Nats-Msg-Id upstream")

    consumer = Consumer(bus.js, poison, ConsumerOptions(
        stream=bus.stream, durable="reasons", filter_subject=bus.subject,
        dead_letter_subject=bus.dlq, registry=CollectorRegistry(), tracing=False,
        access_log=False))
    await consumer.start()
    try:
        pulls = consumer._pulls
        assert pulls is not None
        msgs: list[Msg] = []
        await pulls.pull(1, 2.0, msgs)
        assert len(msgs) == 1
        msg = msgs[0]
        assert await consumer.handle(msg) == "dead_letter"
        msg._ackd = False  # the term was lost: delivered again, dead-lettered again
        assert await consumer.handle(msg) == "dead_letter"
    finally:
        await consumer.aclose()
    info = await bus.js.stream_info(bus.stream, subjects_filter=bus.dlq)
    assert (info.state.subjects or {}).get(bus.dlq) == 1
    stored = await bus.js.get_last_msg(bus.stream, bus.dlq)
    assert (stored.headers or {})[DLQ_MSG_ID_HEADER] == "evt-3"
