"""A SQLite directory that cannot be looked at is not said to be missing (review of
ae6a4c21).

ae6a4c21 refuses ``sqlite:///missing-dir/x.db`` at once with a ``StoreError`` naming the
directory, read with ``os.path.isdir``/``os.path.exists``, which answer ``False`` for
any ``OSError``: a directory that exists under one the service may not search
(``EACCES``: a volume mounted with the wrong owner) was refused as "does not exist",
a hard failure with a false reason where SQLite's own error (``unable to open
database file``, ``StoreUnavailable``, waited out as before that commit) was right.
Only a directory that is missing (``ENOENT``) or not a directory (``ENOTDIR``, or a
file) is refused now; any other failure to look is left to SQLite.

The test runs as root here, so the denial is made by ``os.stat`` (SQLite's own open,
in C, is not denied and succeeds).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from examples.ecom.storage import SqliteStore, StoreError


async def test_a_directory_that_cannot_be_searched_is_left_to_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stat of the directory fails EACCES: no 'does not exist' refusal; SQLite opens."""
    locked = tmp_path / "locked"
    (locked / "db").mkdir(parents=True)
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(str(locked / "db")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    try:
        store = await asyncio.wait_for(SqliteStore.open(str(locked / "db" / "x.db")), 10)
    except StoreError as exc:  # before: "the sqlite file's directory ... does not exist"
        pytest.fail(f"refused: {exc}")
    await store.close()


async def test_missing_and_not_a_directory_are_still_refused(tmp_path: Path) -> None:
    """ENOENT and a file in the way: the StoreError naming the directory, as before."""
    with pytest.raises(StoreError, match="does not exist"):
        await asyncio.wait_for(SqliteStore.open(str(tmp_path / "nope" / "x.db")), 10)
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError, match="is not a directory"):
        await asyncio.wait_for(SqliteStore.open(str(tmp_path / "plain" / "x.db")), 10)
    with pytest.raises(StoreError, match="is not a directory"):
        await asyncio.wait_for(
            SqliteStore.open(str(tmp_path / "plain" / "sub" / "x.db")), 10)
