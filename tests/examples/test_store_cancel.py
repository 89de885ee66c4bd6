"""A call cancelled mid-transaction leaves no transaction open (real SQLite files, real PG)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import asyncpg
import grpc
import pytest

from examples.ecom.proto import order_pb2, user_pb2
from examples.ecom.storage import RowCounts, SqliteStore, Store, open_store

from .conftest import PG_URL, require_postgres, start_stack
from .test_orders import request
from .test_storage import new_order
from .test_users import rpc_error

pytestmark = pytest.mark.timeout(60)


async def _started(task: asyncio.Task[object]) -> None:
    """Let ``task`` run its first step (up to its first real wait) without finishing it."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()


@pytest.fixture
async def pg_store() -> AsyncIterator[tuple[str, Store]]:
    """A store on a fresh PostgreSQL schema (dropped after), and that schema's name,
    which is also the ``application_name`` of the store's connections."""
    await require_postgres()
    schema = f"ecom_test_{uuid.uuid4().hex[:16]}"
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}&application_name={schema}"
    store = await open_store(url)
    yield schema, store
    await store.close()
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def write_lock(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A raw connection to ``tmp_path/ecom.db`` (schema created) that holds nothing yet."""
    store = await SqliteStore.open(str(tmp_path / "ecom.db"))
    await store.close()
    conn = await aiosqlite.connect(tmp_path / "ecom.db", isolation_level=None)
    yield conn
    if conn.in_transaction:
        await conn.rollback()
    await conn.close()


async def test_sqlite_cancel_while_waiting_for_write_lock(
    tmp_path: Path, write_lock: aiosqlite.Connection
) -> None:
    """place_order cancelled while BEGIN IMMEDIATE waits for another connection's write lock
    leaves its store usable and takes no lock, once that connection lets go."""
    path = str(tmp_path / "ecom.db")
    store = await SqliteStore.open(path)
    other = await SqliteStore.open(path, busy_timeout_s=3.0)
    try:
        await write_lock.execute("BEGIN IMMEDIATE")  # e.g. a SIGSTOPped orderd mid-write
        task = asyncio.create_task(store.place_order(new_order("u1", "cancelled")))
        await _started(task)
        task.cancel()  # the gRPC deadline expired
        await write_lock.rollback()  # the stopped process resumes and finishes
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        # The cancelled store places orders again ...
        order, created = await asyncio.wait_for(store.place_order(new_order("u1", "next")), 15)
        assert created and order.idempotency_key == "next"
        # ... and holds no write lock: other connections can write.
        await asyncio.wait_for(other.place_order(new_order("u2")), 15)
        await write_lock.execute("BEGIN IMMEDIATE")
        await write_lock.rollback()
        assert await other.count_rows() == RowCounts(users=0, orders=2, order_items=4)
    finally:
        await other.close()
        await store.close()


async def test_sqlite_cancel_create_user_while_locked(
    tmp_path: Path, write_lock: aiosqlite.Connection
) -> None:
    """create_user cancelled while waiting for the write lock leaves its store usable."""
    path = str(tmp_path / "ecom.db")
    store = await SqliteStore.open(path)
    other = await SqliteStore.open(path, busy_timeout_s=3.0)
    try:
        await write_lock.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(store.create_user("a@example.com", "A", "h"))
        await _started(task)
        task.cancel()
        await write_lock.rollback()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await asyncio.wait_for(store.create_user("b@example.com", "B", "h"), 15)
        await asyncio.wait_for(other.create_user("c@example.com", "C", "h"), 15)
        await asyncio.wait_for(store.place_order(new_order("u1")), 15)
        assert (await other.count_rows()).orders == 1
    finally:
        await other.close()
        await store.close()


async def test_sqlite_deadline_on_place_order_then_recovers(
    tmp_path: Path, write_lock: aiosqlite.Connection
) -> None:
    """Through gRPC: a PlaceOrder whose deadline expires while another process holds the
    write lock gets DEADLINE_EXCEEDED, and once the lock is free PlaceOrder works again."""
    store = await open_store(f"sqlite:///{tmp_path / 'ecom.db'}")
    stack = await start_stack(store)
    try:
        user = await stack.users.CreateUser(
            user_pb2.CreateUserRequest(email="d@example.com", name="D", password="password1")
        )
        await write_lock.execute("BEGIN IMMEDIATE")
        err = await rpc_error(
            stack.orders.PlaceOrder(request(user.id, idempotency_key="k1"), timeout=0.5)
        )
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await write_lock.rollback()
        # The same key again: the cancelled attempt stored nothing, so this one creates it.
        first = await stack.orders.PlaceOrder(request(user.id, idempotency_key="k1"), timeout=15)
        again = await stack.orders.PlaceOrder(request(user.id, idempotency_key="k1"), timeout=15)
        assert again == first
        page = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user.id))
        assert [o.id for o in page.orders] == [first.id]
        await write_lock.execute("BEGIN IMMEDIATE")  # nobody else holds the lock
        await write_lock.rollback()
    finally:
        for close in stack.closers:
            await close()
        await store.close()


async def test_postgres_cancel_while_waiting_for_row_lock(
    pg_store: tuple[str, Store],
) -> None:
    """place_order cancelled while it waits on another transaction's row lock is rolled back:
    its connection is not left idle in transaction, the key stays free, the store works."""
    schema, store = pg_store
    blocker = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "INSERT INTO orders (id, user_id, currency, total_minor, status, created_at_ms,"
            " idempotency_key, fingerprint) VALUES ('x', 'u1', 'EUR', 1, 'PLACED', 0, 'k', 'fp')"
        )
        task = asyncio.create_task(store.place_order(new_order("u1", "k")))  # waits on 'k'
        await _wait_for_lock_waiter(blocker, schema)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await tx.rollback()  # 'k' is free again
        _, created = await asyncio.wait_for(store.place_order(new_order("u1", "k")), 15)
        assert created
        idle_in_tx = await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            " AND state LIKE 'idle in transaction%'",
            schema,
        )
        assert idle_in_tx == 0
        assert await store.count_rows() == RowCounts(users=0, orders=1, order_items=2)
    finally:
        await blocker.close()


async def _wait_for_lock_waiter(conn: asyncpg.Connection, schema: str) -> None:
    """Poll (at most 10 s) until some backend waits for a lock held by ``conn``."""
    pid = conn.get_server_pid()
    for _ in range(500):
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
        )
        if n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no backend waited on the blocker (schema {schema})")
