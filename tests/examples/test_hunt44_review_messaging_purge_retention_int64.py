"""``purge_every`` refuses a retention whose cutoff no store can hold (review of
2dd39931).

2dd39931 refused an infinite ``retention_s`` (``OverflowError`` at the first purge) but
took any finite one: past about 9.2e15 s the cutoff in milliseconds is past a signed
64-bit integer, which SQLite and PostgreSQL (``bigint``) refuse: with ``retention_s=1e17``
every purge failed (``outbox purge failed: StoreError``) and was logged every interval
for ever, as ``inf`` did in the projection. Such a retention is now refused with
``ValueError`` before any purge; the largest taken gives a cutoff in range.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from examples.ecom import events
from examples.ecom.storage import SqliteStore

pytestmark = pytest.mark.timeout(30)

_INT64 = (-(2**63), 2**63 - 1)


@pytest.mark.parametrize("retention_s", [1e17, 9.3e15, float(2**63)],
                         ids=["1e17", "9.3e15", "2**63"])
async def test_a_retention_past_int64_milliseconds_is_refused(retention_s: float) -> None:
    """ValueError naming retention_s, the store never called."""
    calls: list[int] = []

    async def purge(cutoff_ms: int, batch: int) -> int:
        calls.append(cutoff_ms)
        return 0

    with pytest.raises(ValueError, match="retention_s"):
        await asyncio.wait_for(events.purge_every(
            purge, retention_s=retention_s, interval_s=60.0, batch=10, warning="w",
            errors=(Exception,)), 5)
    assert calls == []


async def test_the_largest_retention_taken_purges_a_sqlite_store(tmp_path: Path) -> None:
    """events.MAX_RETENTION_S: its cutoff is in int64 and SQLite runs the purge."""
    store = await SqliteStore.open(str(tmp_path / "x.db"))
    cutoffs: list[int] = []

    async def purge(cutoff_ms: int, batch: int) -> int:
        cutoffs.append(cutoff_ms)
        return await store.purge_sent(cutoff_ms, batch)  # raises StoreError if refused

    task = asyncio.create_task(events.purge_every(
        purge, retention_s=events.MAX_RETENTION_S, interval_s=60.0, batch=10, warning="w",
        errors=()))
    try:
        for _ in range(500):
            if cutoffs or task.done():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done() or task.exception() is None, task
        assert len(cutoffs) == 1 and _INT64[0] <= cutoffs[0] <= _INT64[1], cutoffs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


@pytest.mark.parametrize("retention_s", [float("inf"), 1e17], ids=["inf", "1e17"])
async def test_outbox_relay_refuses_such_a_retention_at_once(
        tmp_path: Path, retention_s: float) -> None:
    """outbox_relay raises ValueError as it is entered, not from its purge task at its
    stop (the relay ran meanwhile without purging)."""
    store = await SqliteStore.open(str(tmp_path / "x.db"))
    try:
        with pytest.raises(ValueError, match="retention_s"):
            async with asyncio.timeout(10), events.outbox_relay(
                    store, "nats://127.0.0.1:1", None, retention_s=retention_s):
                pytest.fail("the relay started")
    finally:
        await store.close()
