"""A message another NATS client published with a header name nats-py refuses to send
(outside HTTP's token characters: ``X/Trace``, ``user@id``; the server and nats-py's
parser take it) must still reach the dead letters: its dead letter copied every header,
nats-py raised ``BadHeaderError`` and the message was nak'ed, again on every delivery,
for ever."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from nats.protocol.command import hpub_cmd
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    DLQ_REASON_HEADER,
    Consumer,
    ConsumerOptions,
    Delivery,
    PoisonMessage,
)
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


async def test_a_message_with_a_header_name_nats_py_cannot_send_is_dead_lettered(
        bus: Bus) -> None:
    """Raw HPUB with ``X/Trace`` and ``user@id`` headers; the handler calls it poison:
    its dead letter is stored (with the reason and the headers nats-py can send) within
    3 s, and the original is not delivered again."""
    header = (b"NATS/1.0\r\nNats-Msg-Id: odd-1\r\nX/Trace: abc\r\nuser@id: 7\r\n"
              b"Keep-Me: yes\r\n\r\n")
    await bus.nc._send_command(hpub_cmd(bus.subject, "", header, b"payload"))
    await bus.nc.flush()
    deliveries: list[int] = []

    async def poison(d: Delivery) -> None:
        deliveries.append(d.delivery)
        raise PoisonMessage("cannot decode")

    consumer = Consumer(bus.js, poison, ConsumerOptions(
        stream=bus.stream, durable="odd", filter_subject=bus.subject,
        dead_letter_subject=bus.dlq, fetch_timeout_s=0.2,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.02), registry=CollectorRegistry()))
    task = asyncio.create_task(consumer.run())
    dlq = await bus.js.pull_subscribe(bus.dlq, durable="dlq-reader", stream=bus.stream)
    try:
        got: list[object] = []

        async def dead_lettered() -> bool:
            with contextlib.suppress(TimeoutError):  # nats-py's is one
                got.extend(await dlq.fetch(1, timeout=0.2))
            return bool(got)

        await until(dead_lettered, timeout_s=3, what="the dead letter stored")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    headers = got[0].headers or {}  # type: ignore[attr-defined]
    assert headers[DLQ_REASON_HEADER] == "poison: cannot decode"
    assert headers["Keep-Me"] == "yes"
    assert deliveries == [1]
