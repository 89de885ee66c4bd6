"""Faults of the ecom example's outbox stores (SQLite and PostgreSQL), as the
:class:`~meshkit.messaging.OutboxRelay` uses them: rows it cannot decode, mark_sent at
both ends of its size range, and the read order against the commit order."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from examples.ecom.storage import ItemRecord, NewOrder, Store

from .conftest import PG_URL

pytestmark = pytest.mark.timeout(60)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _order(key: str) -> NewOrder:
    return NewOrder("u1", (ItemRecord("SKU-1", 1, 100),), "EUR", 100, key, "fp",
                    event_headers=(("traceparent", TRACEPARENT),))


Raw = Callable[[str], Awaitable[None]]


@pytest.fixture
async def raw_sql(store_url: str, store: Store) -> AsyncIterator[Raw]:
    """Run one SQL statement on the store's database behind its back (autocommit)."""
    del store  # opened first: the schema exists
    parts = urlsplit(store_url)
    if parts.scheme == "sqlite":
        path = parts.path[1:]

        async def run_sqlite(sql: str) -> None:
            conn = sqlite3.connect(path, timeout=10)
            try:
                conn.execute(sql)
                conn.commit()
            finally:
                conn.close()

        yield run_sqlite
        return
    schema = dict(parse_qsl(parts.query))["schema"]
    conn = await asyncpg.connect(PG_URL, timeout=5, server_settings={"search_path": schema})

    async def run_pg(sql: str) -> None:
        await conn.execute(sql)

    try:
        yield run_pg
    finally:
        await conn.close()


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
