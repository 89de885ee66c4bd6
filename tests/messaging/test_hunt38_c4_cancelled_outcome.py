"""A publish cancelled by its caller (a gRPC call the client gave up, an outbox relay's
``aclose()`` at shutdown) and a delivery whose handler was interrupted by the consumer's
own shutdown (every rolling restart) were counted ``outcome="error"`` and logged as
failures (``outcome=error``, a warning), so an error-rate alert on
``meshkit_messaging_published_total`` / ``..._consumed_total`` fired on each deploy
and each caller that went away while NATS was healthy, as gRPC's telemetry counts such
a call ``Cancelled``, not as a failure. They are now ``outcome="cancelled"`` (the span
keeps its error status, "cancelled"; the access-log line is an info one)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery, Publisher, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


async def test_a_cancelled_publish_is_counted_cancelled(bus: Bus) -> None:
    silent = bus.subject.split(".")[0] + "x.silent"  # no stream: a listener that never answers
    sub = await bus.nc.subscribe(silent)
    prom = CollectorRegistry()
    publisher = Publisher(bus.js, PublishOptions(timeout_s=10.0, registry=prom,
                                                 tracing=False, access_log=False))
    try:
        task = asyncio.create_task(publisher.publish(silent, b"x", msg_id="e1"))
        await asyncio.wait_for(sub.next_msg(timeout=5), 10)  # the attempt is out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    finally:
        await sub.unsubscribe()
    # before: outcome="error"
    assert _sample(prom, "meshkit_messaging_published_total", subject=silent,
                   outcome="cancelled") == 1
    assert _sample(prom, "meshkit_messaging_published_total", subject=silent,
                   outcome="error") == 0


async def test_a_delivery_interrupted_by_the_consumers_shutdown_is_counted_cancelled(
        bus: Bus) -> None:
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "e2"})
    started = asyncio.Event()

    async def slow(d: Delivery) -> None:
        started.set()
        await asyncio.sleep(30)

    prom = CollectorRegistry()
    consumer = Consumer(bus.js, slow, ConsumerOptions(
        stream=bus.stream, durable="shutdown", filter_subject=bus.subject,
        registry=prom, tracing=False, access_log=False))
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    # before: outcome="error"
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                   consumer="shutdown", outcome="cancelled") == 1
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                   consumer="shutdown", outcome="error") == 0
