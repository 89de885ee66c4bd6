"""LocalRegistry: a deregistered instance's tombstone survives another service taking its
id over.

A deregistration leaves a tombstone (module docstring, "Deregistration"), so that a watch
keeping endpoints after a fault (here: the file replaced, ``fault_grace_s``) still drops an
instance that left explicitly. The ``deregistered`` table is keyed by instance id alone,
as ``instances`` is; since c0cf776 an id freed by one service may go to another. That
other service's register deleted the tombstone of the id whatever its service, so a
ledger watch in its grace period kept ledger's deregistered pod-1 (calls to an instance
that drained) after billing registered pod-1. Real SQLite files; ``LocalRegistry``
objects on one directory stand for processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry

pytestmark = pytest.mark.timeout(30)


def _replace_with_copy(db: Path) -> None:
    """Replace ``db`` by a consistent copy of it (SQLite's backup API): another inode,
    the same rows and tombstones; its -wal and -shm files go with the old one."""
    copy = db.with_name("copy.db")
    src, dst = sqlite3.connect(db), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")
    os.replace(copy, db)


def _inst(service: str, port: int) -> Instance:
    return Instance(service=service, instance_id="pod-1", host="127.0.0.1", port=port)


async def test_a_tombstone_survives_another_service_taking_the_id(tmp_path: Path) -> None:
    fast = dict(ttl_s=1.0, heartbeat_interval_s=0.3)
    one = LocalRegistry(LocalOptions(path=tmp_path, **fast))  # type: ignore[arg-type]
    two = LocalRegistry(LocalOptions(path=tmp_path, **fast))  # type: ignore[arg-type]
    # the watcher polls slowly (the steps below land between two polls) and keeps
    # endpoints for long after a fault
    watcher = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=30.0, poll_interval_s=3.0,
                                         fault_grace_s=30.0))
    ledger = _inst("ledger", 9101)
    try:
        await one.register(ledger)
        watch = watcher.watch("ledger")
        assert await asyncio.wait_for(anext(watch), 10) == frozenset({ledger})
        await one.deregister(ledger)  # drained: a tombstone
        await two.register(_inst("billing", 9102))  # the free id, another service
        # the file replaced (a copy renamed over it): the watcher's next poll reopens it
        # and keeps its last endpoints that the registry does not list, unless they left
        db = tmp_path / "registry.db"
        await asyncio.to_thread(_replace_with_copy, db)
        try:
            nxt = await asyncio.wait_for(anext(watch), 10)
        except TimeoutError:
            pytest.fail("the ledger watch kept ledger's deregistered pod-1 (its tombstone "
                        "was deleted when billing registered pod-1)")
        assert nxt == frozenset(), nxt
        await watch.aclose()
    finally:
        await one.close()
        await two.close()
        await watcher.close()
