"""A publish answered by a core NATS service (no stream captures the subject) raises
PublishError "not a JetStream ack", as documented. A reply nested deeper than Python's
JSON decoder recurses (``[[[[...``) made the decoder raise ``RecursionError``, which
publish let out as it was: an undocumented error type for the same fault. It is now a
PublishError like any other reply that is no ack, its cause the RecursionError."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats.aio.msg
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Publisher, PublishError, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def deep_service(bus: Bus) -> AsyncIterator[str]:
    """A subject no stream captures on which a core NATS service answers JSON nested
    100,000 deep."""
    subject = f"svc{uuid.uuid4().hex[:10]}.deep"

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"[" * 100_000)

    sub = await bus.nc.subscribe(subject, cb=answer)
    await bus.nc.flush()
    try:
        yield subject
    finally:
        await sub.unsubscribe()


async def test_a_reply_nested_too_deep_is_a_publish_error(
        bus: Bus, deep_service: str) -> None:
    """The deeply nested reply is reported as a PublishError saying it is no JetStream
    ack, caused by the decoder's RecursionError."""
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry()))
    with pytest.raises(PublishError, match="not a JetStream ack") as caught:
        await asyncio.wait_for(publisher.publish(deep_service, b"x", msg_id="d-1"), 8)
    assert isinstance(caught.value.__cause__, RecursionError)
