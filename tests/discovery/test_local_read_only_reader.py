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
import contextlib
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
        assert status.write_errors >= 1, status  # its probe failed: the fault path
        assert status.kept_endpoints == 0, status
        # ... but a process with nothing to write whose writes fail while others' go on
        # is no registry fault: it used to report writable False for good (so
        # meshkit_registry_healthy 0, and a call finding no endpoint was told "the
        # service registry cannot be written" while the service was merely down)
        assert status.writable is None and status.ok, status
        assert status.summary is None and status.failing_since_s is None, status
    finally:
        await watch.aclose()
        await writer.close()
        await reader.close()


async def test_a_process_that_cannot_write_keeps_its_own_instances(tmp_path: Path) -> None:
    """The same, for a process that registered before its writes began to fail: its own
    instance (alive: it is this process) stays in its watch while the dead one leaves.

    The watch is read throughout by a task of its own: it polls only while iterated, and
    ``kept_endpoints`` is what its latest poll found. Under load c could expire (its
    owner's last heartbeat late) while m was still live in the file and this process's
    latest write had not failed yet: the watch then listed m and w keeping nothing, and a
    watch no one read any more never saw m expire (``kept_endpoints`` stayed 0: "m kept
    by its own process's watch not reached within 8s", a clean-clone CI run)."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.3, poll_interval_s=0.02)
    writer, owner = LocalRegistry(opts), LocalRegistry(opts)
    me = ReadOnly(opts)
    me.read_only = False
    watch = me.watch("svc")
    seen: list[list[str]] = []

    async def follow() -> None:
        async for instances in watch:
            seen.append(ids(instances))

    following = asyncio.create_task(follow())
    try:
        await writer.register(inst("w"))
        await owner.register(inst("c"))
        await me.register(inst("m"))
        await until(lambda: bool(seen) and seen[-1] == ["c", "m", "w"], timeout_s=8,
                    what="c, m and w listed")
        await make_read_only(me)  # its heartbeats fail from now on: m expires in the file
        await owner.close()
        await until(lambda: seen[-1] == ["m", "w"], timeout_s=8, what=f"c dropped ({seen})")
        await until(lambda: me.status().writable is False, timeout_s=8,
                    what="its writes seen failing")

        async def m_expired() -> bool:
            return ids(await writer.instances("svc")) == ["w"]

        await until(m_expired, timeout_s=8, what="m to expire in the file")
        await until(lambda: me.status().kept_endpoints == 1, timeout_s=8,
                    what="m kept by its own process's watch")
        assert seen[-1] == ["m", "w"], seen  # m never left it
        after = seen[seen.index(["c", "m", "w"]):]
        assert all("m" in s for s in after), seen
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await watch.aclose()
        await writer.close()
        await me.close()


async def test_an_outage_of_the_writers_while_a_reader_keeps_a_dead_instance_drops_nothing(
        tmp_path: Path) -> None:
    """A shared outage (nobody can write: the disk filled up) that begins while the
    read-only reader keeps a dead instance and counts the others' writes: every live
    entry then expires for want of renewals, which is the registry's fault, not their
    owners' deaths. The reader used to take the writes it had counted before the outage
    for writes going on, apply the registry's view once ``fault_grace_s`` had passed
    and drop every endpoint (w too: its calls had nowhere to go) until the count was
    older than the grace. Only an instance that expired before the last write anyone
    made leaves: c, whose owner died while w's renewals went on."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.15, poll_interval_s=0.02, fault_grace_s=0.6)
    writer, owner, reader = ReadOnly(opts), LocalRegistry(opts), ReadOnly(opts)
    writer.read_only = False
    watch = reader.watch("svc")
    seen: list[list[str]] = []

    async def follow() -> None:
        async for instances in watch:
            seen.append(ids(instances))

    following = asyncio.create_task(follow())
    try:
        await writer.register(inst("w"))
        await owner.register(inst("c"))
        await until(lambda: bool(seen) and seen[-1] == ["c", "w"], timeout_s=8,
                    what="c and w listed")
        await owner.close()  # c's process dies
        await until(lambda: reader.status().kept_endpoints == 1, timeout_s=8,
                    what="c kept by the reader")
        await asyncio.sleep(0.1)  # w's renewals counted meanwhile
        await make_read_only(writer)  # now nobody can write: w expires in the file
        await until(lambda: seen[-1] == ["w"], timeout_s=3, what=f"c dropped ({seen})")
        await asyncio.sleep(0.2)
        # from the first listing of both on (the watch may answer an empty service
        # before the registrations land): never an empty set, nor w dropped
        after = seen[seen.index(["c", "w"]):]
        assert all("w" in s for s in after), seen
        assert reader.status().kept_endpoints == 1  # w, kept through the outage
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await watch.aclose()
        await writer.close()
        await reader.close()
