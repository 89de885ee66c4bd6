"""A consumer's lag metric reads ``Meshkit-Sent-At-Ms`` from whoever published the
message (without a verifier nobody checked it): a value Python's ``str.isdigit`` takes but
``int`` does not (a superscript digit), or one too long for a float, must not break the
handling of the message or of the batch it came in."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from prometheus_client import CollectorRegistry

from meshkit.messaging import HDR_SENT_AT_MS, Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("sent", ["\u00b2", "9" * 400, "1" * 5000])
async def test_a_bad_sent_at_header_is_no_lag_and_breaks_nothing(bus: Bus, sent: str) -> None:
    """A message whose ``Meshkit-Sent-At-Ms`` is digits ``int`` refuses (``'²'``), or a
    number no float holds, is acked and reported like any other, no lag observed, and
    the message after it in the same batch is handled in the same ``run_once``."""
    await bus.js.publish(bus.subject, b"odd", headers={HDR_SENT_AT_MS: sent,
                                                      "Nats-Msg-Id": "odd"})
    await bus.js.publish(bus.subject, b"next", headers={"Nats-Msg-Id": "next"})
    seen: list[str] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.msg_id)

    reg = CollectorRegistry()
    consumer = Consumer(bus.js, handler, ConsumerOptions(
        stream=bus.stream, durable="lag", ack_wait_s=10, registry=reg))
    before = otel_context.get_current()
    try:
        handled = await consumer.run_once()
    finally:
        await consumer.aclose()
    assert (handled, seen) == (2, ["odd", "next"])
    assert otel_context.get_current() is before  # the message's context was detached
    acked = reg.get_sample_value("meshkit_messaging_consumed_total",
                                 {"subject": bus.subject, "consumer": "lag",
                                  "outcome": "ack"})
    assert acked == 2.0

    async def settled() -> bool:  # acks are sent without a reply: the server's count
        info = await bus.js.consumer_info(bus.stream, "lag")
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await until(settled, timeout_s=5, what="both messages acked")
