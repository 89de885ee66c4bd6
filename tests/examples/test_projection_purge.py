"""Retention of the projection's ``processed_events`` (the ids of the events it applied,
kept so a redelivered event counts once), on SQLite and PostgreSQL: nothing deleted
them, so a projection running for months held every event id it ever saw. Now
``Store.purge_processed`` deletes the rows processed before a cutoff, in short batches
through an index on ``processed_at_ms``, and the projection service runs
:func:`~examples.ecom.projection_service.purge_processed_events` beside its consumer,
keeping a row for longer than the stream can deliver its event again."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest
from structlog.testing import capture_logs

from examples.ecom import events, projection_service
from examples.ecom.storage import Store, StoreUnavailable, now_ms, open_store
from tests.messaging import conftest as messaging_fixtures
from tests.messaging.conftest import NatsServer
from tests.support.procs import children
from tests.support.wait import until

from .conftest import Raw

pytestmark = pytest.mark.timeout(60)

private_nats = messaging_fixtures.private_nats  # a nats-server -js on a spare port

LONG_AGO_MS = 1_000  # a processed_at_ms far older than any cutoff


async def _ids(raw: Raw) -> set[str]:
    return {r[0] for r in await raw("SELECT event_id FROM processed_events")}


async def _age(raw: Raw, ids: list[str], at_ms: int) -> None:
    """Set the processed_at_ms of ``ids`` to ``at_ms``."""
    quoted = ", ".join(f"'{i}'" for i in ids)
    await raw(f"UPDATE processed_events SET processed_at_ms = {at_ms}"
              f" WHERE event_id IN ({quoted})")


async def test_processed_ids_older_than_the_cutoff_are_purged_in_batches(
        store: Store, raw_sql: Raw) -> None:
    """Rows processed before the cutoff go, ``limit`` at a time, oldest first; a row at
    or after the cutoff stays, and its event, redelivered, is still counted once.
    Before the fix nothing could delete them (AttributeError: no purge_processed)."""
    ids = [f"e-{i}" for i in range(6)]
    for i, eid in enumerate(ids):
        assert await store.apply_order_placed(eid, "u-1", 100 + i)
    cutoff = now_ms() - 60_000
    await _age(raw_sql, ids[:2], LONG_AGO_MS)
    await _age(raw_sql, ids[2:3], cutoff - 1)
    await _age(raw_sql, ids[3:4], cutoff)  # exactly at the cutoff: not before it
    assert await store.purge_processed(cutoff, limit=2) == 2
    assert await _ids(raw_sql) == set(ids[2:])  # the oldest two first
    assert await store.purge_processed(cutoff, limit=2) == 1
    assert await store.purge_processed(cutoff, limit=2) == 0
    assert await _ids(raw_sql) == set(ids[3:])
    for eid in ids[3:]:  # redelivered: still known, not counted again
        assert not await store.apply_order_placed(eid, "u-1", 1_000)
    summary = await store.order_summary("u-1")
    assert (summary.order_count, summary.total_minor) == (6, sum(100 + i for i in range(6)))
    with pytest.raises(ValueError, match="limit"):
        await store.purge_processed(cutoff, limit=0)


async def test_the_purge_reads_an_index_also_on_a_database_made_before_it(
        store: Store, raw_sql: Raw, open_more: Callable[[], Awaitable[Store]],
        store_url: str) -> None:
    """The purge's row selection (processed before the cutoff, oldest first) goes
    through an index on processed_at_ms, not a scan and sort of the whole table; a
    database created before the index existed gets it when a store opens it."""
    del store
    purge = ("DELETE FROM processed_events WHERE event_id IN (SELECT event_id"
             " FROM processed_events WHERE processed_at_ms < 5 ORDER BY processed_at_ms"
             " LIMIT 10)")  # as the store runs it (EXPLAIN without ANALYZE: not run)
    await raw_sql("DROP INDEX IF EXISTS processed_events_at")  # as an older release left it
    await open_more()  # opening creates what is missing
    if store_url.startswith("sqlite"):
        plan = " ".join(str(r[-1]) for r in await raw_sql(f"EXPLAIN QUERY PLAN {purge}"))
        assert "INDEX processed_events_at" in plan, plan
        assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan  # no sort, no scan
        return
    await raw_sql("SET enable_seqscan = off")  # on a tiny table a scan is cheaper
    plan = " ".join(r[0] for r in await raw_sql(f"EXPLAIN {purge}"))
    assert "processed_events_at" in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan


async def test_a_purge_beside_concurrent_applies_loses_none(
        store: Store, raw_sql: Raw, open_more: Callable[[], Awaitable[Store]]) -> None:
    """A purge running in batches on one connection while another applies new events:
    every old row goes, every apply is kept and counted once (a redelivery of any of
    them is still refused), no row processed after the cutoff is deleted."""
    old = [f"old-{i}" for i in range(300)]
    await raw_sql("INSERT INTO processed_events (event_id, processed_at_ms) VALUES "
                  + ", ".join(f"('{e}', {LONG_AGO_MS + i})" for i, e in enumerate(old)))
    applier = await open_more()
    cutoff = now_ms() - 1_000
    new = [f"new-{i}" for i in range(150)]
    applied: list[bool] = []

    async def apply_all() -> None:
        for i, eid in enumerate(new):
            applied.append(await applier.apply_order_placed(eid, f"u-{i % 3}", 10))

    purged: list[int] = []

    async def purge_all() -> None:
        while (n := await store.purge_processed(cutoff, limit=7)) or len(applied) < len(new):
            purged.append(n)
            await asyncio.sleep(0)  # interleave with the applies

    await asyncio.gather(apply_all(), purge_all())
    assert applied == [True] * len(new)
    assert sum(purged) == len(old) and max(purged) == 7
    assert await _ids(raw_sql) == set(new)
    assert [await store.apply_order_placed(e, "u-0", 10) for e in new] == [False] * len(new)
    assert sum([(await store.order_summary(f"u-{k}")).order_count for k in range(3)]) == 150


async def test_the_projection_side_purges_processed_ids_periodically(
        store: Store, raw_sql: Raw) -> None:
    """purge_processed_events (run by the projection service beside its consumer)
    deletes the ids processed more than ``retention_s`` ago, in batches, at every
    interval, and rides out a store failure (a warning, then the next interval)."""
    ids = [f"e-{i}" for i in range(7)]
    for eid in ids:
        await store.apply_order_placed(eid, "u-1", 5)
    await _age(raw_sql, ids[:5], LONG_AGO_MS)
    calls: list[int] = []
    real = store.purge_processed

    async def flaky(processed_before_ms: int, limit: int = 1000) -> int:
        calls.append(limit)
        if len(calls) == 1:
            raise StoreUnavailable("down")
        return await real(processed_before_ms, limit)

    store.purge_processed = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        task = asyncio.create_task(projection_service.purge_processed_events(
            store, retention_s=3600.0, interval_s=0.05, batch=2))
        try:
            async def purged() -> bool:
                return await _ids(raw_sql) == set(ids[5:])

            await until(purged, timeout_s=10, interval_s=0.02, what="old ids purged")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert calls[:4] == [2, 2, 2, 2]  # failed, then 2 + 2 + 1: batches of 2 until short
    failed = [r for r in logs if r["event"] == "processed events purge failed"]
    assert [r["log_level"] for r in failed] == ["warning"]
    for bad in ({"retention_s": 0.0}, {"interval_s": 0.0}, {"batch": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            await projection_service.purge_processed_events(store, **bad)


def test_the_retention_outlasts_the_stream() -> None:
    """An id is kept longer than the stream keeps (and so can redeliver) its event."""
    assert projection_service.PROCESSED_RETENTION_S > events.STREAM_MAX_AGE_S
    assert projection_service.PROCESSED_RETENTION_S \
        == events.STREAM_MAX_AGE_S + events.STREAM_DUPLICATE_WINDOW_S


async def test_the_projection_service_process_purges_old_ids(
        private_nats: NatsServer, tmp_path: Path) -> None:
    """``python -m examples.ecom.projection_service`` purges its store's processed ids
    older than the retention when it starts (and every minute after), keeping the
    recent ones; the stream it creates keeps events for less than that retention."""
    summary_url = f"sqlite:///{tmp_path / 'summary.db'}"
    summary = await open_store(summary_url)
    try:
        for eid in ("old-1", "old-2", "recent"):
            await summary.apply_order_placed(eid, "u-1", 5)
    finally:
        await summary.close()
    limit_ms = now_ms() - round(projection_service.PROCESSED_RETENTION_S * 1000)
    with sqlite3.connect(tmp_path / "summary.db") as db:
        db.execute("UPDATE processed_events SET processed_at_ms = ?"
                   " WHERE event_id LIKE 'old-%'", (limit_ms - 60_000,))
        db.execute("UPDATE processed_events SET processed_at_ms = ?"
                   " WHERE event_id = 'recent'", (limit_ms + 600_000,))
    db.close()

    def left() -> list[str]:
        with contextlib.closing(sqlite3.connect(tmp_path / "summary.db", timeout=10)) as db:
            return sorted(r[0] for r in db.execute("SELECT event_id FROM processed_events"))

    env = {"MESHKIT_REGISTRY": f"local://{tmp_path / 'registry'}?ttl_s=2"}
    async with children(tmp_path / "logs", env) as kids:
        child = await kids.start("examples.ecom.projection_service", "--db", summary_url,
                                 "--nats-url", private_nats.url, "--insecure",
                                 "--instance-id", "s-1", "--drain-delay-s", "0")
        await child.wait_line("READY", timeout_s=20)
        await until(lambda: left() == ["recent"], timeout_s=10, what="old ids purged")
    nc = await nats.connect(private_nats.url, connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=3).stream_info(events.STREAM)
    finally:
        await nc.close()
    assert info.config.max_age is not None
    assert info.config.max_age < projection_service.PROCESSED_RETENTION_S
