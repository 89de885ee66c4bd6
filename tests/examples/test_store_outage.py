"""A store whose database is down: UNAVAILABLE without internals, one log line per outage
change, recovery without restart, and keyed PlaceOrder retries that never duplicate.

PostgreSQL is the real one (see conftest), reached through a loopback
:class:`~tests.support.tcp_proxy.TcpProxy` that the tests stop, black-hole and
restart; SQLite outages are a real write lock held by another connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
import asyncpg
import grpc
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import meshkit
from examples.ecom.cache import UserCacheOptions, open_user_cache
from examples.ecom.orders import OrderServicer
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc
from examples.ecom.storage import RowCounts, Store, open_store
from examples.ecom.users import UserServicer
from meshkit.discovery import LocalRegistry
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

from .conftest import PG_URL, require_postgres, start_stack
from .test_orders import request
from .test_storage import new_order
from .test_users import rpc_error

pytestmark = pytest.mark.timeout(60)

PASSWORD = "password1"


@dataclass
class ProxiedPg:
    """A fresh PostgreSQL schema reached through a TCP proxy."""

    proxy: TcpProxy
    url: str  # store URL through the proxy, with ?schema=
    schema: str


@pytest.fixture
async def pg() -> AsyncIterator[ProxiedPg]:
    """A proxy in front of the test PostgreSQL and a store URL on a fresh schema through it."""
    await require_postgres()
    parts = urlsplit(PG_URL)
    schema = f"ecom_test_{uuid.uuid4().hex[:16]}"
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
        query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
        url = parts._replace(netloc=netloc, query=query).geturl()
        yield ProxiedPg(proxy, url, schema)
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def assert_no_internals(details: str | None, proxy: TcpProxy | None = None) -> None:
    """The status message names no address, port, path or exception class."""
    text = details or ""
    for leak in ("127.0.0.1", "5432", "Error", "Exception", "<class", "Errno", "/", ".db"):
        assert leak not in text, text
    if proxy is not None:
        assert str(proxy.port) not in text, text


class Servers:
    """In-process gRPC servers for a user store and an order store (plain grpc.aio)."""

    def __init__(self) -> None:
        self._closers: list[Any] = []

    async def start(
        self, users_store: Store, orders_store: Store | None = None
    ) -> tuple[user_pb2_grpc.UserServiceStub, order_pb2_grpc.OrderServiceStub]:
        """Serve UserService on ``users_store`` and OrderService on ``orders_store``
        (default: the same), OrderService looking users up over gRPC."""
        server = grpc.aio.server()
        target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        backend = grpc.aio.insecure_channel(target)
        user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(users_store), server)
        order_pb2_grpc.add_OrderServiceServicer_to_server(
            OrderServicer(orders_store or users_store, user_pb2_grpc.UserServiceStub(backend)),
            server,
        )
        await server.start()
        client = grpc.aio.insecure_channel(target)
        self._closers += [client.close, backend.close, lambda: server.stop(None)]
        return user_pb2_grpc.UserServiceStub(client), order_pb2_grpc.OrderServiceStub(client)

    async def close(self) -> None:
        """Close the channels and stop the servers."""
        for close in self._closers:
            await close()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    """Servers started by the test, stopped after it."""
    s = Servers()
    yield s
    await s.close()


async def new_user(users: user_pb2_grpc.UserServiceStub, email: str = "a@example.com") -> str:
    """Create a user; return its id."""
    user = await users.CreateUser(
        user_pb2.CreateUserRequest(email=email, name="A", password=PASSWORD), timeout=10
    )
    return user.id


async def test_order_store_down_is_unavailable_then_recovers(
    pg: ProxiedPg, sqlite_store: Store, servers: Servers
) -> None:
    """With the order database down (connections reset, then refused) every OrderService
    call answers UNAVAILABLE "order store unavailable"; once it is back, the same store
    serves again without a restart, and the keyed order that failed is placed once."""
    orders_store = await open_store(pg.url)
    try:
        users, orders = await servers.start(sqlite_store, orders_store)
        uid = await new_user(users)
        first = await orders.PlaceOrder(request(uid), timeout=10)
        await pg.proxy.stop()
        for call in (
            orders.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10),
            orders.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10),
            orders.GetOrder(order_pb2.GetOrderRequest(order_id=first.id), timeout=10),
            orders.ListOrders(order_pb2.ListOrdersRequest(user_id=uid), timeout=10),
        ):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
            assert err.details() == "order store unavailable"
            assert_no_internals(err.details(), pg.proxy)
        await pg.proxy.start()
        keyed = await orders.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10)
        again = await orders.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10)
        assert again == keyed
        page = await orders.ListOrders(order_pb2.ListOrdersRequest(user_id=uid), timeout=10)
        assert [o.id for o in page.orders] == [keyed.id, first.id]
        assert await orders_store.count_rows() == RowCounts(users=0, orders=2, order_items=4)
    finally:
        await orders_store.close()


async def test_user_store_down_is_unavailable_then_recovers(
    pg: ProxiedPg, servers: Servers
) -> None:
    """With the user database down CreateUser, GetUser and Authenticate answer UNAVAILABLE
    "user store unavailable" (PlaceOrder's user lookup passes that on as UNAVAILABLE);
    once it is back they work again."""
    store = await open_store(pg.url)
    try:
        users, orders = await servers.start(store)
        uid = await new_user(users)
        await pg.proxy.stop()
        for call in (
            users.CreateUser(
                user_pb2.CreateUserRequest(email="b@example.com", name="B", password=PASSWORD),
                timeout=10,
            ),
            users.GetUser(user_pb2.GetUserRequest(user_id=uid), timeout=10),
            users.Authenticate(
                user_pb2.AuthenticateRequest(email="a@example.com", password=PASSWORD),
                timeout=10,
            ),
        ):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
            assert err.details() == "user store unavailable"
        err = await rpc_error(orders.PlaceOrder(request(uid), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert_no_internals(err.details(), pg.proxy)
        await pg.proxy.start()
        assert (await users.GetUser(user_pb2.GetUserRequest(user_id=uid), timeout=10)).id == uid
        await new_user(users, "b@example.com")
        await orders.PlaceOrder(request(uid), timeout=10)
    finally:
        await store.close()


async def test_lost_commit_answer_keyed_retry_does_not_duplicate(
    pg: ProxiedPg, sqlite_store: Store, servers: Servers
) -> None:
    """A PlaceOrder whose COMMIT reached the database but whose answer was lost fails
    UNAVAILABLE; retrying it with its key returns that very order, and no second one
    is stored. The same holds when the first attempt never reached the database."""
    orders_store = await open_store(pg.url)
    try:
        users, orders = await servers.start(sqlite_store, orders_store)
        uid = await new_user(users)
        pg.proxy.reset_after(b"COMMIT;")  # b"COMMIT" matches BEGIN ... READ COMMITTED
        err = await rpc_error(orders.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10))
        assert pg.proxy.lost_answers == 1
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert_no_internals(err.details(), pg.proxy)
        retried = await orders.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10)
        await pg.proxy.stop()  # never reaches the database
        err = await rpc_error(orders.PlaceOrder(request(uid, idempotency_key="k2"), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        await pg.proxy.start()
        placed = await orders.PlaceOrder(request(uid, idempotency_key="k2"), timeout=10)
        page = await orders.ListOrders(order_pb2.ListOrdersRequest(user_id=uid), timeout=10)
        assert [o.id for o in page.orders] == [placed.id, retried.id]
        assert [o.idempotency_key for o in page.orders] == ["k2", "k1"]
        assert await orders_store.count_rows() == RowCounts(users=0, orders=2, order_items=4)
    finally:
        await orders_store.close()


async def test_outage_logged_once_when_it_starts_and_once_when_it_ends(
    pg: ProxiedPg, sqlite_store: Store, servers: Servers
) -> None:
    """Many failing calls during one outage log one warning (with the cause) and the first
    success after it one info line; calls themselves log nothing more."""
    orders_store = await open_store(pg.url)
    try:
        users, orders = await servers.start(sqlite_store, orders_store)
        uid = await new_user(users)
        with capture_logs() as logs:
            await pg.proxy.stop()
            for _ in range(5):
                err = await rpc_error(orders.ListOrders(order_pb2.ListOrdersRequest(user_id=uid)))
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            await pg.proxy.start()
            for _ in range(3):
                await orders.ListOrders(order_pb2.ListOrdersRequest(user_id=uid), timeout=10)
        store_lines = [e for e in logs if e.get("backend") == "postgresql"]
        assert [(e["log_level"], e["event"]) for e in store_lines] == [
            ("warning", "store unavailable"),
            ("info", "store available again"),
        ], logs
        assert store_lines[0]["cause"]  # the cause is in the server's log, not the status
        assert store_lines[1]["failed_calls"] == 5
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    finally:
        await orders_store.close()


async def test_blackholed_database_times_out_unavailable_then_recovers(pg: ProxiedPg) -> None:
    """A database that stops answering (a network partition) gives StoreUnavailable within
    the store's timeouts, not a hang; when the partition heals the store works again."""
    from examples.ecom.storage import PostgresStore, StoreUnavailable

    store = await PostgresStore.open(
        pg.url.split("?")[0], schema=pg.schema, connect_timeout_s=1.0, command_timeout_s=1.0
    )
    try:
        await store.create_user("a@example.com", "A", "h")
        pg.proxy.blackhole()
        # A write transaction on the pooled connection, then a read on a new connection.
        for call in (lambda: store.place_order(new_order("u1", "k")), store.count_rows):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await call()
            assert time.monotonic() - t0 < 8.0
            assert_no_internals(str(info.value), pg.proxy)
        await pg.proxy.start()

        async def answers() -> bool:
            try:
                return (await store.count_rows()).users == 1
            except StoreUnavailable:
                return False

        await until(answers, timeout_s=10.0, what="store answering after the partition healed")
        order, created = await store.place_order(new_order("u1", "k"))
        assert created and order.idempotency_key == "k"
        assert await store.count_rows() == RowCounts(users=1, orders=1, order_items=2)
    finally:
        await store.close()


async def test_sqlite_write_lock_past_busy_timeout_is_unavailable(
    tmp_path: Path, servers: Servers
) -> None:
    """When another process holds the SQLite write lock past the busy timeout, PlaceOrder
    answers UNAVAILABLE "order store unavailable" (no path), and works once it is free."""
    from examples.ecom.storage import SqliteStore

    path = tmp_path / "ecom.db"
    store = await SqliteStore.open(str(path), busy_timeout_s=0.3)
    holder = await aiosqlite.connect(path, isolation_level=None)
    try:
        users, orders = await servers.start(store)
        uid = await new_user(users)
        await holder.execute("BEGIN IMMEDIATE")
        err = await rpc_error(orders.PlaceOrder(request(uid, idempotency_key="k"), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert err.details() == "order store unavailable"
        assert_no_internals(err.details())
        await holder.rollback()
        placed = await orders.PlaceOrder(request(uid, idempotency_key="k"), timeout=10)
        assert placed.idempotency_key == "k"
        assert (await store.count_rows()).orders == 1
    finally:
        await holder.close()
        await store.close()


async def test_other_store_failure_is_internal_without_internals(
    pg: ProxiedPg, sqlite_store: Store, servers: Servers
) -> None:
    """A store failure that is not an outage (here: a missing table) answers INTERNAL
    "order store failed", naming neither the driver's exception nor the database."""
    orders_store = await open_store(pg.url)
    try:
        users, orders = await servers.start(sqlite_store, orders_store)
        uid = await new_user(users)
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(f'DROP TABLE "{pg.schema}".order_items')
        finally:
            await conn.close()
        err = await rpc_error(orders.PlaceOrder(request(uid), timeout=10))
        assert err.code() == grpc.StatusCode.INTERNAL, err.details()
        assert err.details() == "order store failed"
        assert_no_internals(err.details(), pg.proxy)
    finally:
        await orders_store.close()


async def test_meshkit_client_retries_keyed_place_order_once(
    pg: ProxiedPg, sqlite_store: Store, registry: LocalRegistry
) -> None:
    """Through meshkit.dial: a keyed PlaceOrder whose commit answer is lost is retried by
    the client (UNAVAILABLE, idempotency key) and succeeds with one stored order."""
    orders_store = await open_store(pg.url)
    users_server = grpc.aio.server()
    users_target = f"127.0.0.1:{users_server.add_insecure_port('127.0.0.1:0')}"
    user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(sqlite_store), users_server)
    await users_server.start()
    users_channel = grpc.aio.insecure_channel(users_target)
    orderd = meshkit.MeshServer(
        "orderd",
        [
            (
                order_pb2_grpc.add_OrderServiceServicer_to_server,
                OrderServicer(orders_store, user_pb2_grpc.UserServiceStub(users_channel)),
            )
        ],
        registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, instance_id="orderd-1", drain_delay_s=0.0, grace_s=1.0
        ),
    )
    await orderd.start()
    try:
        uid = await new_user(user_pb2_grpc.UserServiceStub(users_channel))
        async with meshkit.dial(
            "orderd", registry=registry, options=meshkit.DialOptions(insecure=True)
        ) as ch:
            await ch.wait_for_endpoints(1)
            stub = order_pb2_grpc.OrderServiceStub(ch)
            pg.proxy.reset_after(b"COMMIT;")  # b"COMMIT" matches BEGIN ... READ COMMITTED
            order = await stub.PlaceOrder(request(uid, idempotency_key="k1"), timeout=10)
            assert pg.proxy.lost_answers == 1  # the first attempt's commit answer was lost
        assert await orders_store.count_rows() == RowCounts(users=0, orders=1, order_items=2)
        stored = await orders_store.get_order(order.id)
        assert stored is not None and stored.idempotency_key == "k1"
    finally:
        await orderd.drain()
        await users_channel.close()
        await users_server.stop(None)
        await orders_store.close()


async def test_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    """Opening an SQLite store whose file cannot be opened (a directory stands in its
    place) raises StoreUnavailable, and its message names no path. (A missing directory
    is refused at once instead, naming it: test_hunt44_cli_sqlite_missing_dir.py.)"""
    from examples.ecom.storage import StoreUnavailable

    (tmp_path / "in-the-way.db").mkdir()
    before = set(threading.enumerate())
    with pytest.raises(StoreUnavailable) as info:
        await open_store(f"sqlite:///{tmp_path / 'in-the-way.db'}")
    assert_no_internals(str(info.value))
    assert "in-the-way" not in str(info.value)
    # aiosqlite stops the failed connection's thread in the background; let it finish
    # while this loop still runs.
    await until(
        lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()],
        timeout_s=5.0,
        what="the failed connection's thread to stop",
    )


async def test_update_user_lost_commit_answer_still_invalidates_the_cache(pg: ProxiedPg) -> None:
    """An UpdateUser whose COMMIT reached PostgreSQL but whose answer was lost fails
    UNAVAILABLE; the rename did commit, and the GetUser cache entry filled before it was
    invalidated anyway, so the next GetUser shows the new name, not the cached one."""
    store = await open_store(pg.url)
    cache = open_user_cache(UserCacheOptions(), registry=CollectorRegistry())
    assert cache is not None
    stack = await start_stack(store, cache=cache)
    try:
        uid = await new_user(stack.users)
        get = user_pb2.GetUserRequest(user_id=uid)
        await stack.users.GetUser(get, timeout=10)  # miss: fills the cache
        assert (await stack.users.GetUser(get, timeout=10)).name == "A"  # hit
        pg.proxy.reset_after(b"COMMIT;")  # not b"COMMIT": "BEGIN ... READ COMMITTED" has it
        err = await rpc_error(stack.users.UpdateUser(
            user_pb2.UpdateUserRequest(user_id=uid, name="Grace"), timeout=10))
        assert pg.proxy.lost_answers == 1
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert (await stack.users.GetUser(get, timeout=10)).name == "Grace"
    finally:
        for closer in stack.closers:
            await closer()
        await cache.aclose()
        await store.close()
