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


async def test_a_subject_too_long_for_the_servers_control_line_is_refused(bus: Bus) -> None:
    """A subject that makes the ``HPUB`` line longer than the server's
    ``max_control_line`` (4096 by default, not announced in ``INFO``): the server
    answers ``-ERR 'Maximum Control Line Exceeded'`` and nats-py closes the connection
    for good (every later publish and pull on it failed ConnectionClosedError). It is
    refused with PublishError before sending; the connection stays open and the next
    publish is acked. A subject just below the limit is still published (guard)."""
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry(),
                                                 timeout_s=1.0))
    with pytest.raises(PublishError, match="max_control_line"):
        await publisher.publish(bus.subject + "." + "x" * 5000, b"x", msg_id="long")
    assert not bus.nc.is_closed
    ack = await publisher.publish(bus.subject + "." + "x" * 3900, b"x", msg_id="fits")
    assert ack.seq == 1
    assert not bus.nc.is_closed
