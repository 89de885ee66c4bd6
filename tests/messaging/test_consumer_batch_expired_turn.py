"""A handler that outran the ack wait lets the messages waiting behind it in its batch go
(no more in-progress acks: JetStream redelivers them, to another process of the
durable). When that handler finally returned, the consumer handled those messages too,
while (or after) the other process did: each handled twice, possibly at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

ACK_WAIT_S = 0.5
#: How long the first handler runs: well past the ack wait and the last in-progress
#: ack of the messages behind it (at most ack_wait / 2 after the batch came).
STUCK_S = 1.3


async def test_messages_let_go_by_a_stuck_handler_are_not_handled_again_after_it(
        bus: Bus) -> None:
    """e0, e1, e2 in one batch of consumer A, whose handler of e0 takes 1.3 s (ack wait
    0.5 s); consumer B of the durable handles what is redelivered. When A's handler
    returns, A leaves e1 and e2 alone: each is handled once in all (twice before: by B,
    then by A)."""
    for i in range(3):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"e{i}"})
    handled: Counter[str] = Counter()
    returned = asyncio.Event()

    async def slow_first(d: Delivery) -> None:
        handled[d.msg_id] += 1
        if d.msg_id == "e0":
            await asyncio.sleep(STUCK_S)
            returned.set()

    async def quick(d: Delivery) -> None:
        handled[d.msg_id] += 1

    def options(batch: int) -> ConsumerOptions:
        return ConsumerOptions(stream=bus.stream, durable="shared", ack_wait_s=ACK_WAIT_S,
                               batch_size=batch, fetch_timeout_s=0.2,
                               registry=CollectorRegistry())

    a = Consumer(bus.js, slow_first, options(3))
    task_a = asyncio.create_task(a.run_once())
    await until(lambda: handled["e0"] == 1, timeout_s=5, what="A handling e0")
    task_b = asyncio.create_task(Consumer(bus.js, quick, options(1)).run())
    try:
        await asyncio.wait_for(returned.wait(), 10)
        await asyncio.wait_for(task_a, 5)  # A's batch done
        await until(lambda: handled["e1"] >= 1 and handled["e2"] >= 1, timeout_s=5,
                    what="e1 and e2 handled")
        await asyncio.sleep(0.3)  # a second handling of either would come now
    finally:
        for task in (task_a, task_b):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert (handled["e1"], handled["e2"]) == (1, 1), handled
