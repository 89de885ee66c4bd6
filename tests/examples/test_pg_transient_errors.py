"""PostgreSQL errors that mean "cannot take this now" (a read-only server after a
failover, a lock or statement timeout set by the DBA) are StoreUnavailable, as their
SQLite counterparts (read-only file, write lock not obtained) are."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from examples.ecom.storage import (
    ItemRecord,
    NewOrder,
    PostgresStore,
    StoreUnavailable,
    open_store,
)

from .conftest import PG_URL, require_postgres

pytestmark = pytest.mark.timeout(30)

#: ``await open_with(settings)``: a PostgresStore on the test's schema whose connections
#: start with these server settings
OpenWith = Callable[[dict[str, str]], Awaitable[PostgresStore]]


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema holding the ecom tables, dropped afterwards."""
    await require_postgres()
    schema = f"ecom_test_{uuid.uuid4().hex[:16]}"
    store = await open_store(f"{PG_URL}?schema={schema}")
    await store.close()
    yield schema
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def open_with(pg_schema: str) -> AsyncIterator[OpenWith]:
    """Opens stores on ``pg_schema`` with extra server settings; closes them after."""
    stores: list[PostgresStore] = []

    async def _open(settings: dict[str, str]) -> PostgresStore:
        pool = await asyncpg.create_pool(
            PG_URL, min_size=0, max_size=2, timeout=5, command_timeout=10,
            server_settings={"search_path": pg_schema, **settings})
        store = PostgresStore(pool, acquire_timeout_s=5)
        stores.append(store)
        return store

    yield _open
    for s in stores:
        await s.close()


def _order(key: str | None = None) -> NewOrder:
    return NewOrder(user_id="u-1", items=(ItemRecord("sku-1", 1, 100),), currency="EUR",
                    total_minor=100, idempotency_key=key, fingerprint="f")


async def test_read_only_server_is_unavailable(open_with: OpenWith) -> None:
    """Writes to a server that only takes reads (a standby after a failover, or
    default_transaction_read_only) raise StoreUnavailable (UNAVAILABLE: retry), not
    StoreError (INTERNAL: a bug); reads still work."""
    store = await open_with({"default_transaction_read_only": "on"})
    with pytest.raises(StoreUnavailable) as info:
        await store.place_order(_order("k"))
    assert str(info.value) == "the postgresql store is unavailable"
    with pytest.raises(StoreUnavailable):
        await store.create_user("ada@example.com", "Ada", "scrypt$x")
    assert await store.get_user_by_email("ada@example.com") is None


async def test_lock_timeout_is_unavailable(open_with: OpenWith, pg_schema: str) -> None:
    """A write that gives up waiting for a row lock (lock_timeout) raises
    StoreUnavailable, as SQLite's write lock past its busy timeout does."""
    writer = await open_with({})
    user = await writer.create_user("ada@example.com", "Ada", "scrypt$x")
    store = await open_with({"lock_timeout": "100ms"})
    holder = await asyncpg.connect(PG_URL, timeout=5,
                                   server_settings={"search_path": pg_schema})
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user.id)
        with pytest.raises(StoreUnavailable):
            await store.update_user(user.id, name="Ada L.")
        await tx.rollback()
        updated = await store.update_user(user.id, name="Ada L.")
        assert updated is not None and updated.name == "Ada L."
    finally:
        await holder.close()


async def test_statement_timeout_is_unavailable(open_with: OpenWith, pg_schema: str) -> None:
    """A statement the server cancels for its statement_timeout raises StoreUnavailable,
    as the store's own command timeout does."""
    writer = await open_with({})
    user = await writer.create_user("ada@example.com", "Ada", "scrypt$x")
    store = await open_with({"statement_timeout": "100ms"})
    holder = await asyncpg.connect(PG_URL, timeout=5,
                                   server_settings={"search_path": pg_schema})
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user.id)
        with pytest.raises(StoreUnavailable):
            await store.update_user(user.id, name="Ada L.")
        await tx.rollback()
    finally:
        await holder.close()


async def test_connection_to_a_demoted_server_is_replaced(pg_schema: str) -> None:
    """After a write fails on a read-only session (a pooled connection to a primary that
    a failover demoted), that connection is dropped: the next write opens a new one
    (which a multi-host DSN with target_session_attrs=read-write sends to the new
    primary) instead of failing on the old one for as long as the pool keeps it."""
    # the "server" a new connection reaches: read-only until the failover below. Set
    # as a startup parameter, which the pool's RESET ALL on release keeps; no role or
    # database setting is changed, so nothing outlives the test or meets another one
    read_only = {"default_transaction_read_only": "on"}

    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        settings = {"search_path": pg_schema, **read_only}
        return await asyncpg.connect(*args, **kwargs, server_settings=settings)

    pool = await asyncpg.create_pool(
        PG_URL, min_size=1, max_size=1, timeout=5, command_timeout=10, connect=connect)
    store = PostgresStore(pool, acquire_timeout_s=5)
    try:
        with pytest.raises(StoreUnavailable):
            await store.place_order(_order("k"))
        read_only.clear()  # the "failover": sessions opened from now on take writes
        order, created = await store.place_order(_order("k"))
        assert created and order.idempotency_key == "k"
    finally:
        await store.close()
