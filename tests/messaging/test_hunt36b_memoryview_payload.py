"""``Publisher.publish`` takes a ``memoryview`` payload; one whose items are wider than a
byte (``memoryview(array('i', ...))``, a NumPy buffer) has a ``len()`` of items, not
bytes, which nats-py wrote as the message size on its protocol line while sending every
byte: the server took the connection's protocol for garbage, and the connection, and
every publish and consumer on it, was lost. The payload's bytes must be published."""

from __future__ import annotations

from array import array

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Publisher, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def test_a_memoryview_of_wide_items_is_published_whole(bus: Bus) -> None:
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry(),
                                                 tracing=False, access_log=False,
                                                 timeout_s=2.0, max_attempts=1))
    data = array("i", range(8))
    ack = await publisher.publish(bus.subject, memoryview(data), msg_id="wide")
    stored = await bus.js.get_msg(bus.stream, ack.seq)
    assert stored.data == data.tobytes()
    assert not bus.nc.is_closed
    await publisher.publish(bus.subject, b"after", msg_id="after")  # still connected
