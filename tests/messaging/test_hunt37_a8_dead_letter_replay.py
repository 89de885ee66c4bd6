"""A signed event copied to another subject with dead-letter headers.

Anyone who may publish to NATS (no workload key needed) could take a signed event from a
stream (``orders.created`` by orderd) and publish it again on another subject a consumer
acts on (``refunds`` here), adding ``Meshkit-Dead-Letter-Consumer``,
``Meshkit-Original-Subject`` and ``Meshkit-Original-Msg-Id`` (unsigned): every consumer
verified it against the original subject and handed it to its handler as a verified
orderd event on ``refunds`` (``Delivery.subject``), though orderd never published there.
Only a consumer that reads dead letters (``ConsumerOptions(dead_letters=True)``: a
dead-letter processor) now takes the dead-letter headers; any other verifies a message
against the subject it came on, so the copy is refused (and term'ed, never
dead-lettered again), and a genuine dead letter reaching it says why.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from meshkit.errors import ConfigError
from meshkit.messaging import (
    DLQ_CONSUMER_HEADER,
    DLQ_SUBJECT_HEADER,
    Consumer,
    ConsumerOptions,
    Delivery,
    MessageSigner,
    MessageVerifier,
    PoisonMessage,
    Publisher,
    PublishOptions,
)
from tests.messaging.conftest import Bus, Workloads


def _consumer(bus: Bus, handler: Any, prom: CollectorRegistry, durable: str,
              subject: str, **kw: Any) -> Consumer:
    return Consumer(bus.js, handler, ConsumerOptions(
        stream=bus.stream, durable=durable, filter_subject=subject,
        dead_letter_subject=f"{bus.dlq}.{durable}", fetch_timeout_s=0.2, registry=prom,
        **kw))


async def _until_outcome(c: Consumer, prom: CollectorRegistry, subject: str,
                         durable: str, outcome: str, got: list[Any] | None = None) -> None:
    """Run ``c`` until it counted ``outcome`` (or its handler got something)."""
    end = time.monotonic() + 10
    labels = {"subject": subject, "consumer": durable, "outcome": outcome}
    while time.monotonic() < end:
        await c.run_once()
        if prom.get_sample_value("meshkit_messaging_consumed_total", labels) or got:
            return
    raise AssertionError(f"no {outcome} on {subject} by {durable}")


async def test_an_event_replayed_as_a_dead_letter_on_another_subject_is_refused(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads) -> None:
    signed = Publisher(bus.js, PublishOptions(registry=prom,
                                              signer=MessageSigner(*workloads.orderd)))
    ack = await signed.publish(bus.subject, b'{"order": 7, "amount": 100}', msg_id="o-7")
    stored = await bus.js.get_msg(bus.stream, ack.seq)
    forged = {k: v for k, v in (stored.headers or {}).items() if k != "Nats-Msg-Id"}
    forged.update({DLQ_CONSUMER_HEADER: f"{bus.stream}/whatever",
                   DLQ_SUBJECT_HEADER: bus.subject, "Meshkit-Original-Msg-Id": "o-7",
                   "Meshkit-Dead-Letter-Reason": "x", "Nats-Msg-Id": "replay-1"})
    refunds = bus.subject.replace("orders", "refunds")
    await bus.js.publish(refunds, stored.data or b"", headers=forged)  # no key needed
    got: list[tuple[str, str | None]] = []

    async def refund(d: Delivery) -> None:
        got.append((d.subject, d.publisher.spiffe_id if d.publisher else None))

    verifier = MessageVerifier(workloads.ca_pem)
    c = _consumer(bus, refund, prom, "refunds", refunds, verifier=verifier)
    await _until_outcome(c, prom, refunds, "refunds", "refused", got)
    assert got == []  # before: [(refunds, 'spiffe://meshkit.test/svc/orderd')]


async def test_a_dead_letter_processor_asks_for_dead_letters(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads) -> None:
    """A genuine dead letter: a processor with dead_letters=True gets it with its
    original publisher and subject; a consumer without it refuses it, saying why."""
    signed = Publisher(bus.js, PublishOptions(registry=prom,
                                              signer=MessageSigner(*workloads.orderd)))
    await signed.publish(bus.subject, b"x", msg_id="o-1")
    verifier = MessageVerifier(workloads.ca_pem)

    async def poison(d: Delivery) -> None:
        raise PoisonMessage("bad")

    main = _consumer(bus, poison, prom, "main", bus.subject, verifier=verifier)
    await _until_outcome(main, prom, bus.subject, "main", "dead_letter")
    dlq = f"{bus.dlq}.main"
    got: list[tuple[str | None, str]] = []

    async def handle(d: Delivery) -> None:
        got.append((d.publisher.spiffe_id if d.publisher else None, d.original_subject))

    plain = _consumer(bus, handle, prom, "plain", dlq, verifier=verifier)
    with capture_logs() as logs:
        await _until_outcome(plain, prom, dlq, "plain", "refused", got)
    assert any("dead_letters=True" in str(e) for e in logs), logs
    assert got == []
    processor = _consumer(bus, handle, prom, "proc", dlq, verifier=verifier,
                          dead_letters=True)
    await _until_outcome(processor, prom, dlq, "proc", "ack")
    assert got == [("spiffe://meshkit.test/svc/orderd", bus.subject)]


@pytest.mark.parametrize("bad", ["true", 1, None], ids=["str", "int", "none"])
def test_dead_letters_must_be_a_flag(bad: object) -> None:
    with pytest.raises(ConfigError, match="dead_letters"):
        ConsumerOptions(stream="S", durable="d", dead_letters=bad)  # type: ignore[arg-type]
