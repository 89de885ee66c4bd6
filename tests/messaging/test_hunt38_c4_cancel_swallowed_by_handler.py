"""A consumer cancelled (a rolling restart's SIGTERM) while a handler runs that swallows
the cancel (``except CancelledError: pass`` for its own clean-up, a library that loses
it: gh-86296) went on handling the rest of its fetched batch, one handler after another,
before it ended at the next fetch: with ``batch_size`` 64 and handlers of half a second,
half a minute more, past a pod's grace period (then SIGKILLed mid-handler), and the
messages waiting their turn were not given back to the other processes of the durable.
Now the batch ends at the next message's turn: the rest is nak'ed (redelivered at once,
to another process) and ``run()`` ends."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery, Publisher, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(60)

_N = 6


def _options(bus: Bus) -> ConsumerOptions:
    # ack_wait_s long: only a nak hands the waiting messages to another process in time
    return ConsumerOptions(stream=bus.stream, durable="swallow", filter_subject=bus.subject,
                           batch_size=_N, ack_wait_s=60.0, registry=CollectorRegistry(),
                           tracing=False, access_log=False)


async def test_a_cancel_a_handler_swallowed_ends_the_batch_at_the_next_turn(
        bus: Bus) -> None:
    publisher = Publisher(bus.js, PublishOptions(tracing=False, metrics=False,
                                                 access_log=False))
    for i in range(_N):
        await publisher.publish(bus.subject, b"%d" % i, msg_id=f"e{i}")

    started = asyncio.Event()
    first: list[str] = []

    async def swallowing(d: Delivery) -> None:
        first.append(d.msg_id)
        started.set()
        # swallowed: the handler returns, its message is acked; the next ones would
        # take 2 s each, 10 s for the batch
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(2.0)

    consumer = Consumer(bus.js, swallowing, _options(bus))
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(started.wait(), 10)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    elapsed = time.monotonic() - t0
    # before: the other five handlers ran, 10 s
    assert first == ["e0"], first
    assert elapsed < 4.0, elapsed

    # the rest was given back at once: another process of the durable has it now, not
    # after the 60 s ack wait
    second: list[str] = []
    all_in = asyncio.Event()

    async def handle(d: Delivery) -> None:
        second.append(d.msg_id)
        if len(set(second)) == _N - 1:
            all_in.set()

    other = Consumer(bus.js, handle, _options(bus))
    task = asyncio.create_task(other.run())
    try:
        await asyncio.wait_for(all_in.wait(), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sorted(set(second)) == [f"e{i}" for i in range(1, _N)]
