"""``nc.drain()`` under an idle Consumer whose ``fetch_timeout_s`` is long (a long
poll: 20 s here). The Consumer holds its inbox's queue unfinished for the whole of
``run_once`` so that a drain waits for its handlers' acks; it held it through an idle
pull's wait too, which nothing can end early once the drain has unsubscribed the inbox
(the pull's messages and its ending status go to nobody): the drain waited the pull's
``fetch_timeout_s`` and grace (20.5 s), or, with a ``fetch_timeout_s`` at or above
nats-py's ``drain_timeout`` (30 s by default), ran into that timeout
(``DrainTimeoutError`` to the error callback). Before the hold, the same drain took
milliseconds. The pull now stops waiting once the connection drains."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


def _options(bus: Bus, durable: str) -> ConsumerOptions:
    return ConsumerOptions(
        stream=bus.stream,
        durable=durable,
        fetch_timeout_s=20.0,
        ack_wait_s=60.0,
        registry=CollectorRegistry(),
    )


async def test_a_drain_of_a_long_polling_consumer_is_quick(bus: Bus) -> None:
    """Idle in a 20 s pull, two Consumers on one connection: the drain ends within 6 s
    (it took 20.5 s), without DrainTimeoutError; each run() ends with
    ConnectionClosedError; a message published after is handled by another Consumer
    (no pull of the drained ones took it)."""
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(bus.url, connect_timeout=2, error_cb=error_cb)
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.msg_id)

    tasks = [
        asyncio.create_task(Consumer(nc.jetstream(), handler, _options(bus, durable)).run())
        for durable in ("long-a", "long-b")
    ]
    try:
        await asyncio.sleep(1.5)  # idle: each waits in its 20 s pull
        started = time.monotonic()
        await asyncio.wait_for(nc.drain(), 40)
        took = time.monotonic() - started
        done, _ = await asyncio.wait(tasks, timeout=10)
        assert len(done) == 2, "run() still going after the drain"
        for task in tasks:
            with pytest.raises(nats.errors.ConnectionClosedError):
                task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not nc.is_closed:
            await nc.close()
    assert took < 6.0, f"the drain took {took:.1f} s"
    assert not [e for e in errors if isinstance(e, nats.errors.DrainTimeoutError)], errors
    other = asyncio.create_task(Consumer(bus.js, handler, _options(bus, "long-a")).run())
    try:
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "late"})
        await until(lambda: handled == ["late"], timeout_s=10, what="the message handled")
    finally:
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
