"""Faults of the ecom example's outbox stores (SQLite and PostgreSQL), as the
:class:`~meshkit.messaging.OutboxRelay` uses them: rows it cannot decode, mark_sent at
both ends of its size range, and the read order against the commit order."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from examples.ecom import events
from examples.ecom.storage import ItemRecord, NewOrder, Store, StoreUnavailable, now_ms
from tests.support.wait import until

from .conftest import PG_URL, Raw

pytestmark = pytest.mark.timeout(60)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _order(key: str) -> NewOrder:
    return NewOrder("u1", (ItemRecord("SKU-1", 1, 100),), "EUR", 100, key, "fp",
                    event_headers=(("traceparent", TRACEPARENT),))


def _raw_event(event_id: str, headers: str) -> str:
    """An INSERT of an outbox row with ``headers`` stored verbatim (SQL-quoted here)."""
    quoted = headers.replace("'", "''")
    return ("INSERT INTO outbox (event_id, subject, payload, headers, created_at_ms)"
            f" VALUES ('{event_id}', 'ecom.orders.placed', 'x', '{quoted}', 1)")


async def test_a_row_whose_headers_do_not_decode_does_not_block_the_outbox(
        store: Store, raw_sql: Raw) -> None:
    """A row whose stored headers are not a JSON object of strings (written by hand, an
    older or other writer, a damaged row) must not stop every other event: before the
    fix pending_events raised the JSONDecodeError of 'not json' (a ValueError, not even a
    StoreError) at every round, so no event after it was ever published, and returned a
    list or dict of ints as the headers of the others (which the relay then held back
    for ever: an OrderPlaced never published). Now each such row comes with the string
    headers it has (none if not an object), and a warning names it."""
    await store.place_order(_order("k1"))
    await raw_sql(_raw_event("bad-json", "not json"))
    await raw_sql(_raw_event("bad-list", "[1, 2]"))
    await raw_sql(_raw_event("bad-null", "null"))
    await raw_sql(_raw_event("bad-values", '{"traceparent": 5, "x-ok": "yes", "x-n": null}'))
    await store.place_order(_order("k2"))
    with capture_logs() as logs:
        pending = await store.pending_events(10)
    assert [e.event_id for e in pending][1:5] == ["bad-json", "bad-list", "bad-null",
                                                  "bad-values"]
    assert len(pending) == 6
    assert pending[0].headers == {"traceparent": TRACEPARENT}
    assert pending[5].headers == {"traceparent": TRACEPARENT}
    assert [dict(e.headers) for e in pending[1:5]] == [{}, {}, {}, {"x-ok": "yes"}]
    assert [e.payload for e in pending[1:5]] == [b"x"] * 4  # SQLite: stored as TEXT
    for e in pending:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.headers.items())
    warned = sorted(r["event_id"] for r in logs if r["event"] == "outbox headers undecodable")
    assert warned == ["bad-json", "bad-list", "bad-null", "bad-values"]
    assert all(r["log_level"] == "warning" for r in logs
               if r["event"] == "outbox headers undecodable")
    await store.mark_sent([e.event_id for e in pending])
    assert await store.pending_events(10) == []


async def test_mark_sent_takes_many_ids_at_once(store: Store) -> None:
    """Checked, no fault: far more ids than SQLite's bound on parameters (999 before
    3.32, 32766 since) are marked in one call (SQLite runs one UPDATE per id,
    PostgreSQL passes one array), unknown and repeated ids ignored."""
    placed = [await store.place_order(_order(f"k{i}")) for i in range(3)]
    pending = await store.pending_events(10)
    assert len(pending) == len(placed)
    ids = [f"unknown-{i}" for i in range(40_000)]
    ids[7] = ids[39_000] = pending[0].event_id
    ids[20_000] = pending[2].event_id
    await store.mark_sent(ids)
    assert [e.event_id for e in await store.pending_events(10)] == [pending[1].event_id]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_read_order_does_not_skip_an_event_committed_late(
        store: Store, store_url: str) -> None:
    """Checked, no fault: on PostgreSQL a row's seq is taken at its INSERT, so a
    transaction may commit a lower seq after a higher one was read and marked; the
    stores read by ``sent_at_ms IS NULL``, not by a cursor past the last seq, so the
    late one is read next. PostgreSQL only: SQLite's BEGIN IMMEDIATE serialises writers,
    so its seq order is the commit order."""
    schema = dict(parse_qsl(urlsplit(store_url).query))["schema"]
    conn = await asyncpg.connect(PG_URL, timeout=5, server_settings={"search_path": schema})
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(_raw_event("early", "{}"))
        await store.place_order(_order("k1"))
        (later,) = await store.pending_events(10)
        await store.mark_sent([later.event_id])
        assert await store.pending_events(10) == []
        await tx.commit()
        assert [e.event_id for e in await store.pending_events(10)] == ["early"]
    finally:
        await conn.close()


async def test_mark_sent_of_no_ids_neither_locks_nor_waits(
        store: Store, store_url: str) -> None:
    """mark_sent([]) is a no-op: before the fix it took SQLite's write lock (BEGIN
    IMMEDIATE), and PostgreSQL's UPDATE its table lock, so while another connection
    held them (a long write, a migration) it waited: SQLite the 10 s busy timeout, then
    StoreUnavailable; PostgreSQL the 10 s command timeout. Now it returns at once."""
    await store.place_order(_order("k1"))
    parts = urlsplit(store_url)
    if parts.scheme == "sqlite":
        other = sqlite3.connect(parts.path[1:], timeout=10, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with asyncio.timeout(2.0):
                await store.mark_sent([])
        finally:
            other.execute("ROLLBACK")
            other.close()
    else:
        schema = dict(parse_qsl(parts.query))["schema"]
        conn = await asyncpg.connect(PG_URL, timeout=5, server_settings={"search_path": schema})
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")
                async with asyncio.timeout(2.0):
                    await store.mark_sent([])
        finally:
            await conn.close()
    assert len(await store.pending_events(10)) == 1


async def test_sent_events_are_purged_after_their_retention(
        store: Store, raw_sql: Raw) -> None:
    """The outbox kept every sent row for ever (no retention: the table and its unique
    index grew with every order). Before the fix the store had no way to drop them
    (AttributeError: no purge_sent); now purge_sent(sent_before_ms, limit) deletes up
    to ``limit`` rows sent before then, oldest first, and never a pending one."""
    for i in range(5):
        await store.place_order(_order(f"k{i}"))
    events = await store.pending_events(10)
    await store.mark_sent([e.event_id for e in events[:4]])
    # two of them sent long ago, two just now; one still pending
    await raw_sql("UPDATE outbox SET sent_at_ms = 1000 WHERE event_id IN"
                  f" ('{events[0].event_id}', '{events[2].event_id}')")
    cutoff = now_ms() - 60_000
    assert await store.purge_sent(cutoff, limit=1) == 1
    assert await store.purge_sent(cutoff, limit=10) == 1
    assert await store.purge_sent(cutoff, limit=10) == 0
    assert [e.event_id for e in await store.pending_events(10)] == [events[4].event_id]
    # the two sent recently are kept until they are old enough; the pending one never goes
    assert await store.purge_sent(now_ms() + 60_000, limit=10) == 2
    assert [e.event_id for e in await store.pending_events(10)] == [events[4].event_id]
    assert await store.count_pending() == 1  # type: ignore[attr-defined]


async def test_the_relay_side_purges_sent_events_periodically(
        store: Store, raw_sql: Raw) -> None:
    """events.purge_sent_events (run by events.outbox_relay beside the relay) deletes
    the events sent more than ``retention_s`` ago, in batches, at every interval, and
    rides out a store failure (a warning, then the next interval). Before the fix
    there was nothing to run (AttributeError: no purge_sent_events)."""
    for i in range(7):
        await store.place_order(_order(f"k{i}"))
    events_ = await store.pending_events(10)
    await store.mark_sent([e.event_id for e in events_[:6]])
    old = ", ".join(f"'{e.event_id}'" for e in events_[:5])
    await raw_sql(f"UPDATE outbox SET sent_at_ms = 1000 WHERE event_id IN ({old})")
    calls: list[int] = []
    real = store.purge_sent

    async def flaky(sent_before_ms: int, limit: int = 1000) -> int:
        calls.append(limit)
        if len(calls) == 1:
            raise StoreUnavailable("down")
        return await real(sent_before_ms, limit)

    store.purge_sent = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        task = asyncio.create_task(events.purge_sent_events(
            store, retention_s=3600.0, interval_s=0.05, batch=2))
        try:
            async def purged() -> bool:
                rows = await raw_sql("SELECT count(*) FROM outbox")
                return int(rows[0][0]) == 2  # the recently sent one, the pending one
            await until(purged, timeout_s=10, interval_s=0.02, what="old sent rows purged")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [e.event_id for e in await store.pending_events(10)] == [events_[6].event_id]
    assert calls[:4] == [2, 2, 2, 2]  # failed, then 2 + 2 + 1: batches of 2 until short
    assert [r["log_level"] for r in logs if r["event"] == "outbox purge failed"] == ["warning"]
    with pytest.raises(ValueError, match="retention_s"):
        await events.purge_sent_events(store, retention_s=0.0)


async def test_the_relay_reads_leave_no_sqlite_transaction_open(
        store: Store, store_url: str) -> None:
    """Checked, no fault: pending_events and count_pending run in autocommit, so after
    them another process takes the write lock at once (PlaceOrder is not blocked) and
    a TRUNCATE checkpoint is not held back by a read snapshot (the WAL file does not
    grow behind an idle relay). PostgreSQL: each is one statement on a pooled
    connection, released idle (checked in pg_stat_activity)."""
    for i in range(3):
        await store.place_order(_order(f"k{i}"))
    assert len(await store.pending_events(2)) == 2
    assert await store.count_pending() == 3  # type: ignore[attr-defined]
    parts = urlsplit(store_url)
    if parts.scheme == "sqlite":
        other = sqlite3.connect(parts.path[1:], timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
        finally:
            other.close()
        return
    schema = dict(parse_qsl(parts.query))["schema"]
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%' AND query LIKE '%outbox%'"
            " AND pid <> pg_backend_pid()")
        assert left == 0, schema
    finally:
        await conn.close()
