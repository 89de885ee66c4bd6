"""``nc.drain()``, NATS's graceful close, under a running Consumer: nats-py drains a
subscription by waiting until its queue is empty, and a Consumer takes its pulled batch
out of its inbox's queue at once, so the drain closed the connection within
milliseconds while a handler ran. Its ack then failed (the message handled again after
``ack_wait_s``) and so did the naks of the batch's messages waiting their turn (held for
``ack_wait_s`` too). Now the drain waits for the message being handled (acked), the rest
of the batch is given back at once (nak'ed: another process of the durable takes it),
no pull is sent on the draining connection (its messages would go to an inbox no
longer subscribed), and run() ends with ``ConnectionClosedError``."""

from __future__ import annotations

import asyncio
from collections import Counter

import nats
import nats.errors
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

N = 20


def _options(bus: Bus) -> ConsumerOptions:
    # an ack wait far longer than the test's waits: a message held for it fails the test
    return ConsumerOptions(stream=bus.stream, durable="drained", batch_size=10,
                           ack_wait_s=60.0, fetch_timeout_s=0.5,
                           registry=CollectorRegistry())


async def test_a_drain_waits_for_the_handler_and_gives_the_batch_back(bus: Bus) -> None:
    """Drained while the 2nd message of a 10-message batch is handled: that message is
    acked, the other 8 go back at once, and a Consumer on another connection handles
    all 18 left within 15 s (ack_wait_s is 60 s): each of the 20 messages handled once;
    run() ends with ConnectionClosedError, logging no failed fetch."""
    for i in range(N):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"e{i}"})
    handled: Counter[str] = Counter()
    first: list[str] = []
    entered = asyncio.Event()

    async def slow(d: Delivery) -> None:
        first.append(d.msg_id)
        if len(first) == 2:
            entered.set()
        await asyncio.sleep(0.5)
        handled[d.msg_id] += 1

    nc = await nats.connect(bus.url, connect_timeout=2)
    task = asyncio.create_task(Consumer(nc.jetstream(), slow, _options(bus)).run())
    try:
        await asyncio.wait_for(entered.wait(), 15)
        with capture_logs() as logs:
            await asyncio.wait_for(nc.drain(), 15)
            done, _ = await asyncio.wait((task,), timeout=10)
        assert done, "run() still going after the drain"
        assert not [e for e in logs if e["event"] == "consumer fetch failed"], logs
        with pytest.raises(nats.errors.ConnectionClosedError):
            task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not nc.is_closed:
            await nc.close()
    assert handled == Counter({first[0]: 1, first[1]: 1}), first

    async def fast(d: Delivery) -> None:
        handled[d.msg_id] += 1

    other = asyncio.create_task(Consumer(bus.js, fast, _options(bus)).run())
    try:
        await until(lambda: len(handled) == N, timeout_s=15,
                    what=f"all {N} messages handled")
    finally:
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
    assert max(handled.values()) == 1, handled


async def test_a_drain_of_an_idle_consumer_ends_it(bus: Bus) -> None:
    """Drained while the Consumer waits in a pull: the drain ends once that pull does
    (within fetch_timeout_s and its grace, not the drain's 30 s timeout), run() ends
    with ConnectionClosedError, no pull is left: a message published then is handled
    by another Consumer at once."""
    nc = await nats.connect(bus.url, connect_timeout=2)
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    nc._error_cb = error_cb
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.msg_id)

    task = asyncio.create_task(Consumer(nc.jetstream(), handler, _options(bus)).run())
    try:
        await asyncio.sleep(1.0)  # idle: waiting in its pulls
        await asyncio.wait_for(nc.drain(), 15)
        done, _ = await asyncio.wait((task,), timeout=10)
        assert done, "run() still going after the drain"
        with pytest.raises(nats.errors.ConnectionClosedError):
            task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not nc.is_closed:
            await nc.close()
    assert not [e for e in errors if isinstance(e, nats.errors.DrainTimeoutError)]
    other = asyncio.create_task(Consumer(bus.js, handler, _options(bus)).run())
    try:
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "late"})
        await until(lambda: handled == ["late"], timeout_s=10, what="the message handled")
    finally:
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
