"""A Consumer's handler that is a programming error (a plain ``def``; a coroutine
returning a coroutine, an ``await`` forgotten) ends run() with ``TypeError`` naming
it, after the message is nak'ed. When that nak failed too (the connection closed
meanwhile), run() ended with the nak's error (``ConnectionClosedError``) alone and the
handler's fault was lost: restarted, the consumer met it again with nothing said of it.
The ``TypeError`` is now what run() ends with, the nak's error its cause."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_delay_s=0.01, max_delay_s=0.02)


def _options(bus: Bus) -> ConsumerOptions:
    return ConsumerOptions(stream=bus.stream, durable="naklost", dead_letter_subject=bus.dlq,
                           backoff=FAST, fetch_timeout_s=0.2, max_deliveries=3,
                           registry=CollectorRegistry())


@pytest.mark.parametrize("kind", ["coroutine", "async-generator"])
async def test_the_handler_fault_outlives_a_failed_nak(bus: Bus, kind: str) -> None:
    """The handler closes the consumer's connection, then returns its unrun work: run()
    ends with TypeError, the nak's connection error as its cause."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"n-{kind}"})
    nc = await nats.connect(bus.url, connect_timeout=2, allow_reconnect=False)
    calls: list[int] = []

    async def process(d: Delivery) -> None:
        raise AssertionError("never run")

    async def rows(d: Delivery) -> AsyncIterator[int]:
        raise AssertionError("never run")
        yield 1

    async def handler(d: Delivery) -> Any:
        calls.append(d.delivery)
        await nc.close()
        return process(d) if kind == "coroutine" else rows(d)  # await / async for forgotten

    task = asyncio.create_task(Consumer(nc.jetstream(), handler, _options(bus)).run())
    try:
        done, _ = await asyncio.wait((task,), timeout=10)
        assert done, f"run() still going; handler calls {calls}"
        exc = task.exception()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
    assert calls == [1]
    assert isinstance(exc, TypeError), repr(exc)
    assert exc.__cause__ is not None, "the failed nak is the TypeError's cause"
