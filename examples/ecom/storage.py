"""Storage of the e-commerce example: one small interface, two real backends.

:class:`Store` is the interface the servicers use. :func:`open_store` picks the
backend from a URL:

* ``sqlite:///relative/path.db`` or ``sqlite:////abs/path.db`` -- an embedded
  SQLite file (aiosqlite), in WAL mode with a busy timeout, so several
  processes can share one file;
* ``postgresql://user@host:port/db`` (or ``postgres://``) -- PostgreSQL
  (asyncpg connection pool). An optional ``schema=NAME`` query parameter keeps
  the tables in that schema (created if missing); other query parameters go to
  asyncpg.

Both backends create their schema on open (``CREATE TABLE IF NOT EXISTS``, made
safe against several processes starting at once) and give the same answers.
Ids are uuid4 strings, timestamps integer unix milliseconds, money integer
minor units.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiosqlite
import asyncpg

ORDER_STATUS_PLACED = "PLACED"


class StoreError(Exception):
    """Base class of the errors a :class:`Store` raises on purpose."""


class DuplicateEmailError(StoreError):
    """``create_user`` was given an email that is already registered."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A stored user. ``password_hash`` is an encoded KDF hash, never a password."""

    id: str
    email: str
    name: str
    password_hash: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One line of an order: ``quantity`` units of ``sku`` at ``unit_price_minor`` each."""

    sku: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True, slots=True)
class NewOrder:
    """What :meth:`Store.place_order` stores; everything already validated.

    ``idempotency_key`` is ``None`` for "no key"; ``fingerprint`` is a digest of
    the request, kept so a replay with a different payload can be told apart.
    """

    user_id: str
    items: tuple[ItemRecord, ...]
    currency: str
    total_minor: int
    idempotency_key: str | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """A stored order. ``seq`` is a store-wide insertion counter used for paging."""

    id: str
    seq: int
    user_id: str
    items: tuple[ItemRecord, ...]
    currency: str
    total_minor: int
    status: str
    created_at_ms: int
    idempotency_key: str | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class OrderPage:
    """One page of :meth:`Store.list_orders`; ``next_before_seq`` is None on the last."""

    orders: list[OrderRecord]
    next_before_seq: int | None


@dataclass(frozen=True, slots=True)
class RowCounts:
    """Numbers of stored rows, for diagnostics and tests."""

    users: int
    orders: int
    order_items: int


class Store(Protocol):
    """The storage interface of the example's servicers (async, backend-neutral)."""

    async def create_user(self, email: str, name: str, password_hash: str) -> UserRecord:
        """Store a new user with a fresh id; raise :class:`DuplicateEmailError` if taken."""
        ...

    async def get_user(self, user_id: str) -> UserRecord | None:
        """Return the user with this id, or None."""
        ...

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """Return the user with this (already normalised) email, or None."""
        ...

    async def place_order(self, order: NewOrder) -> tuple[OrderRecord, bool]:
        """Store an order atomically; return ``(order, created)``.

        If ``order.idempotency_key`` is set and the same user already has an
        order with that key, nothing is written and the existing order is
        returned with ``created=False`` (also under concurrent duplicates).
        """
        ...

    async def get_order(self, order_id: str) -> OrderRecord | None:
        """Return the order with this id, or None."""
        ...

    async def list_orders(
        self, user_id: str, limit: int, before_seq: int | None = None
    ) -> OrderPage:
        """Return up to ``limit`` orders of a user, newest first, older than ``before_seq``."""
        ...

    async def count_rows(self) -> RowCounts:
        """Return how many users, orders and order items are stored."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


def new_id() -> str:
    """Return a fresh random id (a uuid4 string)."""
    return str(uuid.uuid4())


def now_ms() -> int:
    """Return the current time in unix milliseconds."""
    return time.time_ns() // 1_000_000


def _group_items(rows: Iterable[Sequence[Any]]) -> dict[str, tuple[ItemRecord, ...]]:
    """Group ``(order_id, sku, quantity, unit_price_minor)`` rows (in position order)."""
    grouped: dict[str, list[ItemRecord]] = {}
    for order_id, sku, quantity, unit_price_minor in rows:
        grouped.setdefault(order_id, []).append(ItemRecord(sku, quantity, unit_price_minor))
    return {k: tuple(v) for k, v in grouped.items()}


def _order(row: Sequence[Any], items: dict[str, tuple[ItemRecord, ...]]) -> OrderRecord:
    """Build an :class:`OrderRecord` from an ``_ORDER_COLUMNS`` row."""
    seq, oid, user_id, currency, total, status, created, key, fingerprint = row
    return OrderRecord(
        id=oid,
        seq=seq,
        user_id=user_id,
        items=items.get(oid, ()),
        currency=currency,
        total_minor=total,
        status=status,
        created_at_ms=created,
        idempotency_key=key,
        fingerprint=fingerprint,
    )


_USER_COLUMNS = "id, email, name, password_hash, created_at_ms"
_ORDER_COLUMNS = (
    "seq, id, user_id, currency, total_minor, status, created_at_ms, idempotency_key, fingerprint"
)

# --------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        total_minor INTEGER NOT NULL,
        status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        idempotency_key TEXT,
        fingerprint TEXT NOT NULL,
        UNIQUE (user_id, idempotency_key))""",
    "CREATE INDEX IF NOT EXISTS orders_user_seq ON orders (user_id, seq)",
    """CREATE TABLE IF NOT EXISTS order_items (
        order_id TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        unit_price_minor INTEGER NOT NULL,
        PRIMARY KEY (order_id, position))""",
)


async def _enable_wal(conn: aiosqlite.Connection, timeout_s: float) -> None:
    """Switch the file to WAL mode (persistent), retrying while another opener holds it.

    Changing the journal mode can fail with "database is locked" at once,
    without waiting for the busy timeout, when several processes open a new
    file together; so retry here until ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            rows = []
        if rows and str(rows[0][0]).lower() == "wal":
            return
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError("could not switch the database to WAL mode")
        await asyncio.sleep(0.01)


class SqliteStore:
    """:class:`Store` on one SQLite file through one aiosqlite connection.

    WAL mode lets readers and one writer in other processes share the file;
    writes take the write lock up front (``BEGIN IMMEDIATE``) and wait up to
    ``busy_timeout_s`` for it. Within a process, calls on one store are
    serialised by a lock. Open with :meth:`open`.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, *, busy_timeout_s: float = 10.0) -> SqliteStore:
        """Open (creating if needed) the database file at ``path`` and its schema."""
        conn = await aiosqlite.connect(path, timeout=busy_timeout_s, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            await _enable_wal(conn, busy_timeout_s)
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for ddl in _SQLITE_SCHEMA:
                    await conn.execute(ddl)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def create_user(self, email: str, name: str, password_hash: str) -> UserRecord:
        """See :meth:`Store.create_user`."""
        user = UserRecord(new_id(), email, name, password_hash, now_ms())
        async with self._lock:
            cur = await self._conn.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (email) DO NOTHING",
                (user.id, user.email, user.name, user.password_hash, user.created_at_ms),
            )
            if cur.rowcount != 1:
                raise DuplicateEmailError(email)
        return user

    async def _user_where(self, column: str, value: str) -> UserRecord | None:
        async with self._lock:
            rows = await self._fetchall(
                f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = ?", (value,)
            )
        return UserRecord(*rows[0]) if rows else None

    async def get_user(self, user_id: str) -> UserRecord | None:
        """See :meth:`Store.get_user`."""
        return await self._user_where("id", user_id)

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """See :meth:`Store.get_user_by_email`."""
        return await self._user_where("email", email)

    async def _orders(self, where: str, params: Sequence[Any]) -> list[OrderRecord]:
        """Select orders (caller holds the lock) with their items."""
        rows = await self._fetchall(f"SELECT {_ORDER_COLUMNS} FROM orders {where}", params)
        if not rows:
            return []
        ids = [r[1] for r in rows]
        marks = ", ".join("?" * len(ids))
        item_rows = await self._fetchall(
            "SELECT order_id, sku, quantity, unit_price_minor FROM order_items"
            f" WHERE order_id IN ({marks}) ORDER BY order_id, position",
            ids,
        )
        items = _group_items(item_rows)
        return [_order(r, items) for r in rows]

    async def place_order(self, order: NewOrder) -> tuple[OrderRecord, bool]:
        """See :meth:`Store.place_order` (one ``BEGIN IMMEDIATE`` transaction)."""
        oid, created = new_id(), now_ms()
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = await self._conn.execute(
                    "INSERT INTO orders (id, user_id, currency, total_minor, status,"
                    " created_at_ms, idempotency_key, fingerprint)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, idempotency_key) DO NOTHING",
                    (
                        oid,
                        order.user_id,
                        order.currency,
                        order.total_minor,
                        ORDER_STATUS_PLACED,
                        created,
                        order.idempotency_key,
                        order.fingerprint,
                    ),
                )
                inserted = cur.rowcount == 1
                if inserted:
                    await self._conn.executemany(
                        "INSERT INTO order_items (order_id, position, sku, quantity,"
                        " unit_price_minor) VALUES (?, ?, ?, ?, ?)",
                        [
                            (oid, i, it.sku, it.quantity, it.unit_price_minor)
                            for i, it in enumerate(order.items)
                        ],
                    )
                    found = await self._orders("WHERE id = ?", (oid,))
                else:
                    found = await self._orders(
                        "WHERE user_id = ? AND idempotency_key = ?",
                        (order.user_id, order.idempotency_key),
                    )
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()
        return found[0], inserted

    async def get_order(self, order_id: str) -> OrderRecord | None:
        """See :meth:`Store.get_order`."""
        async with self._lock:
            found = await self._orders("WHERE id = ?", (order_id,))
        return found[0] if found else None

    async def list_orders(
        self, user_id: str, limit: int, before_seq: int | None = None
    ) -> OrderPage:
        """See :meth:`Store.list_orders`."""
        async with self._lock:
            found = await self._orders(
                "WHERE user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (user_id, before_seq if before_seq is not None else 2**63 - 1, limit + 1),
            )
        return _page(found, limit)

    async def count_rows(self) -> RowCounts:
        """See :meth:`Store.count_rows`."""
        async with self._lock:
            rows = await self._fetchall(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders),"
                " (SELECT count(*) FROM order_items)"
            )
        return RowCounts(*rows[0])

    async def close(self) -> None:
        """See :meth:`Store.close`."""
        await self._conn.close()


def _page(found: list[OrderRecord], limit: int) -> OrderPage:
    """Cut ``limit + 1`` fetched orders down to a page and its continuation point."""
    if len(found) > limit:
        return OrderPage(found[:limit], found[limit - 1].seq)
    return OrderPage(found, None)


# ----------------------------------------------------------------------- PostgreSQL

_SCHEMA_LOCK_KEY = 0x6D65_7368_6563_6F6D  # "meshecom": serialises schema creation
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _postgres_schema(prefix: str) -> tuple[str, ...]:
    """DDL for PostgreSQL, table names prefixed with ``prefix`` (a schema plus dot, or '')."""
    return (
        f"""CREATE TABLE IF NOT EXISTS {prefix}users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {prefix}orders (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            currency TEXT NOT NULL,
            total_minor BIGINT NOT NULL,
            status TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            idempotency_key TEXT,
            fingerprint TEXT NOT NULL,
            UNIQUE (user_id, idempotency_key))""",
        f"CREATE INDEX IF NOT EXISTS orders_user_seq ON {prefix}orders (user_id, seq)",
        f"""CREATE TABLE IF NOT EXISTS {prefix}order_items (
            order_id TEXT NOT NULL REFERENCES {prefix}orders (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            sku TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            unit_price_minor BIGINT NOT NULL,
            PRIMARY KEY (order_id, position))""",
    )


class PostgresStore:
    """:class:`Store` on PostgreSQL through an asyncpg pool. Open with :meth:`open`.

    Schema creation runs under a transaction-scoped advisory lock, so several
    processes may start at once. Idempotent inserts rely on the unique
    ``(user_id, idempotency_key)`` constraint with ``ON CONFLICT DO NOTHING``.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, dsn: str, *, schema: str | None = None, min_size: int = 1, max_size: int = 10
    ) -> PostgresStore:
        """Connect to ``dsn`` and create the tables, in ``schema`` if given.

        ``schema`` must be a lower-case SQL identifier (``ValueError`` otherwise);
        it is created if missing and becomes the pool's ``search_path``.
        """
        settings: dict[str, str] = {}
        prefix = ""
        if schema is not None:
            if not _SCHEMA_NAME.fullmatch(schema):
                raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
            settings["search_path"] = schema
            prefix = f'"{schema}".'
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, server_settings=settings
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
                if schema is not None:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                for ddl in _postgres_schema(prefix):
                    await conn.execute(ddl)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def create_user(self, email: str, name: str, password_hash: str) -> UserRecord:
        """See :meth:`Store.create_user`."""
        user = UserRecord(new_id(), email, name, password_hash, now_ms())
        row = await self._pool.fetchrow(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (email) DO NOTHING RETURNING id",
            user.id,
            user.email,
            user.name,
            user.password_hash,
            user.created_at_ms,
        )
        if row is None:
            raise DuplicateEmailError(email)
        return user

    async def _user_where(self, column: str, value: str) -> UserRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = $1", value
        )
        return UserRecord(*row) if row is not None else None

    async def get_user(self, user_id: str) -> UserRecord | None:
        """See :meth:`Store.get_user`."""
        return await self._user_where("id", user_id)

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """See :meth:`Store.get_user_by_email`."""
        return await self._user_where("email", email)

    @staticmethod
    async def _orders(
        conn: asyncpg.Connection | asyncpg.Pool, where: str, *args: Any
    ) -> list[OrderRecord]:
        rows = await conn.fetch(f"SELECT {_ORDER_COLUMNS} FROM orders {where}", *args)
        if not rows:
            return []
        item_rows = await conn.fetch(
            "SELECT order_id, sku, quantity, unit_price_minor FROM order_items"
            " WHERE order_id = ANY($1::text[]) ORDER BY order_id, position",
            [r["id"] for r in rows],
        )
        items = _group_items(item_rows)
        return [_order(r, items) for r in rows]

    async def place_order(self, order: NewOrder) -> tuple[OrderRecord, bool]:
        """See :meth:`Store.place_order` (one READ COMMITTED transaction)."""
        oid = new_id()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO orders (id, user_id, currency, total_minor, status,"
                " created_at_ms, idempotency_key, fingerprint)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING seq",
                oid,
                order.user_id,
                order.currency,
                order.total_minor,
                ORDER_STATUS_PLACED,
                now_ms(),
                order.idempotency_key,
                order.fingerprint,
            )
            if row is not None:
                await conn.executemany(
                    "INSERT INTO order_items (order_id, position, sku, quantity,"
                    " unit_price_minor) VALUES ($1, $2, $3, $4, $5)",
                    [
                        (oid, i, it.sku, it.quantity, it.unit_price_minor)
                        for i, it in enumerate(order.items)
                    ],
                )
                found = await self._orders(conn, "WHERE id = $1", oid)
            else:
                # The conflicting row is committed by now (DO NOTHING waited for
                # it), and READ COMMITTED gives this statement a fresh snapshot.
                found = await self._orders(
                    conn,
                    "WHERE user_id = $1 AND idempotency_key = $2",
                    order.user_id,
                    order.idempotency_key,
                )
        return found[0], row is not None

    async def get_order(self, order_id: str) -> OrderRecord | None:
        """See :meth:`Store.get_order`."""
        async with self._pool.acquire() as conn:
            found = await self._orders(conn, "WHERE id = $1", order_id)
        return found[0] if found else None

    async def list_orders(
        self, user_id: str, limit: int, before_seq: int | None = None
    ) -> OrderPage:
        """See :meth:`Store.list_orders`."""
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            found = await self._orders(
                conn,
                "WHERE user_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                user_id,
                before_seq if before_seq is not None else 2**63 - 1,
                limit + 1,
            )
        return _page(found, limit)

    async def count_rows(self) -> RowCounts:
        """See :meth:`Store.count_rows`."""
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders),"
            " (SELECT count(*) FROM order_items)"
        )
        assert row is not None
        return RowCounts(row[0], row[1], row[2])

    async def close(self) -> None:
        """See :meth:`Store.close`."""
        await self._pool.close()


async def open_store(url: str) -> Store:
    """Open (and create the schema of) the store named by ``url``.

    ``sqlite:///path.db`` opens an SQLite file (``sqlite:////abs/path.db`` for an
    absolute path); ``postgresql://...`` (or ``postgres://``) a PostgreSQL pool,
    with an optional ``schema=NAME`` query parameter. Raises ``ValueError`` for
    any other scheme or a malformed URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url!r}")
        return await SqliteStore.open(path)
    if parts.scheme in ("postgresql", "postgres"):
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", None)
        dsn = urlunsplit(parts._replace(query=urlencode(query)))
        return await PostgresStore.open(dsn, schema=schema)
    raise ValueError(f"unsupported store URL scheme {parts.scheme!r} in {url!r}")
