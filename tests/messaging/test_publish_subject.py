"""``Publisher.publish`` sends to a subject NATS allows a publisher (NATS docs,
Subject-Based Messaging: "Publishers will always send a message to a fully specified
subject"): a wildcard or an empty token is refused before anything is sent, rather than
stored by JetStream under a literal ``*`` / ``>`` that no consumer of the real subject
sees, or retried against a stream that can never answer, spending the retry budget
every publish of the publisher shares."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Publisher, PublishError, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("tail", [".*", ".>", ".*.x", "..x", ".", " .x"])
async def test_a_subject_no_publisher_may_use_is_refused_before_sending(
        bus: Bus, tail: str) -> None:
    """A subject with a wildcard token or an empty one: PublishError quoting it, no
    message stored, no retry spent."""
    reg = CollectorRegistry()
    publisher = Publisher(bus.js, PublishOptions(registry=reg, timeout_s=0.5))
    subject = bus.subject + tail
    with pytest.raises(PublishError, match="subject"):
        await publisher.publish(subject, b"x", msg_id="e1")
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 0
    retries = reg.get_sample_value("meshkit_messaging_publish_retries_total",
                                   {"subject": subject})
    assert not retries


async def test_a_plain_subject_is_still_published(bus: Bus) -> None:
    """The check passes an ordinary subject (guard)."""
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry()))
    ack = await publisher.publish(bus.subject + ".created", b"x", msg_id="e1")
    assert ack.seq == 1
