"""An outbox relay cancelled (a shutdown) while its store swallowed the cancel (a
database driver's clean-up that catches ``CancelledError`` and returns, a library
losing it: gh-86296) never ended: the round went on, and the next ones, reading the
store at the poll pace for ever, so the process's shutdown hung on it (the consumer's
run loop already ended on such a cancel, ``Task.cancelling()``). Now ``run()`` ends at
the next round."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from meshkit.messaging import (
    OutboxEvent,
    OutboxRelay,
    Publisher,
    PublishOptions,
    RelayOptions,
)
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


class _SwallowingStore:
    """An outbox whose read swallows a cancel (once) and returns what it has: nothing."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.swallowed = 0
        self.reads = 0

    async def pending_events(self, limit: int) -> Sequence[OutboxEvent]:
        self.reads += 1
        self.reading.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            self.swallowed += 1  # swallowed: not raised again
        return []

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        pass


async def test_a_cancel_the_store_swallowed_still_ends_the_relay(bus: Bus) -> None:
    store = _SwallowingStore()
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        tracing=False, metrics=False, access_log=False)), RelayOptions(poll_interval_s=0.05))
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(store.reading.wait(), 10)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert store.swallowed == 1
        # before: still running, reading the store every poll
        assert done, f"relay still running after the cancel ({store.reads} reads)"
        assert task.cancelled()
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
