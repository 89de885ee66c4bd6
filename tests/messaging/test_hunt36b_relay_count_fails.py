"""The outbox backlog gauge is optional (a store with ``count_pending``); its count query
failing (a ``COUNT(*)`` over a large backlog hitting the statement timeout: just when
the relay must publish at full speed) must not fail the round: the events were published
and marked, and a failed round is followed by ``error_backoff`` (up to 5 s), so the
relay slowed to a batch per backoff while the backlog grew."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from meshkit.messaging import OutboxEvent, OutboxRelay, Publisher, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


class _Store:
    """In memory; ``count_pending`` times out."""

    def __init__(self, events: list[OutboxEvent]) -> None:
        self.pending = {e.event_id: e for e in events}

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return list(self.pending.values())[:limit]

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        for i in event_ids:
            self.pending.pop(i, None)

    async def count_pending(self) -> int:
        raise TimeoutError("canceling statement due to statement timeout")


async def test_a_failing_backlog_count_does_not_fail_the_round(bus: Bus) -> None:
    """Before: relay_once raised TimeoutError after publishing and marking 3 events
    (run() then counted a failed round and backed off)."""
    store = _Store([OutboxEvent(f"e{i}", bus.subject, b"x", {}) for i in range(3)])
    reg = CollectorRegistry()
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=reg, tracing=False, access_log=False)))
    try:
        with capture_logs() as logs:
            assert await relay.relay_once() == 3
            assert await relay.relay_once() == 0
    finally:
        await relay.aclose()
    assert store.pending == {}
    failed = [e for e in logs if "count" in e["event"]]
    assert len(failed) == 1  # once, not per round
    assert failed[0]["error"] == "TimeoutError"
