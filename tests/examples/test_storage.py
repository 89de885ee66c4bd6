"""The Store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from examples.ecom.storage import (
    DuplicateEmailError,
    ItemRecord,
    NewOrder,
    PostgresStore,
    RowCounts,
    Store,
    StoreUnavailable,
    open_store,
)
from meshkit.resilience import deadline_scope

from .conftest import PG_URL

pytestmark = pytest.mark.timeout(30)

ITEMS = (ItemRecord("SKU-1", 2, 150), ItemRecord("SKU-2", 1, 999))


def new_order(user_id: str, key: str | None = None, fingerprint: str = "fp") -> NewOrder:
    """An order of ITEMS in EUR for ``user_id``."""
    return NewOrder(user_id, ITEMS, "EUR", 1299, key, fingerprint)


async def test_user_roundtrip(store: Store) -> None:
    """A created user can be read back by id and by email; unknown ones give None."""
    user = await store.create_user("ada@example.com", "Ada", "scrypt$hash")
    assert await store.get_user(user.id) == user
    assert await store.get_user_by_email("ada@example.com") == user
    assert await store.get_user("00000000-0000-4000-8000-000000000000") is None
    assert await store.get_user_by_email("nobody@example.com") is None
    # U+0000 (PostgreSQL text cannot hold it): no such user there either, not an error
    assert await store.get_user_by_email("ada\x00@example.com") is None
    assert await store.get_user("\x00") is None


async def test_duplicate_email_rejected(store: Store) -> None:
    """A second user with the same email raises DuplicateEmailError and stores nothing."""
    await store.create_user("ada@example.com", "Ada", "h")
    with pytest.raises(DuplicateEmailError):
        await store.create_user("ada@example.com", "Other", "h2")
    assert await store.count_rows() == RowCounts(users=1, orders=0, order_items=0)


async def test_update_user(store: Store) -> None:
    """update_user changes the given fields only, returns the stored result, and gives
    None for an unknown id; a user may keep its own email."""
    ada = await store.create_user("ada@example.com", "Ada", "h")
    renamed = await store.update_user(ada.id, name="Ada L.")
    assert renamed == dataclasses.replace(ada, name="Ada L.") == await store.get_user(ada.id)
    moved = await store.update_user(ada.id, email="ada@lovelace.org")
    assert moved == dataclasses.replace(renamed, email="ada@lovelace.org")
    assert await store.get_user_by_email("ada@example.com") is None
    same = await store.update_user(ada.id, name="Ada", email="ada@lovelace.org")
    assert same == dataclasses.replace(moved, name="Ada") == await store.get_user(ada.id)
    assert await store.update_user("00000000-0000-4000-8000-000000000000", name="X") is None
    assert await store.count_rows() == RowCounts(users=1, orders=0, order_items=0)


async def test_update_user_taken_email_changes_nothing(store: Store) -> None:
    """An email another user has raises DuplicateEmailError and rolls the whole update
    back (the name given with it too); the store keeps working afterwards."""
    ada = await store.create_user("ada@example.com", "Ada", "h")
    grace = await store.create_user("grace@example.com", "Grace", "h")
    with pytest.raises(DuplicateEmailError):
        await store.update_user(ada.id, name="Not Ada", email="grace@example.com")
    assert await store.get_user(ada.id) == ada
    assert await store.get_user(grace.id) == grace
    assert await store.update_user(ada.id, name="Ada L.") == dataclasses.replace(
        ada, name="Ada L.")


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)  # PG only
async def test_pg_update_user_deadlock_victim_is_run_again(store_url: str, store: Store) -> None:
    """update_user picked as the victim of a PostgreSQL deadlock is run again, not failed.

    What was wrong: two transactions changing two users' emails to each other's (a swap)
    wait for each other on the unique email index; PostgreSQL breaks the cycle after
    ``deadlock_timeout`` (1 s) with 40P01 ``DeadlockDetectedError``, which the store
    raised as a plain :class:`StoreError`.

    What a user saw: one of two concurrent UpdateUser calls swapping emails answered
    INTERNAL "user store failed" after a 1 s stall and logged an exception, where any
    serial order (and SQLite) answers ALREADY_EXISTS to both (5 runs of 5 on the gRPC
    swap).

    Now: the store runs a transaction PostgreSQL aborted for a deadlock (or a
    serialization failure, 40001) again, up to 3 attempts with a jittered pause; the new
    attempt sees the other transaction's outcome, here the email still taken:
    :class:`DuplicateEmailError`.

    The cycle is made certain: ``other`` moves grace's email away (holding grace's row
    and her email's index entry), ``update_user(ada, email=grace's)`` waits on that;
    ``other`` then writes ada's row, which update_user holds. update_user waited first
    (by 0.5 s), so its deadlock check runs first and it is the victim.
    """
    ada = await store.create_user("ada@example.com", "Ada", "h")
    grace = await store.create_user("grace@example.com", "Grace", "h")
    schema = dict(parse_qsl(urlsplit(store_url).query))["schema"]
    other = await asyncpg.connect(PG_URL, timeout=5, server_settings={"search_path": schema})
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("UPDATE users SET email = 'moved@example.com' WHERE id = $1",
                            grace.id)
        swap = asyncio.create_task(store.update_user(ada.id, email="grace@example.com"))
        pid = other.get_server_pid()
        for _ in range(500):  # at most 10 s until update_user waits on ``other``
            if await other.fetchval("SELECT count(*) FROM pg_stat_activity"
                                    " WHERE $1 = ANY(pg_blocking_pids(pid))", pid):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("update_user never waited on the other transaction")
        await asyncio.sleep(0.5)
        # waits on update_user's row lock until PostgreSQL aborts update_user (1 s)
        await other.execute("UPDATE users SET name = 'Other' WHERE id = $1", ada.id)
        await tx.rollback()
        with pytest.raises(DuplicateEmailError):
            await asyncio.wait_for(swap, 15)
    finally:
        await other.close()
    assert await store.get_user(ada.id) == ada
    assert await store.get_user(grace.id) == grace


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)  # PG only
async def test_pg_conflict_retries_are_bounded(store_url: str, store: Store) -> None:
    """A transaction PostgreSQL aborts on every attempt is tried 3 times, then raises
    StoreUnavailable (UNAVAILABLE: the operation did not take effect, a later one may)
    with one warning, not the outage's; past the handled call's deadline no new attempt
    starts."""
    assert isinstance(store, PostgresStore)
    attempts = 0

    async def op(conn: asyncpg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        raise asyncpg.exceptions.SerializationError("could not serialize access")

    with capture_logs() as logs, pytest.raises(StoreUnavailable):
        await store._run(op)
    assert attempts == 3
    # contention, not an outage: one warning, no "store unavailable"
    assert [(e["log_level"], e["event"], e["attempts"]) for e in logs] == [
        ("warning", "store transaction aborted by conflicts", 3)], logs
    attempts = 0
    with deadline_scope(time.monotonic()), pytest.raises(StoreUnavailable):
        await store._run(op)
    assert attempts == 1
    assert (await store.count_rows()).users == 0  # the store works on


async def test_place_and_get_order(store: Store) -> None:
    """A placed order keeps its items in order and can be read back by id."""
    order, created = await store.place_order(new_order("u1"))
    assert created
    assert order.items == ITEMS
    assert (order.user_id, order.currency, order.total_minor) == ("u1", "EUR", 1299)
    assert order.status == "PLACED" and order.idempotency_key is None
    assert await store.get_order(order.id) == order
    assert await store.get_order("missing") is None


async def test_idempotency_key_replay(store: Store) -> None:
    """The same key for the same user returns the first order; other users are separate."""
    first, created1 = await store.place_order(new_order("u1", "k1"))
    again, created2 = await store.place_order(new_order("u1", "k1", fingerprint="other"))
    other_user, created3 = await store.place_order(new_order("u2", "k1"))
    assert (created1, created2, created3) == (True, False, True)
    assert again == first and again.fingerprint == "fp"
    assert other_user.id != first.id
    assert (await store.count_rows()).orders == 2


async def test_no_key_places_every_time(store: Store) -> None:
    """Without an idempotency key every call stores a new order."""
    a, _ = await store.place_order(new_order("u1"))
    b, _ = await store.place_order(new_order("u1"))
    assert a.id != b.id
    assert await store.count_rows() == RowCounts(users=0, orders=2, order_items=4)


async def test_concurrent_duplicates_store_one_order(
    store: Store, open_more: Callable[[], Awaitable[Store]]
) -> None:
    """20 concurrent place_order calls with one key, over 5 connections, store one order."""
    stores = [store, *[await open_more() for _ in range(4)]]
    results = await asyncio.gather(
        *(stores[i % len(stores)].place_order(new_order("u1", "same-key")) for i in range(20))
    )
    assert len({order.id for order, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await store.count_rows() == RowCounts(users=0, orders=1, order_items=2)


async def test_list_orders_pages_newest_first(store: Store) -> None:
    """list_orders returns a user's orders newest first, in pages that end with None."""
    placed = [(await store.place_order(new_order("u1")))[0].id for _ in range(5)]
    await store.place_order(new_order("u2"))
    seen: list[str] = []
    before = None
    for expected_size in (2, 2, 1):
        page = await store.list_orders("u1", 2, before)
        assert len(page.orders) == expected_size
        seen += [o.id for o in page.orders]
        before = page.next_before_seq
    assert before is None
    assert seen == placed[::-1]
    assert (await store.list_orders("nobody", 10)).orders == []


async def test_exact_page_has_no_next(store: Store) -> None:
    """A page that happens to hold the last order says there is no next page."""
    for _ in range(2):
        await store.place_order(new_order("u1"))
    page = await store.list_orders("u1", 2)
    assert len(page.orders) == 2 and page.next_before_seq is None


async def test_concurrent_open_creates_schema_once(store_url: str) -> None:
    """Several stores opening one empty database at once all get a working schema."""
    stores = await asyncio.gather(*(open_store(store_url) for _ in range(4)))
    try:
        await stores[0].create_user("a@example.com", "A", "h")
        assert (await stores[3].count_rows()).users == 1
    finally:
        for s in stores:
            await s.close()


async def test_open_store_rejects_unknown_scheme() -> None:
    """open_store raises ValueError for URLs it has no backend for."""
    with pytest.raises(ValueError, match="unsupported"):
        await open_store("mysql://localhost/db")
    with pytest.raises(ValueError, match="sqlite"):
        await open_store("sqlite://")


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+asyncpg://app:s3cret-pw@127.0.0.1:5432/test",
     "'postgresql+asyncpg://***@127.0.0.1:5432/test'"),
    ("mysql://app:s3cret/pw?x@db:3306/shop", "'mysql://***@db:3306/shop'"),
    ("mysql://db/shop?user=app&password=s3cret-pw", "'mysql://db/shop?***'"),
    ("postgresql+asyncpg:app:s3cret-pw@db/shop", "'postgresql+asyncpg:***@db/shop'"),
    ("sqlite://app:s3cret-pw@host/ecom.db", "'sqlite://***@host/ecom.db'"),
])
async def test_open_store_error_hides_credentials(url: str, shown: str) -> None:
    """open_store's ValueError for a URL it cannot use quotes it without its password.

    What was wrong: the message quoted the whole URL (``unsupported store URL scheme
    'postgresql+asyncpg' in 'postgresql+asyncpg://app:<password>@...'``).

    What a user saw: a service started with the common SQLAlchemy-style
    ``DATABASE_URL=postgresql+asyncpg://app:<password>@db/shop`` exited with the
    database password on the last line of its traceback, in the pod's log stream.

    Now: user info (up to the last ``@``: a password may hold ``/``, ``?`` or ``#``) and
    the query or fragment (``?password=``) are shown as ``***``.
    """
    with pytest.raises(ValueError) as info:
        await open_store(url)
    assert shown in str(info.value)
    assert "s3cret" not in str(info.value)


REPO_ROOT = Path(__file__).resolve().parents[2]

_WORKER = """
import asyncio, sys
from examples.ecom.storage import ItemRecord, NewOrder, open_store

async def main():
    store = await open_store(sys.argv[1])
    try:
        for i in range(5):
            await store.place_order(
                NewOrder("u1", (ItemRecord("S", 1, 1),), "EUR", 1, "shared", "fp"))
            await store.place_order(
                NewOrder("u1", (ItemRecord("S", 1, 1),), "EUR", 1, None, "fp"))
    finally:
        await store.close()

asyncio.run(main())
"""


async def test_sqlite_file_shared_by_processes(tmp_path: Path) -> None:
    """Four processes writing one SQLite file at once store exactly the expected rows."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    root = REPO_ROOT
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            url,
            cwd=root,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outcomes = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err.decode() for _, err in outcomes]
    store = await open_store(url)
    try:
        assert await store.count_rows() == RowCounts(users=0, orders=1 + 4 * 5, order_items=21)
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["postgresql://app:s3cr/et@127.0.0.1:1/shop",
                                 "postgresql://app:s3cr?et@127.0.0.1:1/shop",
                                 "postgresql://app:s3cr#et@127.0.0.1:1/shop",
                                 "postgresql://app:s3cret@127.0.0.1:5x432/shop"])
async def test_a_postgresql_url_asyncpg_cannot_parse_is_refused_without_the_password(
        url: str) -> None:
    """A password holding '/', '?' or '#' pasted unencoded (or a mistyped port) made
    asyncpg's DSN parser fail 'invalid literal for int() with base 10: 's3cr'' on what
    it took for the port: the service exited with StoreError 'the postgresql store
    failed' (nothing wrong named) chained to that ValueError, the password's start in
    its traceback. Now a ValueError quoting the URL as eb35505 does, the driver's
    message dropped."""
    with pytest.raises(ValueError) as info:
        await open_store(url)
    shown = "".join(traceback.format_exception(info.value))
    assert "s3cr" not in shown, shown
    assert "127.0.0.1" in str(info.value) and "percent-encode" in str(info.value)


async def test_postgres_store_open_refuses_an_unparsable_dsn_without_quoting_it() -> None:
    """PostgresStore.open called directly (not through open_store) says the same,
    quoting neither the DSN nor asyncpg's message."""
    dsn = "postgresql://app:s3cr/et@127.0.0.1:1/shop"
    with pytest.raises(ValueError) as info:
        await PostgresStore.open(dsn)
    shown = "".join(traceback.format_exception(info.value))
    assert "s3cr" not in shown and "percent-encode" in shown, shown
