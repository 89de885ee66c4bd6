"""A publish to a subject in JetStream's API (``$JS.API.>``), which no stream can
capture (nats-server: "subjects overlap with jetstream api"), was sent: it is then an
API request, not an event. ``$JS.API.STREAM.PURGE.ORDERS`` purged the stream and came
back as "a reply that is not a JetStream ack", and an outbox relay tried that event
again after each backoff, purging it again and again (``...STREAM.DELETE...`` deleted
it; a dead-letter subject there did the same with each dead letter). Now refused
before anything is sent, as a wildcard subject is."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions, Publisher, PublishError, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def test_a_publish_into_the_jetstream_api_is_refused_unsent(bus: Bus) -> None:
    publisher = Publisher(bus.js, PublishOptions(tracing=False, metrics=False,
                                                 access_log=False))
    await publisher.publish(bus.subject, b"kept", msg_id="e1")
    for subject in (f"$JS.API.STREAM.PURGE.{bus.stream}", f"$JS.API.STREAM.DELETE.{bus.stream}"):
        with pytest.raises(PublishError, match=r"\$JS\.API") as caught:
            await publisher.publish(subject, b"", msg_id="e2")
        assert caught.value.__cause__ is None  # refused, not a reply read
    info = await bus.js.stream_info(bus.stream)  # before: purged (then deleted)
    assert info.state.messages == 1


async def test_subjects_beside_the_api_are_still_published(bus: Bus) -> None:
    """Only the API itself: ``$JS.APIX`` or ``x.$JS.API`` are ordinary subjects a stream
    can capture."""
    await bus.js.add_stream(name=bus.stream + "X", subjects=["$JS.APIX.>"])
    try:
        publisher = Publisher(bus.js, PublishOptions(tracing=False, metrics=False,
                                                     access_log=False))
        ack = await publisher.publish("$JS.APIX.orders", b"x", msg_id="e3")
        assert ack.stream == bus.stream + "X"
        ack = await publisher.publish(bus.subject + ".$JS.API", b"x", msg_id="e4")
        assert ack.stream == bus.stream
    finally:
        await bus.js.delete_stream(bus.stream + "X")


def test_a_dead_letter_subject_in_the_jetstream_api_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\$JS\.API"):
        ConsumerOptions(stream="ORDERS", durable="d",
                        dead_letter_subject="$JS.API.STREAM.DELETE.ORDERS")
