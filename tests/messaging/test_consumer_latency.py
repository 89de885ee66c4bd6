"""How soon a Consumer handles what is published to it, on a real NATS JetStream: an event
reaching an idle consumer is handled at once, not when its pull expires, and a backlog is
still taken in batches of ``batch_size``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

#: Long enough that an event held until the pull expires shows plainly.
IDLE_FETCH_S = 3.0
#: How late the handling of one event may come (a wide margin for a loaded box).
PROMPT_S = 1.0


class Counted:
    """A Consumer whose pulls are recorded: ``(batch, timeout, got, seconds)`` per fetch
    (``got`` -1 when the fetch raised), and whether a fetch is waiting now."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.fetches: list[tuple[int, float | None, int, float]] = []
        self.waiting = False
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the consumer and record its pulls from now on."""
        await self.consumer.start()
        sub = self.consumer._sub
        assert sub is not None
        fetch = sub.fetch

        async def counted_fetch(batch: int = 1, **kw: Any) -> list[Any]:
            started = time.monotonic()
            self.waiting = True
            got = -1
            try:
                msgs = await fetch(batch, **kw)
                got = len(msgs)
                return msgs
            finally:
                self.waiting = False
                self.fetches.append((batch, kw.get("timeout"), got,
                                     time.monotonic() - started))

        sub.fetch = counted_fetch  # type: ignore[method-assign]


@pytest.fixture
async def run_consumer() -> AsyncIterator[Any]:
    """Makes a started, counted Consumer and runs it (``Consumer.run``) until the test
    ends."""
    tasks: list[asyncio.Task[None]] = []

    async def make(bus: Bus, handler: Any, prom: CollectorRegistry, *, run: bool = True,
                   **kw: Any) -> Counted:
        opts: dict[str, Any] = {"stream": bus.stream, "durable": "lat",
                                "filter_subject": bus.subject, "registry": prom,
                                "tracing": False, "access_log": False}
        opts.update(kw)
        counted = Counted(Consumer(bus.js, handler, ConsumerOptions(**opts)))
        await counted.start()
        if run:
            tasks.append(asyncio.create_task(counted.consumer.run()))
        return counted

    yield make
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _late_status(bus: Bus, consumer: Consumer) -> None:
    """Deliver to the consumer's pull inbox the ``408 Request Timeout`` an earlier pull
    ends with, as it comes when it arrives after the client stopped waiting for that
    pull (its ``expires`` is the client's timeout minus 0.1 ms): the fetch under way
    takes it as the answer to its own request."""
    sub = consumer._sub
    assert sub is not None
    await bus.nc.publish(sub._deliver, b"", headers={"Status": "408",
                                                     "Description": "Request Timeout"})
    await bus.nc.flush()


async def _orphaned_pull(bus: Bus, consumer: Consumer) -> None:
    """Leave on the server a lingering pull for ``batch_size`` messages to the
    consumer's inbox, waiting longer than the test: what nats-py's fetch leaves behind
    when it answered a status to its first, no-wait request with such a pull and then
    returned early (seen on nats-server 2.9.10: two late ``408`` in a row). JetStream
    gives a new message to the oldest waiting pull: this one, which then waits for the
    rest of its batch; the message reaches the fetch under way all the same."""
    sub = consumer._sub
    assert sub is not None
    o = consumer.options
    request = json.dumps({"batch": o.batch_size, "expires": int(4 * IDLE_FETCH_S * 1e9)})
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{o.stream}.{o.durable}",
                         request.encode(), reply=sub._deliver)
    await bus.nc.flush()


@pytest.mark.parametrize("case", ["plain", "late-408", "orphaned-pull"])
async def test_an_event_reaching_an_idle_consumer_is_handled_at_once(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any, case: str) -> None:
    """An idle consumer (its stream empty, its pull waiting) handles an event within
    PROMPT_S of its publish, not when its pull of ``fetch_timeout_s`` (3 s) ends. Its
    pull was a fetch of ``batch_size``, which after the first message waited for the
    rest of the batch until a status ended some pull or its time was over: when a
    lingering pull an earlier fetch left behind (``orphaned-pull``) took the message,
    nothing ended the wait (seen: a projection span starting 1,058 ms after its publish
    with the default 1 s). ``late-408``: the ``408`` of an earlier pull coming during
    the wait does not make it longer either."""
    handled: dict[bytes, float] = {}

    async def handle(d: Delivery) -> None:
        handled[d.data] = time.monotonic()

    counted = await run_consumer(bus, handle, prom, run=False,
                                 fetch_timeout_s=IDLE_FETCH_S)
    if case == "orphaned-pull":  # older than any pull of the consumer's
        await _orphaned_pull(bus, counted.consumer)
    counted.task = asyncio.create_task(counted.consumer.run())
    try:
        for i in range(3):
            # idle: the last pull found nothing and the next one is waiting
            await until(lambda: counted.waiting and bool(counted.fetches)
                        and counted.fetches[-1][2] <= 0, timeout_s=3 * IDLE_FETCH_S + 5,
                        what="consumer idle")
            if case == "late-408":
                await _late_status(bus, counted.consumer)
                await asyncio.sleep(0.05)  # the status taken
            key = f"e{i}".encode()
            published = time.monotonic()
            await bus.js.publish(bus.subject, key, headers={"Nats-Msg-Id": key.decode()})
            await until(lambda: key in handled, timeout_s=IDLE_FETCH_S + 5,  # noqa: B023
                        what=f"event {i} handled")
            late = handled[key] - published
            assert late < PROMPT_S, (i, late, counted.fetches[-3:])
    finally:
        counted.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counted.task


async def test_a_backlog_is_fetched_in_batches_of_batch_size(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any) -> None:
    """Messages waiting when the consumer starts are all handled, in stream order, in
    pulls of ``batch_size`` (not one at a time), without waiting ``fetch_timeout_s``
    between pulls."""
    batch, count = 16, 200
    for i in range(count):
        await bus.js.publish(bus.subject, str(i).encode(), headers={"Nats-Msg-Id": f"b{i}"})
    seen: list[int] = []

    async def handle(d: Delivery) -> None:
        seen.append(int(d.data))

    started = time.monotonic()
    counted = await run_consumer(bus, handle, prom, batch_size=batch,
                                 fetch_timeout_s=IDLE_FETCH_S)
    await until(lambda: len(seen) >= count, timeout_s=30, what="backlog handled")
    took = time.monotonic() - started
    assert seen == list(range(count))
    useful = [f for f in counted.fetches if f[2] > 0]
    assert max(f[2] for f in useful) == batch
    assert len(useful) <= 2 * math.ceil(count / batch) + 4, counted.fetches
    assert took < IDLE_FETCH_S, (took, counted.fetches)  # no pull waited out its timeout


async def test_a_pull_finding_nothing_after_handling_is_short_and_not_an_idle_period(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any) -> None:
    """After a pull that brought messages, the next ``run_once`` first takes what is
    waiting: finding the stream empty it comes back long before ``fetch_timeout_s``,
    does not count toward the empty pulls after which the consumer checks its durable,
    and the pull that waits for the next event follows at once; only a ``run_once`` that
    waited ``fetch_timeout_s`` in vain counts."""
    seen: list[bytes] = []

    async def handle(d: Delivery) -> None:
        seen.append(d.data)

    counted = await run_consumer(bus, handle, prom, run=False,
                                 fetch_timeout_s=IDLE_FETCH_S)
    consumer = counted.consumer
    await bus.js.publish(bus.subject, b"one", headers={"Nats-Msg-Id": "one"})
    assert await asyncio.wait_for(consumer.run_once(), IDLE_FETCH_S + 5) == 1

    async def publish_later() -> float:
        await asyncio.sleep(0.3)
        published = time.monotonic()
        await bus.js.publish(bus.subject, b"two", headers={"Nats-Msg-Id": "two"})
        return published

    later = asyncio.create_task(publish_later())
    assert await asyncio.wait_for(consumer.run_once(), IDLE_FETCH_S + 5) == 1
    assert time.monotonic() - await later < PROMPT_S, counted.fetches
    assert seen == [b"one", b"two"]
    assert consumer._empty_fetches == 0
    short = [f for f in counted.fetches if f[2] <= 0]
    assert short and all(f[3] < IDLE_FETCH_S / 2 for f in short), counted.fetches
    started = time.monotonic()
    assert await asyncio.wait_for(consumer.run_once(), IDLE_FETCH_S + 5) == 0
    assert time.monotonic() - started > IDLE_FETCH_S / 2
    assert consumer._empty_fetches == 1
