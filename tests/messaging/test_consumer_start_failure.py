"""A ``Consumer.start()`` that fails after binding the durable (its ``consumer_info``
timing out while JetStream elects a leader, the connection failing) leaves no
subscription behind: ``run()`` calls ``start()`` again after each backoff, and each
failed one used to keep the PullSubscription it had made (one more subscription on the
connection and on the server per retry)."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.js.client import JetStreamContext
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def _handler(d: Delivery) -> None:
    return None


async def test_a_failed_start_leaves_no_subscription(bus: Bus,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Three starts whose post-bind consumer_info times out: the connection holds as
    many subscriptions as before them; a start after the failures works."""
    consumer = Consumer(bus.js, _handler, ConsumerOptions(
        stream=bus.stream, durable="flaky", registry=CollectorRegistry()))
    await consumer.start()  # the durable exists, as in a restart
    await consumer.aclose()
    before = len(bus.nc._subs)

    async def times_out(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise nats.errors.TimeoutError

    with monkeypatch.context() as m:
        m.setattr(JetStreamContext.PullSubscription, "consumer_info", times_out)
        for _ in range(3):
            with pytest.raises(nats.errors.TimeoutError):
                await consumer.start()
    assert len(bus.nc._subs) == before
    await consumer.start()
    await consumer.aclose()
    assert len(bus.nc._subs) == before
