"""LocalRegistry: a process that cannot write the registry while others can (a reader
whose user may only read the file, a client container given the directory read-only).

Its write probe fails, which the registry takes for a fault: the endpoints its watches had
are kept past their TTL, for the owners may be unable to renew them too. But others keep
writing (their heartbeats stamp the registry's ``last_write``): once they have for
``fault_grace_s``, the registry's view applies, so an instance whose process died leaves
that reader's watches as it leaves everyone else's. It used to stay there for good (the
probe never succeeds), calls going to a dead address and ``kept_endpoints`` never 0.

The reader's connection is opened ``mode=ro`` (SQLite refuses its writes with
SQLITE_READONLY, as for a user without write access: the real error path, without
dropping a root process's capabilities). Real SQLite files; ``LocalRegistry`` objects
on one directory stand for processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


def inst(i: str) -> Instance:
    return Instance(service="svc", instance_id=i, host="127.0.0.1",
                    port=20000 + sum(map(ord, i)))


class ReadOnly(LocalRegistry):
    """A registry whose connection is read-only from :attr:`read_only` on (set it before
    the first operation, or see :func:`make_read_only`)."""

    read_only = True

    def _connect(self, database: str, uri: bool = False) -> sqlite3.Connection:
        if self.read_only and not uri:
            database, uri = f"file:{urllib.parse.quote(database)}?mode=ro", True
        return super()._connect(database, uri)


async def make_read_only(reg: ReadOnly) -> None:
    """From now on ``reg`` opens the file read-only (its open connection is dropped)."""
    reg.read_only = True
    await reg._run(lambda conn: reg._drop(), write=False)


def ids(instances: frozenset[Instance]) -> list[str]:
    return sorted(i.instance_id for i in instances)


async def test_a_reader_that_cannot_write_drops_a_dead_instance_while_others_write(
        tmp_path: Path) -> None:
    opts = LocalOptions(path=tmp_path, ttl_s=0.3, poll_interval_s=0.02)
    writer, owner, reader = LocalRegistry(opts), LocalRegistry(opts), ReadOnly(opts)
    watch = reader.watch("svc")
    try:
        await writer.register(inst("w"))  # heartbeats on throughout: others write
        await owner.register(inst("c"))
        assert ids(await anext(watch)) == ["c", "w"]
        await owner.close()  # c's process dies: its heartbeats stop, its row stays
        async with asyncio.timeout(8):
            while ids(await anext(watch)) != ["w"]:
                pass
        status = reader.status()
        assert status.writable is False, status  # its probe failed: the fault path
        assert status.kept_endpoints == 0, status
    finally:
        await watch.aclose()
        await writer.close()
        await reader.close()


async def test_a_process_that_cannot_write_keeps_its_own_instances(tmp_path: Path) -> None:
    """The same, for a process that registered before its writes began to fail: its own
    instance (alive: it is this process) stays in its watch while the dead one leaves."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.3, poll_interval_s=0.02)
    writer, owner = LocalRegistry(opts), LocalRegistry(opts)
    me = ReadOnly(opts)
    me.read_only = False
    watch = me.watch("svc")
    try:
        await writer.register(inst("w"))
        await owner.register(inst("c"))
        await me.register(inst("m"))
        while ids(await anext(watch)) != ["c", "m", "w"]:
            pass
        await make_read_only(me)  # its heartbeats fail from now on: m expires in the file
        await owner.close()
        async with asyncio.timeout(8):
            while ids(await anext(watch)) != ["m", "w"]:
                pass
        assert me.status().writable is False

        async def m_expired() -> bool:
            return ids(await writer.instances("svc")) == ["w"]

        await until(m_expired, timeout_s=8, what="m to expire in the file")
        await until(lambda: me.status().kept_endpoints == 1, timeout_s=8,
                    what="m kept by its own process's watch")
    finally:
        await watch.aclose()
        await writer.close()
        await me.close()
