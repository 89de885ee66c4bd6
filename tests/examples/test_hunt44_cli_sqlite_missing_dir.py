"""``sqlite:///missing-dir/x.db`` fails at once, naming the missing directory.

SQLite cannot create a file in a directory that does not exist (``unable to open
database file``, ``SQLITE_CANTOPEN``), which the store maps to ``StoreUnavailable``, a
condition to wait out: a service given such a URL retried it every second for all of
``--db-wait-s`` (60 s by default) and then said only "unable to open database file".
No wait makes the directory appear (SQLite never creates it), so it is now a
``StoreError`` naming the directory, and the service ends at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from examples.ecom._process import open_store_waiting
from examples.ecom.storage import SqliteStore, StoreError, StoreUnavailable, open_store


async def test_open_names_the_missing_directory(tmp_path: Path) -> None:
    """SqliteStore.open: a StoreError (not StoreUnavailable) quoting the directory."""
    missing = tmp_path / "missing-dir"
    with pytest.raises(StoreError) as raised:
        await asyncio.wait_for(SqliteStore.open(str(missing / "x.db")), 10)
    assert not isinstance(raised.value, StoreUnavailable), raised.value
    assert str(missing) in str(raised.value), raised.value
    assert not missing.exists()


async def test_a_parent_that_is_a_file_is_named_too(tmp_path: Path) -> None:
    """A path under a regular file: the same error, saying it is not a directory."""
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError) as raised:
        await asyncio.wait_for(open_store(f"sqlite:///{tmp_path}/plain/x.db"), 10)
    assert not isinstance(raised.value, StoreUnavailable), raised.value
    assert "not a directory" in str(raised.value), raised.value


@pytest.mark.timeout(45)
async def test_a_service_start_does_not_wait_for_it(tmp_path: Path) -> None:
    """open_store_waiting with a 60 s wait ends at once (SystemExit naming the
    directory), not after the wait."""
    missing = tmp_path / "missing-dir"
    started = time.monotonic()
    # no wait_for: a SystemExit out of a task of its own would stop the test's loop
    with pytest.raises(SystemExit) as ended:
        await open_store_waiting(f"sqlite:///{missing}/x.db", 60.0)
    assert time.monotonic() - started < 30.0  # before: the 60 s wait (the mark ends it)
    assert str(missing) in str(ended.value.code), ended.value.code


async def test_an_existing_directory_still_opens(tmp_path: Path) -> None:
    """The check passes a file in an existing directory (created with its schema)."""
    store = await open_store(f"sqlite:///{tmp_path}/x.db")
    try:
        assert (tmp_path / "x.db").exists()
    finally:
        await store.close()
