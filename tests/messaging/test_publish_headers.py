"""``Publisher.publish``'s ``headers`` map strings to strings: another key or value is a
``TypeError`` naming it, before anything is sent, as a payload that is no ``bytes`` is,
not an ``AttributeError`` from deep inside the size check or nats-py."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Publisher, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("headers", [{"Order-Qty": 2}, {"Order-Qty": b"2"},
                                     {"Order-Qty": None}, {7: "x"}])
async def test_a_header_that_is_no_string_is_a_type_error(
        bus: Bus, headers: dict[object, object]) -> None:
    """TypeError naming the header; nothing stored."""
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry()))
    with pytest.raises(TypeError, match="header"):
        await publisher.publish(bus.subject, b"x", msg_id="e1",
                                headers=headers)  # type: ignore[arg-type]
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 0
