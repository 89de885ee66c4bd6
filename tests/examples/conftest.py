"""Fixtures for the e-commerce example: stores on both backends and in-process servers.

PostgreSQL is taken from ``DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); every store fixture gets a fresh
schema, dropped afterwards. If PostgreSQL is unreachable its tests are skipped,
except when ``CI`` is set (``true``/``1``/``yes``): then that is an error.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import grpc
import pytest

from examples.ecom.cache import CachedUsers
from examples.ecom.orders import OrderServicer
from examples.ecom.proto import order_pb2_grpc, user_pb2_grpc
from examples.ecom.storage import Store, open_store
from examples.ecom.users import SessionIssuer, UserServicer
from tests.resilience.test_ratelimit import shared_redis  # noqa: F401  (a fixture, for the cache)

PG_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
_pg_problem: list[str | None] = []  # cached result of the reachability probe


async def _postgres_problem() -> str | None:
    """Return why PostgreSQL cannot be used, or None if it answers (probed once)."""
    if not _pg_problem:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
            await conn.close()
            _pg_problem.append(None)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _pg_problem.append(f"PostgreSQL at {PG_URL} unreachable: {exc!r}")
    return _pg_problem[0]


async def require_postgres() -> None:
    """Skip the test if PostgreSQL is unreachable; under CI=true fail it instead."""
    problem = await _postgres_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(problem + " (required when CI=true)")
        pytest.skip(problem)


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of a fresh, empty store: an SQLite file, or a PostgreSQL schema dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ecom.db'}"
        return
    await require_postgres()
    schema = f"ecom_test_{uuid.uuid4().hex[:16]}"
    yield _with_schema(PG_URL, schema)
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def open_more(store_url: str) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """A function opening further stores (own connections) on the same database."""
    opened: list[Store] = []

    async def _open() -> Store:
        s = await open_store(store_url)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        await s.close()


@pytest.fixture
async def store(open_more: Callable[[], Awaitable[Store]]) -> Store:
    """A fresh store, on SQLite and on PostgreSQL in turn."""
    return await open_more()


@dataclass
class Stack:
    """A running in-process server with both servicers, and client stubs to it."""

    store: Store
    users: user_pb2_grpc.UserServiceStub
    orders: order_pb2_grpc.OrderServiceStub
    target: str
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)


async def start_stack(store: Store, *, issue_session: SessionIssuer | None = None,
                      cache: CachedUsers | None = None) -> Stack:
    """Serve UserService (GetUser through ``cache`` if given) and OrderService on
    127.0.0.1:0 over plain grpc.aio.

    OrderService reaches UserService through its own channel to the same server.
    """
    server = grpc.aio.server()
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    backend_channel = grpc.aio.insecure_channel(target)
    user_pb2_grpc.add_UserServiceServicer_to_server(
        UserServicer(store, issue_session=issue_session, cache=cache), server
    )
    order_pb2_grpc.add_OrderServiceServicer_to_server(
        OrderServicer(store, user_pb2_grpc.UserServiceStub(backend_channel)), server
    )
    await server.start()
    client = grpc.aio.insecure_channel(target)
    return Stack(
        store=store,
        users=user_pb2_grpc.UserServiceStub(client),
        orders=order_pb2_grpc.OrderServiceStub(client),
        target=target,
        closers=[client.close, backend_channel.close, lambda: server.stop(None)],
    )


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh SQLite store in a temporary file."""
    s = await open_store(f"sqlite:///{tmp_path / 'ecom.db'}")
    yield s
    await s.close()


@pytest.fixture
async def stack(sqlite_store: Store) -> AsyncIterator[Stack]:
    """Both servicers on a real grpc.aio server over an SQLite store."""
    st = await start_stack(sqlite_store)
    yield st
    for close in st.closers:
        await close()


@pytest.fixture
async def any_stack(store: Store) -> AsyncIterator[Stack]:
    """Both servicers over the store fixture: SQLite, then PostgreSQL."""
    st = await start_stack(store)
    yield st
    for close in st.closers:
        await close()


#: ``await raw(sql)``: one SQL statement on a store's database, its rows
Raw = Callable[[str], Awaitable[list[Any]]]


@pytest.fixture
async def raw_sql(store_url: str, store: Store) -> AsyncIterator[Raw]:
    """Run one SQL statement on the store's database behind its back (autocommit);
    its rows."""
    del store  # opened first: the schema exists
    parts = urlsplit(store_url)
    if parts.scheme == "sqlite":
        path = parts.path[1:]

        async def run_sqlite(sql: str) -> list[Any]:
            conn = sqlite3.connect(path, timeout=10)
            try:
                rows = conn.execute(sql).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()

        yield run_sqlite
        return
    schema = dict(parse_qsl(parts.query))["schema"]
    conn = await asyncpg.connect(PG_URL, timeout=5, server_settings={"search_path": schema})

    async def run_pg(sql: str) -> list[Any]:
        return list(await conn.fetch(sql))

    try:
        yield run_pg
    finally:
        await conn.close()
