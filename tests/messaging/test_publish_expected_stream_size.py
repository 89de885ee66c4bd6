"""The size a publish checks against the server's ``max_payload`` counted the
``Nats-Expected-Stream`` header (``PublishOptions.stream``) in characters: a stream name
of non-ASCII characters (JetStream takes them) counts up to twice as many bytes, so a
message just over ``max_payload`` passed the check, was sent, and the server closed the
connection for good (``Maximum Payload Violation``)."""

from __future__ import annotations

import uuid

import nats
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Publisher, PublishError, PublishOptions, ensure_stream
from meshkit.messaging._publisher import message_size
from tests.messaging.conftest import NATS_URL, require_nats

pytestmark = pytest.mark.timeout(30)


async def test_a_message_over_max_payload_with_a_unicode_stream_name_is_refused() -> None:
    """Stream 'É' x 100 + tag (206 bytes, 106 characters); a message 10 bytes over
    max_payload with its headers: PublishError, the connection kept (before: sent, the
    connection closed)."""
    await require_nats()
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    js = nc.jetstream(timeout=3)
    tag = uuid.uuid4().hex[:6]
    stream, subject = "É" * 100 + tag, f"u{tag}.orders"
    await ensure_stream(js, stream, [f"u{tag}.>"])
    try:
        publisher = Publisher(js, PublishOptions(stream=stream, tracing=False,
                                                 registry=CollectorRegistry()))
        headers = {"Nats-Msg-Id": "big"}
        expected = len("Nats-Expected-Stream: \r\n") + len(stream.encode())
        size = nc.max_payload + 10 - message_size(b"", headers) - expected
        with pytest.raises(PublishError, match="max_payload"):
            await publisher.publish(subject, b"x" * size, msg_id="big")
        assert not nc.is_closed
        ack = await publisher.publish(subject, b"x", msg_id="small")  # still open
        assert ack.seq == 1
    finally:
        if not nc.is_closed:
            await js.delete_stream(stream)
            await nc.close()
        else:
            cleanup = await nats.connect(NATS_URL, connect_timeout=2)
            await cleanup.jetstream().delete_stream(stream)
            await cleanup.close()
