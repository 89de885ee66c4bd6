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

Events (issue 14): ``place_order`` writes an ``OrderPlaced`` event into the ``outbox``
table in the same transaction as the order (a transactional outbox: the event exists
exactly when the order committed); :meth:`Store.pending_events` / :meth:`Store.mark_sent`
make the store a :class:`meshkit.messaging.OutboxStore` for the relay. The read side of
the projection service keeps ``order_summaries`` (per user: count, total) and
``processed_events`` (event ids applied, so a redelivered event counts once), updated
together by :meth:`Store.apply_order_placed`; :meth:`Store.purge_processed` forgets the
ids processed long enough ago that their events can no longer be delivered.

Failures: every write runs in one transaction that is rolled back on any
exception, cancellation included (a call cancelled while it waits for a lock
leaves no transaction open and holds no lock). A database that cannot be
reached raises :class:`StoreUnavailable`; any other database failure raises
:class:`StoreError`; neither message names a host, port, path or driver class
(the driver's exception is the ``__cause__``). The store logs one warning
(``store unavailable``, with the cause) when an outage starts and one info
line (``store available again``) when it ends, and reconnects by itself.
A PostgreSQL transaction the server aborted for a conflict with concurrent ones
(a deadlock, 40P01, or a serialization failure, 40001) is run again, up to
:data:`PG_CONFLICT_ATTEMPTS` attempts in all; it does not fail the call unless every
attempt is aborted so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import sqlite3
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiosqlite
import asyncpg
import structlog

from meshkit.messaging import OutboxEvent
from meshkit.resilience import Backoff, current_deadline

ORDER_STATUS_PLACED = "PLACED"

#: Subject of the ``OrderPlaced`` events the order service's outbox publishes.
ORDER_PLACED_SUBJECT = "ecom.orders.placed"

_log = structlog.get_logger("examples.ecom.storage")

_T = TypeVar("_T")


class StoreError(Exception):
    """Base class of the errors a :class:`Store` raises.

    Raised as such for a database failure that is not a :class:`StoreUnavailable`
    (e.g. a constraint or SQL error: a bug, not a condition to retry). The message
    is generic; the driver's exception is the ``__cause__``.
    """


class DuplicateEmailError(StoreError):
    """``create_user`` or ``update_user`` was given an email that another user has."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, or cannot take the operation now.

    Raised for connection-level failures: PostgreSQL refusing, dropping or not
    answering a connection within the store's timeouts, shutting down, or out of
    connections, refusing writes (read-only: a standby or a demoted primary),
    giving up on a lock or statement timeout, or aborting the transaction for a
    conflict with concurrent ones (deadlock, serialization failure) on each of
    :data:`PG_CONFLICT_ATTEMPTS` attempts; SQLite unable to open the file, an I/O
    error, a read-only or full disk, or the write lock not obtained within
    ``busy_timeout_s``.

    The operation did not take effect, except that a commit whose answer was
    lost may have (hence the idempotency key of :meth:`Store.place_order`).
    Retrying later may succeed; the store reconnects by itself. Servicers answer
    ``UNAVAILABLE``. The message names only the backend.
    """


class _Availability:
    """Whether a store's database answers; logs once when an outage starts and ends.

    ``failed`` logs a warning (with the cause) when the store goes from available
    to unavailable, ``succeeded`` an info line (outage length, failed calls) when
    it comes back. A change is made only by a call that started after the
    previous change, so calls in flight across a change cannot make it flap.
    Times are ``time.monotonic()`` seconds.
    """

    __slots__ = ("_backend", "_changed_at", "_down_since", "_failures")

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._changed_at = -math.inf
        self._down_since: float | None = None
        self._failures = 0

    def succeeded(self, started: float) -> None:
        """Record that a call started at ``started`` reached the database."""
        if self._down_since is None or started < self._changed_at:
            return
        now = time.monotonic()
        _log.info(
            "store available again",
            backend=self._backend,
            down_s=round(now - self._down_since, 3),
            failed_calls=self._failures,
        )
        self._down_since, self._changed_at = None, now

    def failed(self, cause: BaseException, started: float) -> None:
        """Record that a call started at ``started`` could not reach the database."""
        if self._down_since is not None:
            self._failures += 1
            return
        if started < self._changed_at:
            return
        now = time.monotonic()
        _log.warning(
            "store unavailable",
            backend=self._backend,
            cause=f"{type(cause).__name__}: {cause}",
        )
        self._down_since, self._changed_at, self._failures = now, now, 1


def _failure(exc: BaseException, backend: str, *, unavailable: bool) -> BaseException | None:
    """The exception a store raises for ``exc``, or None to re-raise ``exc`` itself.

    A cancelled call raises CancelledError whatever its clean-up ran into; the
    store's own errors pass unchanged; a connection-level failure
    (``unavailable``) becomes :class:`StoreUnavailable`, any other exception a
    :class:`StoreError`.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None if isinstance(exc, asyncio.CancelledError) else asyncio.CancelledError()
    if isinstance(exc, StoreError) or not isinstance(exc, Exception):
        return None
    if unavailable:
        return StoreUnavailable(f"the {backend} store is unavailable")
    return StoreError(f"the {backend} store failed")


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
    event_headers: tuple[tuple[str, str], ...] = ()
    """Headers stored with the ``OrderPlaced`` outbox event (the W3C trace context of the
    request, :func:`meshkit.messaging.capture_context`), published with it."""


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """The projection's view of one user: how many orders, and their total (minor units)."""

    user_id: str
    order_count: int
    total_minor: int


def order_placed_event(event_id: str, order: OrderRecord) -> bytes:
    """The JSON body of an ``OrderPlaced`` event for ``order``."""
    return json.dumps({
        "type": "OrderPlaced", "event_id": event_id, "order_id": order.id,
        "user_id": order.user_id, "total_minor": order.total_minor,
        "currency": order.currency, "created_at_ms": order.created_at_ms,
    }, separators=(",", ":")).encode()


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
    """The storage interface of the example's servicers (async, backend-neutral).

    Every method raises :class:`StoreUnavailable` when the database cannot be
    reached (transient: retry later) and :class:`StoreError` for any other
    database failure. A write is one transaction: it takes effect completely or,
    on any exception or cancellation, not at all.
    """

    async def create_user(self, email: str, name: str, password_hash: str) -> UserRecord:
        """Store a new user with a fresh id; raise :class:`DuplicateEmailError` if taken."""
        ...

    async def get_user(self, user_id: str) -> UserRecord | None:
        """Return the user with this id, or None."""
        ...

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """Return the user with this (already normalised) email, or None."""
        ...

    async def update_user(self, user_id: str, *, name: str | None = None,
                          email: str | None = None) -> UserRecord | None:
        """Set the user's ``name`` and/or (already normalised) ``email``, leaving a
        ``None`` one unchanged, in one transaction; return the updated user, or None if
        there is no user ``user_id``. Raise :class:`DuplicateEmailError` if another user
        has ``email``."""
        ...

    async def place_order(self, order: NewOrder) -> tuple[OrderRecord, bool]:
        """Store an order atomically; return ``(order, created)``.

        If ``order.idempotency_key`` is set and the same user already has an
        order with that key, nothing is written and the existing order is
        returned with ``created=False`` (also under concurrent duplicates). So
        a retry after :class:`StoreUnavailable`, whose first attempt may or may
        not have committed, ends with exactly one order.
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

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        """Return up to ``limit`` outbox events not yet marked sent, oldest first."""
        ...

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        """Mark these outbox events sent (ids already marked or unknown are ignored;
        no ids: nothing done, no lock taken)."""
        ...

    async def purge_sent(self, sent_before_ms: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` (>= 1, default 1000) outbox events marked sent before
        ``sent_before_ms`` (unix ms), oldest sent first; return how many. A pending event
        is never deleted. One short transaction: call again while it returns ``limit``.
        Raises ``ValueError`` for a ``limit`` below 1."""
        ...

    async def apply_order_placed(self, event_id: str, user_id: str, total_minor: int) -> bool:
        """Add one order to ``user_id``'s summary unless ``event_id`` was applied before;
        return whether it was applied now (one transaction: both or neither).

        ``total_minor`` is 0..2^63-1 (else ``ValueError``); the summary's total stops at
        2^63-1 (int64's maximum, the largest the proto can carry) rather than overflow:
        ten orders of the largest valid total already pass it."""
        ...

    async def purge_processed(self, processed_before_ms: int, limit: int = 1000) -> int:
        """Forget up to ``limit`` (>= 1, default 1000) applied event ids processed before
        ``processed_before_ms`` (unix ms), oldest first; return how many. An event whose
        id is forgotten would be counted again if it were delivered again, so the caller
        picks a cutoff past which the stream can no longer deliver it (see
        :data:`examples.ecom.projection_service.PROCESSED_RETENTION_S`). One short
        transaction: call again while it returns ``limit``. Raises ``ValueError`` for a
        ``limit`` below 1."""
        ...

    async def order_summary(self, user_id: str) -> OrderSummary:
        """Return ``user_id``'s summary (zeros for a user with no applied event)."""
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


def _outbox_event(event_id: str, subject: str, payload: bytes | str,
                  headers: str) -> OutboxEvent:
    """An outbox row as the relay takes it; its headers decoded without failing.

    A payload SQLite holds as TEXT (its BLOB column converts nothing) is returned as
    its UTF-8 bytes.

    The store writes the headers as a JSON object of strings. A row holding anything
    else (written by hand or by another writer, or damaged) keeps the string pairs it
    has, none if it is not a JSON object, and is logged as a warning (``outbox headers
    undecodable``, with its id, never the headers): one such row must neither fail
    every read of the outbox nor be held back for ever by the relay, when all that is
    lost is its trace context.
    """
    try:
        decoded = json.loads(headers)
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested too deep
        decoded = None
    if isinstance(decoded, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()):
        kept: dict[str, str] = decoded
    else:
        kept = {k: v for k, v in decoded.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(decoded, dict) else {}
        _log.warning("outbox headers undecodable", event_id=event_id, subject=subject,
                     kept=sorted(kept))
    body = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) \
        else bytes(payload)
    return OutboxEvent(event_id, subject, body, kept)


#: DELETE of the oldest sent outbox rows (parameters: sent before, limit; ``mark`` is the
#: driver's placeholder prefix), through the ``outbox_sent`` index.
_PURGE_SENT = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE sent_at_ms IS NOT NULL"
    " AND sent_at_ms < {mark}1 ORDER BY sent_at_ms LIMIT {mark}2)"
)


#: DELETE of the oldest applied event ids (parameters: processed before, limit; ``mark``
#: is the driver's placeholder prefix), through the ``processed_events_at`` index.
_PURGE_PROCESSED = (
    "DELETE FROM processed_events WHERE event_id IN (SELECT event_id FROM processed_events"
    " WHERE processed_at_ms < {mark}1 ORDER BY processed_at_ms LIMIT {mark}2)"
)


_INT64_MAX = 2**63 - 1

#: A summary's new total: the old one plus the event's, stopping at int64's maximum
#: (2^63-1) instead of overflowing (PostgreSQL: "bigint out of range", failing the apply;
#: SQLite: a float). Written so that no intermediate overflows, for an event total >= 0.
_SATURATED_SUM = (
    "CASE WHEN {table}.total_minor > 9223372036854775807 - excluded.total_minor"
    " THEN 9223372036854775807 ELSE {table}.total_minor + excluded.total_minor END"
)


def _check_total(total_minor: int) -> None:
    if isinstance(total_minor, bool) or not isinstance(total_minor, int) \
            or not 0 <= total_minor <= 2**63 - 1:
        raise ValueError(f"total_minor must be an int in 0..2**63-1, got {total_minor!r}")


def _check_purge_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")


_USER_COLUMNS = "id, email, name, password_hash, created_at_ms"
#: UPDATE of a user's name and email (a NULL parameter keeps the column); ``mark`` is
#: the driver's placeholder prefix, parameters (name, email, id).
_UPDATE_USER = (
    "UPDATE users SET name = coalesce({mark}1, name), email = coalesce({mark}2, email)"
    f" WHERE id = {{mark}}3 RETURNING {_USER_COLUMNS}"
)
_ORDER_COLUMNS = (
    "seq, id, user_id, currency, total_minor, status, created_at_ms, idempotency_key, fingerprint"
)

# --------------------------------------------------------------------------- SQLite


def _numbered(*values: Any) -> dict[str, Any]:
    """The parameters of a statement with SQLite's numbered placeholders (``?1``, ``?2``,
    the shared statements' ``{mark}N``) as the mapping sqlite3 reads them from
    (``{"1": first, ...}``): bound from a sequence they warn ``DeprecationWarning``
    from Python 3.12 on ("Binding 1 ('?1') is a named parameter, but you supplied a
    sequence"), and fail from 3.14."""
    return {str(i): v for i, v in enumerate(values, 1)}

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
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        sent_at_ms INTEGER)""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE sent_at_ms IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at_ms) WHERE sent_at_ms IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS order_summaries (
        user_id TEXT PRIMARY KEY,
        order_count INTEGER NOT NULL,
        total_minor INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS processed_events (
        event_id TEXT PRIMARY KEY,
        processed_at_ms INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS processed_events_at ON processed_events (processed_at_ms)",
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
        if time.monotonic() >= deadline:  # other openers held the file all along
            raise StoreUnavailable("the sqlite store is unavailable")
        await asyncio.sleep(0.01)


#: Primary SQLite result codes meaning "the file cannot be used now": lock not
#: obtained within the busy timeout, cannot open, I/O error, read-only, full,
#: no permission, lock protocol error.
_SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_PROTOCOL,
    }
)
#: Of those, the ones after which the connection is closed and opened afresh on the
#: next call (lock contention and a full disk leave a connection healthy).
_SQLITE_REOPEN = _SQLITE_UNAVAILABLE - {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_FULL,
}


def _sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code carried by ``exc``, or None."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


async def _sqlite_connect(path: str, busy_timeout_s: float) -> aiosqlite.Connection:
    """Open ``path`` (WAL, busy timeout, foreign keys) and create the schema if missing."""
    conn = await aiosqlite.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        await _enable_wal(conn, busy_timeout_s)
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await _sqlite_transaction(conn, _create_sqlite_schema)
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.close()
        raise
    return conn


async def _create_sqlite_schema(conn: aiosqlite.Connection) -> None:
    """Create the tables and indexes that do not exist yet."""
    for ddl in _SQLITE_SCHEMA:
        await conn.execute(ddl)


async def _sqlite_transaction(
    conn: aiosqlite.Connection, op: Callable[[aiosqlite.Connection], Awaitable[_T]]
) -> _T:
    """Run ``op(conn)`` in one ``BEGIN IMMEDIATE`` transaction and commit it.

    On any exception, cancellation included, roll back before re-raising, even
    when the call was cancelled while BEGIN still waited for the write lock:
    aiosqlite runs one connection's calls in order on one thread, so this
    ROLLBACK runs after that BEGIN, whenever the BEGIN ends. A failing ROLLBACK
    is swallowed (the first exception is the one that matters) and leaves
    ``conn.in_transaction`` set, which the caller checks.
    """
    try:
        await conn.execute("BEGIN IMMEDIATE")
        result = await op(conn)
        await conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.rollback()
        raise
    return result


def _left_in_transaction(conn: aiosqlite.Connection) -> bool:
    """Whether ``conn`` is still in a transaction (True if that cannot be told)."""
    try:
        return conn.in_transaction
    except Exception:  # closed under us
        return True


async def _fetchall(conn: aiosqlite.Connection, sql: str,
                    params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
    """Run a query and return all its rows."""
    return list(await conn.execute_fetchall(sql, params))


async def _sqlite_orders(
    conn: aiosqlite.Connection, where: str, params: Sequence[Any]
) -> list[OrderRecord]:
    """Select orders with their items."""
    rows = await _fetchall(conn, f"SELECT {_ORDER_COLUMNS} FROM orders {where}", params)
    if not rows:
        return []
    ids = [r[1] for r in rows]
    marks = ", ".join("?" * len(ids))
    item_rows = await _fetchall(
        conn,
        "SELECT order_id, sku, quantity, unit_price_minor FROM order_items"
        f" WHERE order_id IN ({marks}) ORDER BY order_id, position",
        ids,
    )
    items = _group_items(item_rows)
    return [_order(r, items) for r in rows]


def _check_sqlite_directory(path: str) -> None:
    """Raise :class:`StoreError` naming the directory of the SQLite file ``path``
    (as given, relative to the working directory) when it does not exist or is not a
    directory: SQLite's own error, ``unable to open database file``
    (``SQLITE_CANTOPEN``), is a condition to wait out (:class:`StoreUnavailable`) and
    names nothing. A directory that cannot be looked at (``EACCES``: one on its path
    the process may not search, say) is left to SQLite, whose refusal is then
    :class:`StoreUnavailable` (waited out: permissions can be fixed), not said to be
    missing."""
    directory = os.path.dirname(path) or "."
    try:
        is_dir = stat.S_ISDIR(os.stat(directory).st_mode)
    except (FileNotFoundError, NotADirectoryError) as exc:
        why = ("does not exist" if isinstance(exc, FileNotFoundError)
               else "is not a directory (a file on its path)")
    except (OSError, ValueError):  # EACCES, ELOOP, a NUL...: SQLite's to say
        return
    else:
        if is_dir:
            return
        why = "is not a directory"
    raise StoreError(f"the sqlite file's directory {directory!r} {why} (SQLite creates "
                     "the file, not its directory)")


class SqliteStore:
    """:class:`Store` on one SQLite file through one aiosqlite connection.

    WAL mode lets readers and one writer in other processes share the file;
    writes take the write lock up front (``BEGIN IMMEDIATE``) and wait up to
    ``busy_timeout_s`` for it, then raise :class:`StoreUnavailable`. Within a
    process, calls on one store are serialised by a lock. A call cancelled
    while it waits (its gRPC deadline expired) rolls back as soon as the BEGIN
    ends, so it neither leaves a transaction open nor keeps the lock. After an
    error that may have damaged the connection (cannot open, I/O, read-only,
    or a rollback that failed) the connection is closed and the next call opens
    a new one. Open with :meth:`open`.
    """

    def __init__(self, conn: aiosqlite.Connection, *, path: str, busy_timeout_s: float) -> None:
        self._conn: aiosqlite.Connection | None = conn
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock = asyncio.Lock()
        self._closed = False
        self._availability = _Availability("sqlite")

    @classmethod
    async def open(cls, path: str, *, busy_timeout_s: float = 10.0) -> SqliteStore:
        """Open (creating if needed) the database file at ``path`` and its schema.

        ``busy_timeout_s`` (default 10 s, > 0) bounds each wait for another
        connection's lock. Raises ``ValueError`` for a bad ``busy_timeout_s``,
        :class:`StoreUnavailable` if the file cannot be opened, written or
        locked in time, and :class:`StoreError` for any other failure: a
        directory of ``path`` that does not exist or is not a directory among
        them, named in the message (SQLite creates the file, never its
        directory, so no wait would open it: ``sqlite:///missing-dir/x.db``
        made a service retry it for all of ``--db-wait-s``).
        """
        if not busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        _check_sqlite_directory(path)
        try:
            conn = await _sqlite_connect(path, busy_timeout_s)
        except Exception as exc:
            mapped = _failure(exc, "sqlite", unavailable=_sqlite_code(exc) in _SQLITE_UNAVAILABLE)
            if mapped is None:
                raise
            raise mapped from exc
        return cls(conn, path=path, busy_timeout_s=busy_timeout_s)

    async def _run(
        self,
        op: Callable[[aiosqlite.Connection], Awaitable[_T]],
        *,
        transaction: bool = False,
    ) -> _T:
        """Run ``op`` on the connection (under the store's lock), in one
        ``BEGIN IMMEDIATE`` transaction if ``transaction``; translate failures.

        Raises :class:`StoreUnavailable`, :class:`StoreError` or what ``op``
        raises on purpose; a cancelled call raises ``CancelledError``.
        """
        started = time.monotonic()
        async with self._lock:
            if self._closed:
                raise StoreError("the sqlite store is closed")
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = await _sqlite_connect(self._path, self._busy_timeout_s)
                if transaction:
                    result = await _sqlite_transaction(conn, op)
                else:
                    result = await op(conn)
            except BaseException as exc:
                code = _sqlite_code(exc)
                if conn is not None and (code in _SQLITE_REOPEN or _left_in_transaction(conn)):
                    await self._discard(conn)
                mapped = _failure(exc, "sqlite", unavailable=code in _SQLITE_UNAVAILABLE)
                if isinstance(exc if mapped is None else mapped, StoreUnavailable):
                    self._availability.failed(exc, started)
                if mapped is None:
                    raise
                raise mapped from exc
        self._availability.succeeded(started)
        return result

    async def _discard(self, conn: aiosqlite.Connection) -> None:
        """Close ``conn`` (which rolls back what it holds); the next call opens anew."""
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            await conn.close()

    async def create_user(self, email: str, name: str, password_hash: str) -> UserRecord:
        """See :meth:`Store.create_user` (one ``BEGIN IMMEDIATE`` transaction)."""
        user = UserRecord(new_id(), email, name, password_hash, now_ms())

        async def insert(conn: aiosqlite.Connection) -> None:
            cur = await conn.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (email) DO NOTHING",
                (user.id, user.email, user.name, user.password_hash, user.created_at_ms),
            )
            if cur.rowcount != 1:
                raise DuplicateEmailError(email)

        await self._run(insert, transaction=True)
        return user

    async def _user_where(self, column: str, value: str) -> UserRecord | None:
        rows = await self._run(
            lambda conn: _fetchall(
                conn, f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = ?", (value,)
            )
        )
        return UserRecord(*rows[0]) if rows else None

    async def get_user(self, user_id: str) -> UserRecord | None:
        """See :meth:`Store.get_user`."""
        return await self._user_where("id", user_id)

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """See :meth:`Store.get_user_by_email`."""
        return await self._user_where("email", email)

    async def update_user(self, user_id: str, *, name: str | None = None,
                          email: str | None = None) -> UserRecord | None:
        """See :meth:`Store.update_user` (one ``BEGIN IMMEDIATE`` transaction)."""

        async def update(conn: aiosqlite.Connection) -> UserRecord | None:
            try:
                rows = await _fetchall(conn, _UPDATE_USER.format(mark="?"),
                                       _numbered(name, email, user_id))
            except sqlite3.IntegrityError as exc:  # the only unique column changed: email
                raise DuplicateEmailError(email) from exc
            return UserRecord(*rows[0]) if rows else None

        return await self._run(update, transaction=True)

    async def place_order(self, order: NewOrder) -> tuple[OrderRecord, bool]:
        """See :meth:`Store.place_order` (one ``BEGIN IMMEDIATE`` transaction)."""
        oid, created = new_id(), now_ms()

        async def write(conn: aiosqlite.Connection) -> tuple[OrderRecord, bool]:
            cur = await conn.execute(
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
            if cur.rowcount != 1:  # the key was used before: nothing written
                found = await _sqlite_orders(
                    conn,
                    "WHERE user_id = ? AND idempotency_key = ?",
                    (order.user_id, order.idempotency_key),
                )
                return found[0], False
            await conn.executemany(
                "INSERT INTO order_items (order_id, position, sku, quantity,"
                " unit_price_minor) VALUES (?, ?, ?, ?, ?)",
                [
                    (oid, i, it.sku, it.quantity, it.unit_price_minor)
                    for i, it in enumerate(order.items)
                ],
            )
            found = await _sqlite_orders(conn, "WHERE id = ?", (oid,))
            event_id = new_id()
            await conn.execute(
                "INSERT INTO outbox (event_id, subject, payload, headers, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (event_id, ORDER_PLACED_SUBJECT, order_placed_event(event_id, found[0]),
                 json.dumps(dict(order.event_headers)), created),
            )
            return found[0], True

        return await self._run(write, transaction=True)

    async def get_order(self, order_id: str) -> OrderRecord | None:
        """See :meth:`Store.get_order`."""
        found = await self._run(lambda conn: _sqlite_orders(conn, "WHERE id = ?", (order_id,)))
        return found[0] if found else None

    async def list_orders(
        self, user_id: str, limit: int, before_seq: int | None = None
    ) -> OrderPage:
        """See :meth:`Store.list_orders`."""
        found = await self._run(
            lambda conn: _sqlite_orders(
                conn,
                "WHERE user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (user_id, before_seq if before_seq is not None else 2**63 - 1, limit + 1),
            )
        )
        return _page(found, limit)

    async def count_rows(self) -> RowCounts:
        """See :meth:`Store.count_rows`."""
        rows = await self._run(
            lambda conn: _fetchall(
                conn,
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders),"
                " (SELECT count(*) FROM order_items)",
            )
        )
        return RowCounts(*rows[0])

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        """See :meth:`Store.pending_events`."""
        rows = await self._run(lambda conn: _fetchall(
            conn, "SELECT event_id, subject, payload, headers FROM outbox"
            " WHERE sent_at_ms IS NULL ORDER BY seq LIMIT ?", (limit,)))
        return [_outbox_event(*r) for r in rows]

    async def count_pending(self) -> int:
        """How many outbox events are not yet marked sent (the relay's pending gauge,
        :class:`meshkit.messaging.PendingCounter`)."""
        rows = await self._run(lambda conn: _fetchall(
            conn, "SELECT count(*) FROM outbox WHERE sent_at_ms IS NULL"))
        return int(rows[0][0])

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        """See :meth:`Store.mark_sent` (one transaction; none, and no lock taken, for
        no ids)."""
        if not event_ids:
            return
        sent = now_ms()

        async def mark(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "UPDATE outbox SET sent_at_ms = ? WHERE event_id = ? AND sent_at_ms IS NULL",
                [(sent, e) for e in event_ids])

        await self._run(mark, transaction=True)

    async def purge_sent(self, sent_before_ms: int, limit: int = 1000) -> int:
        """See :meth:`Store.purge_sent` (one ``BEGIN IMMEDIATE`` transaction)."""
        _check_purge_limit(limit)

        async def purge(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(_PURGE_SENT.format(mark="?"),
                                     _numbered(sent_before_ms, limit))
            return max(cur.rowcount, 0)

        return await self._run(purge, transaction=True)

    async def apply_order_placed(self, event_id: str, user_id: str, total_minor: int) -> bool:
        """See :meth:`Store.apply_order_placed` (one ``BEGIN IMMEDIATE`` transaction)."""
        _check_total(total_minor)

        async def apply(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "INSERT INTO processed_events (event_id, processed_at_ms) VALUES (?, ?)"
                " ON CONFLICT (event_id) DO NOTHING", (event_id, now_ms()))
            if cur.rowcount != 1:
                return False
            await conn.execute(
                "INSERT INTO order_summaries (user_id, order_count, total_minor)"
                " VALUES (?, 1, ?) ON CONFLICT (user_id) DO UPDATE SET"
                " order_count = order_count + 1,"
                f" total_minor = {_SATURATED_SUM.format(table='order_summaries')}",
                (user_id, total_minor))
            return True

        return await self._run(apply, transaction=True)

    async def purge_processed(self, processed_before_ms: int, limit: int = 1000) -> int:
        """See :meth:`Store.purge_processed` (one ``BEGIN IMMEDIATE`` transaction)."""
        _check_purge_limit(limit)

        async def purge(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(_PURGE_PROCESSED.format(mark="?"),
                                     _numbered(processed_before_ms, limit))
            return max(cur.rowcount, 0)

        return await self._run(purge, transaction=True)

    async def order_summary(self, user_id: str) -> OrderSummary:
        """See :meth:`Store.order_summary`. A total stored as a REAL (a row summed past
        int64 before totals saturated: SQLite turned it into a float such as 1e19) is
        read as 2^63-1, where :meth:`apply_order_placed` keeps it from then on."""
        rows = await self._run(lambda conn: _fetchall(
            conn, "SELECT order_count, total_minor FROM order_summaries WHERE user_id = ?",
            (user_id,)))
        if not rows:
            return OrderSummary(user_id, 0, 0)
        count, total = rows[0]
        if isinstance(total, float):
            total = min(int(total), _INT64_MAX)
        return OrderSummary(user_id, count, total)

    async def close(self) -> None:
        """See :meth:`Store.close`. Queued calls finish first (aiosqlite closes in order)."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


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
        f"""CREATE TABLE IF NOT EXISTS {prefix}outbox (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            payload BYTEA NOT NULL,
            headers TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            sent_at_ms BIGINT)""",
        f"CREATE INDEX IF NOT EXISTS outbox_pending ON {prefix}outbox (seq)"
        " WHERE sent_at_ms IS NULL",
        f"CREATE INDEX IF NOT EXISTS outbox_sent ON {prefix}outbox (sent_at_ms)"
        " WHERE sent_at_ms IS NOT NULL",
        f"""CREATE TABLE IF NOT EXISTS {prefix}order_summaries (
            user_id TEXT PRIMARY KEY,
            order_count BIGINT NOT NULL,
            total_minor BIGINT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS {prefix}processed_events (
            event_id TEXT PRIMARY KEY,
            processed_at_ms BIGINT NOT NULL)""",
        f"CREATE INDEX IF NOT EXISTS processed_events_at ON {prefix}processed_events"
        " (processed_at_ms)",
    )


#: Exceptions meaning "PostgreSQL cannot be reached or cannot serve now". OSError
#: covers refused and reset connections and TimeoutError (connect, statement and
#: pool-acquire timeouts); class 08 covers a connection lost mid-call.
_PG_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up, recovering
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, ...
    # The server cannot take the operation now, like SQLite's read-only file and write
    # lock not obtained within the busy timeout (both unavailable there):
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a standby, a demoted primary
    asyncpg.exceptions.LockNotAvailableError,  # 55P03: lock_timeout
    asyncpg.exceptions.QueryCanceledError,  # 57014: statement_timeout (as command_timeout)
)


#: Errors of a PostgreSQL transaction the server aborted to resolve a conflict with
#: concurrent ones: nothing of it took effect, and the same transaction run again sees
#: the others' outcome (PostgreSQL docs, "Serialization Failure Handling").
_PG_CONFLICT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,  # 40P01
    asyncpg.exceptions.SerializationError,  # 40001
)

#: Attempts in all (first included) of a PostgreSQL transaction aborted by conflicts.
PG_CONFLICT_ATTEMPTS = 3

#: Pause before each new attempt: full jitter, at most 10 ms, then 20 ms.
_PG_CONFLICT_BACKOFF = Backoff(base_delay_s=0.01, max_delay_s=0.02)


def _pg_failure(exc: BaseException, *, connection_lost: bool) -> BaseException | None:
    """:func:`_failure` for PostgreSQL; ``connection_lost``: the call's connection closed."""
    return _failure(
        exc, "postgresql", unavailable=connection_lost or isinstance(exc, _PG_UNAVAILABLE)
    )


def _pg_lost(conn: asyncpg.Connection) -> bool:
    """Whether the pooled ``conn`` (not yet released by us) has closed."""
    try:
        return bool(conn.is_closed())
    except asyncpg.exceptions.InterfaceError:  # the pool took it back when it closed
        return True


class PostgresStore:
    """:class:`Store` on PostgreSQL through an asyncpg pool. Open with :meth:`open`.

    Schema creation runs under a transaction-scoped advisory lock, so several
    processes may start at once. Idempotent inserts rely on the unique
    ``(user_id, idempotency_key)`` constraint with ``ON CONFLICT DO NOTHING``.

    Writes run in one transaction that asyncpg rolls back on any exception or
    cancellation (a connection that cannot roll back is closed, which the server
    rolls back). When the server cannot be reached, calls raise
    :class:`StoreUnavailable` within the store's timeouts; the pool replaces
    lost connections, so the store recovers by itself when the server is back.

    A write refused because the session is read-only (25006: connected to a standby, or
    to a primary a failover demoted), a lock or statement timeout (55P03, 57014) raise
    :class:`StoreUnavailable`; after a read-only refusal that connection is closed, so
    the next call opens a new one (with a multi-host DSN and
    ``target_session_attrs=read-write``, on the new primary).

    A transaction the server aborts for a deadlock (40P01, e.g. two concurrent
    update_user calls swapping two emails, which wait on each other in the unique
    index until the ``deadlock_timeout``, 1 s by default) or a serialization failure
    (40001) is run again after a jittered pause (:data:`_PG_CONFLICT_BACKOFF`), up to
    :data:`PG_CONFLICT_ATTEMPTS` attempts, and never past the deadline of the gRPC call
    being handled (:func:`meshkit.resilience.current_deadline`); when they are used up
    the call raises :class:`StoreUnavailable` and logs a warning
    (``store transaction aborted by conflicts``).
    """

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._availability = _Availability("postgresql")

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 0,
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float | None = 10.0,
    ) -> PostgresStore:
        """Connect to ``dsn`` and create the tables, in ``schema`` if given.

        Args:
            dsn: a ``postgresql://`` URL.
            schema: a lower-case SQL identifier; created if missing and made the
                pool's ``search_path``.
            min_size: connections kept open even when idle (default 0: an idle
                pool holds none, and nothing reconnects in the background
                while the server is down).
            max_size: most connections open at once (default 10).
            connect_timeout_s: bound on opening a connection and on waiting for
                a free one in the pool (default 5 s).
            command_timeout_s: bound on each statement, and on cancelling one
                (default 10 s; None: no bound, a call then waits as long as its
                caller lets it, e.g. its gRPC deadline).

        Raises:
            ValueError: a bad ``schema`` or timeout, or a ``dsn`` asyncpg cannot parse
                (neither the DSN nor asyncpg's message quoted: either can hold a piece
                of an unencoded password).
            StoreUnavailable: the server cannot be reached.
            StoreError: any other failure (e.g. authentication).
        """
        settings: dict[str, str] = {}
        prefix = ""
        if schema is not None:
            if not _SCHEMA_NAME.fullmatch(schema):
                raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
            settings["search_path"] = schema
            prefix = f'"{schema}".'
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
        if command_timeout_s is not None and not command_timeout_s > 0:
            raise ValueError(f"command_timeout_s must be > 0 or None, got {command_timeout_s!r}")
        pool: asyncpg.Pool | None = None
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings=settings,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
            )
            async with pool.acquire(timeout=connect_timeout_s) as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
                if schema is not None:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                for ddl in _postgres_schema(prefix):
                    await conn.execute(ddl)
        except BaseException as exc:
            if pool is not None:
                pool.terminate()
            if isinstance(exc, ValueError):  # asyncpg's DSN parser: it may quote a password
                raise ValueError(_UNPARSED_PG_URL) from None
            mapped = _pg_failure(exc, connection_lost=False)
            if mapped is None:
                raise
            raise mapped from exc
        return cls(pool, acquire_timeout_s=connect_timeout_s)

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run ``op`` on a pooled connection; translate failures.

        ``op`` must be one whole transaction (or one statement): when the server
        aborts it for a conflict with concurrent transactions it is run again, on a
        fresh connection, as :class:`PostgresStore` describes.

        Raises :class:`StoreUnavailable`, :class:`StoreError` or what ``op``
        raises on purpose; a cancelled call raises ``CancelledError``.
        """
        started = time.monotonic()
        lost = False
        attempts = 0
        try:
            while True:
                attempts += 1
                conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
                try:
                    result = await op(conn)
                    break
                except BaseException as exc:
                    lost = _pg_lost(conn)
                    if not lost and isinstance(
                            exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
                        # a session on a server that takes no writes (a primary a failover
                        # demoted) would fail every write for as long as the pool keeps
                        # it: drop it, the next connection may reach the new primary
                        conn.terminate()
                    if lost or not isinstance(exc, _PG_CONFLICT):
                        raise
                    pause_s = _PG_CONFLICT_BACKOFF.delay_s(attempts)
                    if not self._may_run_again(attempts, pause_s):
                        raise
                finally:
                    await self._release(conn)
                await asyncio.sleep(pause_s)
        except BaseException as exc:
            mapped = _pg_failure(exc, connection_lost=lost)
            if isinstance(exc, _PG_CONFLICT) and type(mapped) is StoreError:
                # aborted on every attempt: contention, not an outage of the database
                _log.warning("store transaction aborted by conflicts", backend="postgresql",
                             attempts=attempts, cause=f"{type(exc).__name__}: {exc}")
                mapped = StoreUnavailable("the postgresql store is unavailable")
            elif isinstance(exc if mapped is None else mapped, StoreUnavailable):
                self._availability.failed(exc, started)
            if mapped is None:
                raise
            raise mapped from exc
        self._availability.succeeded(started)
        return result

    @staticmethod
    def _may_run_again(attempt: int, pause_s: float) -> bool:
        """Whether a transaction aborted by a conflict on attempt ``attempt`` (1-based)
        is run again after ``pause_s`` seconds: attempts are left, and the deadline of
        the call being handled, if any, is not reached by the end of the pause."""
        if attempt >= PG_CONFLICT_ATTEMPTS:
            return False
        deadline = current_deadline()
        return deadline is None or time.monotonic() + pause_s < deadline

    async def _release(self, conn: asyncpg.Connection) -> None:
        """Give ``conn`` back to the pool; a failure to reset it does not fail the call.

        The pool then has closed the connection already (asyncpg terminates a
        connection whose reset failed), and the call's work is done or rolled back.
        """
        with contextlib.suppress(Exception):
            await self._pool.release(conn)

    async def create_user(self, email: str, name: str, password_hash: str) -> UserRecord:
        """See :meth:`Store.create_user` (one statement, its own transaction)."""
        user = UserRecord(new_id(), email, name, password_hash, now_ms())
        row = await self._run(
            lambda conn: conn.fetchrow(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (email) DO NOTHING RETURNING id",
                user.id,
                user.email,
                user.name,
                user.password_hash,
                user.created_at_ms,
            )
        )
        if row is None:
            raise DuplicateEmailError(email)
        return user

    async def _user_where(self, column: str, value: str) -> UserRecord | None:
        # PostgreSQL text cannot hold U+0000, so no row has it (SQLite's answer too);
        # asking would fail the call with a StoreError (Authenticate: INTERNAL)
        if "\x00" in value:
            return None
        row = await self._run(
            lambda conn: conn.fetchrow(
                f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = $1", value
            )
        )
        return UserRecord(*row) if row is not None else None

    async def get_user(self, user_id: str) -> UserRecord | None:
        """See :meth:`Store.get_user`."""
        return await self._user_where("id", user_id)

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """See :meth:`Store.get_user_by_email`."""
        return await self._user_where("email", email)

    async def update_user(self, user_id: str, *, name: str | None = None,
                          email: str | None = None) -> UserRecord | None:
        """See :meth:`Store.update_user` (one READ COMMITTED transaction; a concurrent
        write of the same email waits on the unique index, then one of them fails)."""

        async def update(conn: asyncpg.Connection) -> UserRecord | None:
            async with conn.transaction(isolation="read_committed"):
                try:
                    row = await conn.fetchrow(_UPDATE_USER.format(mark="$"),
                                              name, email, user_id)
                except asyncpg.exceptions.UniqueViolationError as exc:  # only email changes
                    raise DuplicateEmailError(email) from exc
            return UserRecord(*row) if row is not None else None

        return await self._run(update)

    @staticmethod
    async def _orders(conn: asyncpg.Connection, where: str, *args: Any) -> list[OrderRecord]:
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

        async def write(conn: asyncpg.Connection) -> tuple[OrderRecord, bool]:
            async with conn.transaction(isolation="read_committed"):
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
                if row is None:
                    # The key was used before: nothing written. The conflicting row is
                    # committed by now (DO NOTHING waited for its transaction), and READ
                    # COMMITTED gives this statement a fresh snapshot that sees it.
                    found = await self._orders(
                        conn,
                        "WHERE user_id = $1 AND idempotency_key = $2",
                        order.user_id,
                        order.idempotency_key,
                    )
                    return found[0], False
                await conn.executemany(
                    "INSERT INTO order_items (order_id, position, sku, quantity,"
                    " unit_price_minor) VALUES ($1, $2, $3, $4, $5)",
                    [
                        (oid, i, it.sku, it.quantity, it.unit_price_minor)
                        for i, it in enumerate(order.items)
                    ],
                )
                found = await self._orders(conn, "WHERE id = $1", oid)
                event_id = new_id()
                await conn.execute(
                    "INSERT INTO outbox (event_id, subject, payload, headers, created_at_ms)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    event_id, ORDER_PLACED_SUBJECT, order_placed_event(event_id, found[0]),
                    json.dumps(dict(order.event_headers)), found[0].created_at_ms,
                )
            return found[0], True  # committed: only now is the order acknowledged

        return await self._run(write)

    async def get_order(self, order_id: str) -> OrderRecord | None:
        """See :meth:`Store.get_order`."""
        found = await self._run(lambda conn: self._orders(conn, "WHERE id = $1", order_id))
        return found[0] if found else None

    async def list_orders(
        self, user_id: str, limit: int, before_seq: int | None = None
    ) -> OrderPage:
        """See :meth:`Store.list_orders`."""

        async def read(conn: asyncpg.Connection) -> list[OrderRecord]:
            async with conn.transaction(readonly=True):
                return await self._orders(
                    conn,
                    "WHERE user_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                    user_id,
                    before_seq if before_seq is not None else 2**63 - 1,
                    limit + 1,
                )

        return _page(await self._run(read), limit)

    async def count_rows(self) -> RowCounts:
        """See :meth:`Store.count_rows`."""
        row = await self._run(
            lambda conn: conn.fetchrow(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders),"
                " (SELECT count(*) FROM order_items)"
            )
        )
        assert row is not None
        return RowCounts(row[0], row[1], row[2])

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        """See :meth:`Store.pending_events`."""
        rows = await self._run(lambda conn: conn.fetch(
            "SELECT event_id, subject, payload, headers FROM outbox"
            " WHERE sent_at_ms IS NULL ORDER BY seq LIMIT $1", limit))
        return [_outbox_event(*r) for r in rows]

    async def count_pending(self) -> int:
        """How many outbox events are not yet marked sent (the relay's pending gauge,
        :class:`meshkit.messaging.PendingCounter`)."""
        n = await self._run(lambda conn: conn.fetchval(
            "SELECT count(*) FROM outbox WHERE sent_at_ms IS NULL"))
        return int(n)

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        """See :meth:`Store.mark_sent` (one statement; none for no ids)."""
        if not event_ids:
            return
        await self._run(lambda conn: conn.execute(
            "UPDATE outbox SET sent_at_ms = $1 WHERE event_id = ANY($2::text[])"
            " AND sent_at_ms IS NULL", now_ms(), list(event_ids)))

    async def purge_sent(self, sent_before_ms: int, limit: int = 1000) -> int:
        """See :meth:`Store.purge_sent` (one statement)."""
        _check_purge_limit(limit)
        status = await self._run(lambda conn: conn.execute(
            _PURGE_SENT.format(mark="$"), sent_before_ms, limit))
        return int(status.rsplit(" ", 1)[-1])

    async def apply_order_placed(self, event_id: str, user_id: str, total_minor: int) -> bool:
        """See :meth:`Store.apply_order_placed` (one READ COMMITTED transaction; a
        concurrent apply of the same id waits on the primary key, then does nothing)."""
        _check_total(total_minor)

        async def apply(conn: asyncpg.Connection) -> bool:
            async with conn.transaction(isolation="read_committed"):
                row = await conn.fetchrow(
                    "INSERT INTO processed_events (event_id, processed_at_ms) VALUES ($1, $2)"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id", event_id, now_ms())
                if row is None:
                    return False
                await conn.execute(
                    "INSERT INTO order_summaries (user_id, order_count, total_minor)"
                    " VALUES ($1, 1, $2) ON CONFLICT (user_id) DO UPDATE SET"
                    " order_count = order_summaries.order_count + 1,"
                    f" total_minor = {_SATURATED_SUM.format(table='order_summaries')}",
                    user_id, total_minor)
                return True

        return await self._run(apply)

    async def purge_processed(self, processed_before_ms: int, limit: int = 1000) -> int:
        """See :meth:`Store.purge_processed` (one statement)."""
        _check_purge_limit(limit)
        status = await self._run(lambda conn: conn.execute(
            _PURGE_PROCESSED.format(mark="$"), processed_before_ms, limit))
        return int(status.rsplit(" ", 1)[-1])

    async def order_summary(self, user_id: str) -> OrderSummary:
        """See :meth:`Store.order_summary`."""
        row = await self._run(lambda conn: conn.fetchrow(
            "SELECT order_count, total_minor FROM order_summaries WHERE user_id = $1", user_id))
        return OrderSummary(user_id, row[0], row[1]) if row else OrderSummary(user_id, 0, 0)

    async def close(self) -> None:
        """See :meth:`Store.close`; after ``connect_timeout_s`` (e.g. the server does
        not answer) the remaining connections are dropped without goodbye."""
        with contextlib.suppress(TimeoutError):  # then asyncpg has terminated the pool
            await asyncio.wait_for(self._pool.close(), self._acquire_timeout_s)


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?://)?")


#: ValueError of a postgresql URL asyncpg cannot parse: its own message quotes what it
#: took for the port, which is a piece of the password when one holds ``/``, ``?`` or
#: ``#`` unencoded (``postgresql://app:s3cr/et@db`` -> ``invalid literal for int() ...:
#: 's3cr'``).
_UNPARSED_PG_URL = ("cannot parse the postgresql URL: a port that is not a number 0..65535,"
                    " a bad query parameter, or a password holding '/', '?' or '#'"
                    " (percent-encode it: %2F, %3F, %23)")


def _shown_url(url: str) -> str:
    """``url`` as an error message may quote it, without credentials: user info
    (everything after ``scheme:`` or ``scheme://`` up to the *last* ``@``, so a password
    holding ``/``, ``?``, ``#`` or ``@`` too) and any query or fragment (which may carry
    ``password=``) replaced by ``***``:
    ``postgresql+asyncpg://app:pw@db:5432/shop?sslmode=require`` ->
    ``postgresql+asyncpg://***@db:5432/shop?***``."""
    scheme = _URL_SCHEME.match(url)
    head = scheme.group() if scheme else ""
    rest = url[len(head):]
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    for mark in "?#":
        before, found, _ = rest.partition(mark)
        if found:
            rest = f"{before}{mark}***"
    return head + rest


async def open_store(url: str) -> Store:
    """Open (and create the schema of) the store named by ``url``.

    ``sqlite:///path.db`` opens an SQLite file (``sqlite:////abs/path.db`` for an
    absolute path); ``postgresql://...`` (or ``postgres://``) a PostgreSQL pool,
    with an optional ``schema=NAME`` query parameter. Raises ``ValueError`` for
    any other scheme or a malformed URL (quoting it with user info, query and
    fragment hidden: ``***``), :class:`StoreUnavailable` if the database cannot be
    reached, and :class:`StoreError` for other failures.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ValueError(f"expected sqlite:///path/to/file.db, got {_shown_url(url)!r}")
        return await SqliteStore.open(path)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            parts.port  # noqa: B018 - raises for what asyncpg would fail on, quoting it
        except ValueError:
            raise ValueError(f"{_UNPARSED_PG_URL}, got {_shown_url(url)!r}") from None
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", None)
        dsn = urlunsplit(parts._replace(query=urlencode(query)))
        return await PostgresStore.open(dsn, schema=schema)
    raise ValueError(
        f"unsupported store URL scheme {parts.scheme!r} in {_shown_url(url)!r}; expected"
        " sqlite:///path/to/file.db or postgresql://user@host:port/db"
    )
