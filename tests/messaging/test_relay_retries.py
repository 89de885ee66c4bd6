"""OutboxRelay's retries beside the rounds, with a fake publisher (no NATS): events
that find no retry slot, a bad stored trace header, the store reads while every publish
fails, run() cancelling its retries, an event acked on its retry marked once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from nats.js.api import PubAck

from meshkit.messaging import OutboxEvent, OutboxRelay, PublishError, RelayOptions
from meshkit.resilience import Backoff


class _Mem:
    def __init__(self, events: list[OutboxEvent]) -> None:
        self.events = events
        self.sent: list[str] = []
        self.reads = 0
        self.rows = 0

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        self.reads += 1
        rows = [e for e in self.events if e.event_id not in self.sent][:limit]
        self.rows += len(rows)
        return rows

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        self.sent.extend(i for i in event_ids if i not in self.sent)


class _FakePublisher:
    """'bad-*' fail at once the first time, then hang (a publish timing out); others acked."""

    closed = False  # Publisher.closed: its connection is open

    def __init__(self) -> None:
        self.options = SimpleNamespace(metrics=False, timeout_s=1.0)
        self.calls: dict[str, int] = {}
        self.release = asyncio.Event()

    async def publish(self, subject: str, payload: bytes, *, msg_id: str,
                      headers: Mapping[str, str], context: Any) -> PubAck:
        n = self.calls[msg_id] = self.calls.get(msg_id, 0) + 1
        if msg_id.startswith("bad"):
            if n > 1:
                await self.release.wait()
            raise PublishError(f"{msg_id} failed")
        return PubAck(stream="S", seq=n)


def _fast() -> Backoff:
    return Backoff(base_delay_s=0.001, max_delay_s=0.001)


async def test_events_that_find_no_retry_slot_do_not_block_the_events_behind_them() -> None:
    """Four events failed once and their backoff is over, but only two retry slots
    (batch_size 2), both taken by retries that hang: the two others were neither
    retried nor skipped, they took the batch's places and the ready event behind them
    was never published."""
    store = _Mem([OutboxEvent(f"bad-{i}", "s.x", b"x", {}) for i in range(1, 5)]
                 + [OutboxEvent("good-1", "s.x", b"g", {})])
    pub = _FakePublisher()
    relay = OutboxRelay(store, pub, RelayOptions(  # type: ignore[arg-type]
        batch_size=4, error_backoff=_fast()))
    with contextlib.suppress(PublishError):  # bad-1..4 fail at their first try
        await relay.relay_once()
    assert relay.event_failures == 4
    relay.options = RelayOptions(batch_size=2, error_backoff=relay.options.error_backoff)
    await asyncio.sleep(0.01)
    try:
        for _ in range(5):
            await asyncio.wait_for(relay.relay_once(), 2)
            await asyncio.sleep(0.01)
        assert "good-1" in store.sent, (store.sent, pub.calls)
    finally:
        pub.release.set()
        await relay.aclose()


async def test_an_event_whose_traceparent_header_is_no_string_backs_off_alone() -> None:
    """A stored traceparent that is no string (an int from a JSON column): extracting
    the context raised TypeError while the round's calls were built, outside the
    per-event handling, and every round failed whole."""
    store = _Mem([OutboxEvent("bad-tp", "s.x", b"x", {"traceparent": 2}),  # type: ignore[dict-item]
                  OutboxEvent("good-1", "s.x", b"g", {})])
    relay = OutboxRelay(store, _FakePublisher(), RelayOptions())  # type: ignore[arg-type]
    for _ in range(2):
        with contextlib.suppress(PublishError):
            await relay.relay_once()
    assert "good-1" in store.sent and "bad-tp" in relay._held, (store.sent, relay._held)


class _Outage:
    """Every publish fails after ``delay_s`` (NATS down: each attempt times out)."""

    closed = False  # Publisher.closed: reconnecting, not closed for good

    def __init__(self, delay_s: float) -> None:
        self.options = SimpleNamespace(metrics=False, timeout_s=1.0)
        self.delay_s = delay_s
        self.calls = 0

    async def publish(self, subject: str, payload: bytes, *, msg_id: str,
                      headers: Mapping[str, str], context: Any) -> PubAck:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        raise PublishError(f"{msg_id} timed out")


async def test_an_outage_does_not_make_each_failed_retry_wake_a_round() -> None:
    """NATS down, 40 events pending, every publish failing after 20 ms: each retry's end
    woke a new round (reading batch_size + the held rows), so the store was read far
    more often than at the poll pace. A failed retry needs no round: its event backs
    off, taken by the next round at the normal pace."""
    store = _Mem([OutboxEvent(f"e-{i}", "s.x", b"x", {}) for i in range(40)])
    pub = _Outage(0.02)
    relay = OutboxRelay(store, pub, RelayOptions(  # type: ignore[arg-type]
        batch_size=10, poll_interval_s=0.2,
        error_backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01)))
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(1.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert pub.calls >= 40 and store.sent == []
    # poll pace: 1.5 s / 0.2 s = 7.5 rounds, plus the failed rounds' short pauses (11
    # reads seen; 71 when each failed retry woke a round)
    assert store.reads <= 20, (store.reads, store.rows, pub.calls)


async def test_run_ending_cancels_the_retries_under_way() -> None:
    """run() ending (cancelled) cancels the retries it started."""
    store = _Mem([OutboxEvent("bad-1", "s.x", b"x", {})])
    pub = _FakePublisher()
    relay = OutboxRelay(store, pub, RelayOptions(  # type: ignore[arg-type]
        poll_interval_s=0.01, error_backoff=_fast()))
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(500):
            if pub.calls.get("bad-1", 0) >= 2:
                break
            await asyncio.sleep(0.01)
        retries = [t for _, t in relay._retrying.values()]
        assert retries
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert all(t.cancelled() for t in retries) and not relay._retrying


async def test_an_event_acked_on_its_retry_beside_the_rounds_is_marked_once() -> None:
    """An event failing once, acked on its retry: marked sent once, published counted
    once, not published a third time."""
    store = _Mem([OutboxEvent("flaky-1", "s.x", b"x", {})])
    calls: list[str] = []

    class _Once(_FakePublisher):
        async def publish(self, subject: str, payload: bytes, *, msg_id: str,
                          headers: Mapping[str, str], context: Any) -> PubAck:
            calls.append(msg_id)
            if len(calls) == 1:
                raise PublishError("first")
            return PubAck(stream="S", seq=1)

    relay = OutboxRelay(store, _Once(), RelayOptions(  # type: ignore[arg-type]
        poll_interval_s=0.05, error_backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01)))
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(300):
            if store.sent:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert store.sent == ["flaky-1"] and calls == ["flaky-1"] * 2 and relay.published == 1
