"""A Consumer's handler is an async callable (``Handler``). One that is not callable, or
whose call returns no awaitable (a plain ``def``, or a class given where an instance
was meant), is a programming error, not a fault of the message: before, every message
was run through it, counted a failure (``TypeError`` at the ``await``), redelivered
and, after ``max_deliveries`` runs of the synchronous handler, dead-lettered."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_delay_s=0.01, max_delay_s=0.02)


def _options(bus: Bus) -> ConsumerOptions:
    return ConsumerOptions(stream=bus.stream, durable="kind", dead_letter_subject=bus.dlq,
                           backoff=FAST, fetch_timeout_s=0.2, max_deliveries=3,
                           registry=CollectorRegistry())


@pytest.mark.parametrize("handler", [None, "handle", 42])
def test_a_handler_that_is_not_callable_is_a_config_error(bus: Bus, handler: object) -> None:
    """Consumer(js, None, options): ConfigError naming the handler."""
    with pytest.raises(ConfigError, match="handler"):
        Consumer(bus.js, handler, _options(bus))  # type: ignore[arg-type]


async def test_a_synchronous_handler_stops_the_consumer_instead_of_dead_lettering(
        bus: Bus) -> None:
    """A plain ``def`` handler: run() ends with TypeError at the first message, which the
    handler saw once, and which is given back (nak'ed) rather than dead-lettered: an
    async handler then gets it at once (its 2nd delivery)."""
    await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": "e1"})
    calls: list[int] = []

    def handler(d: Delivery) -> None:
        calls.append(d.delivery)

    task = asyncio.create_task(Consumer(bus.js, handler,  # type: ignore[arg-type]
                                        _options(bus)).run())
    try:
        done, _ = await asyncio.wait((task,), timeout=3)
        assert done, f"run() still going; handler calls {calls}"
        with pytest.raises(TypeError, match="awaitable"):
            task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls == [1]
    info = await bus.js.stream_info(bus.stream, subjects_filter=bus.dlq)
    assert not (info.state.subjects or {}).get(bus.dlq)

    got: list[int] = []

    async def fixed(d: Delivery) -> None:  # the code fixed: handled at once, not lost
        got.append(d.delivery)

    again = asyncio.create_task(Consumer(bus.js, fixed, _options(bus)).run())
    try:
        await until(lambda: got == [2], timeout_s=3, what="the message handled again")
    finally:
        again.cancel()
        await asyncio.gather(again, return_exceptions=True)
