"""A publish that nats-py refuses before sending anything (a header name it cannot send,
such as ``X/Trace`` read from another client's message or stored in an outbox row; a
connection closed for good) must not leave its reply future in the connection's
``_resp_map``: nats-py registers it before ``publish`` raises and never removes it, so an
outbox event with such a header, retried every ``error_backoff``, grew the map for ever."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Publisher, PublishError, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def test_a_header_nats_py_refuses_leaves_no_reply_future(bus: Bus) -> None:
    """Before: each refused publish left one more future (3 here)."""
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry(),
                                                 tracing=False, access_log=False))
    await publisher.publish(bus.subject, b"ok", msg_id="first")  # the reply inbox made
    before = len(bus.nc._resp_map)
    for i in range(3):
        with pytest.raises(PublishError, match="BadHeaderError"):
            await publisher.publish(bus.subject, b"x", msg_id=f"bad-{i}",
                                    headers={"X/Trace": "abc"})
    assert len(bus.nc._resp_map) == before
