"""LocalRegistry: the file's write lock held for longer than a TTL by another process
(an operator's ``sqlite3`` shell inside a transaction, a backup tool, a checkpoint on a
stalled disk).

Every heartbeat waits for the lock (up to ``busy_timeout_s``, 5 s by default, longer
than the 3 s TTL), so every entry expires meanwhile: a registry fault, not every
instance leaving. A watch that noticed the expiry during the stall probed the file, its
probe waited for the lock too and worked once the lock was let go: the watch then took
the registry for healthy and applied the read made during the stall, so every endpoint
left its set until the owners' renewals landed (a client's calls failed UNAVAILABLE
'no endpoint' meanwhile). A write that waited past the point where renewals lapse
(``ttl_s - heartbeat_interval_s``) is now an outage that ended as it did, so the watches
keep their endpoints for ``fault_grace_s`` after it, as after any write outage. Real
SQLite files; ``LocalRegistry`` objects on one directory stand for processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


async def test_a_file_locked_past_the_ttl_drops_no_endpoint(tmp_path: Path) -> None:
    opts = LocalOptions(path=tmp_path, ttl_s=0.15, poll_interval_s=0.02)
    owner, client = LocalRegistry(opts), LocalRegistry(opts)
    a = Instance(service="svc", instance_id="a", host="127.0.0.1", port=20001)
    seen: list[frozenset[Instance]] = []

    async def follow() -> None:
        async for instances in client.watch("svc"):
            seen.append(instances)

    following = asyncio.create_task(follow())
    try:
        await owner.register(a)
        await until(lambda: bool(seen) and seen[-1] == {a}, timeout_s=8, what="a listed")
        listed = len(seen) - 1
        other = sqlite3.connect(str(opts.path), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            await asyncio.sleep(0.45)  # three TTLs: a's entry expires in the file
            other.execute("COMMIT")
        finally:
            other.close()
        await asyncio.sleep(0.3)  # the owner's renewal lands
        assert all(s == {a} for s in seen[listed:]), seen[listed:]
        assert client.status().write_errors >= 1  # the stall, recorded as an outage
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await owner.close()
        await client.close()
