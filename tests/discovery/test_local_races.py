"""LocalRegistry: register() racing close() or deregister(), and a close() cancelled.

Each race is made deterministic by the registry's single worker thread: a register()
submits its write before the task awaiting it yields, so a close() or deregister() started
in the next turn runs while that write is in flight. Real SQLite files; ``LocalRegistry``
objects on one directory stand for processes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.errors import RegistryError

pytestmark = pytest.mark.timeout(30)


def inst(i: str = "a") -> Instance:
    return Instance(service="svc", instance_id=i, host="127.0.0.1", port=20001)


def _heartbeat_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks()
            if t.get_name().startswith("meshkit-heartbeat-") and not t.done()]


async def test_a_register_whose_write_lands_while_close_runs_starts_no_heartbeat(
        tmp_path: Path) -> None:
    """close() while register()'s write is in flight: the register raises RegistryError
    and no heartbeat is left running after close() (it used to renew nothing and spin
    every heartbeat interval for good: the registry is closed)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.6))
    registering = asyncio.create_task(reg.register(inst()))
    await asyncio.sleep(0)  # its write is submitted
    await reg.close()
    with pytest.raises(RegistryError, match="closed"):
        await registering
    assert _heartbeat_tasks() == []


async def test_a_deregister_during_register_leaves_the_instance_deregistered(
        tmp_path: Path) -> None:
    """deregister() while register() of the same instance is in flight: once both have
    returned (register raising RegistryError) the instance is not listed, and stays so
    past its heartbeat interval (it used to come back with the register's heartbeat, and
    be renewed for good, calls going to a server that had left)."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.6)
    reg, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        registering = asyncio.create_task(reg.register(inst()))
        await asyncio.sleep(0)
        await reg.deregister(inst())
        with pytest.raises(RegistryError, match="deregistered"):
            await registering
        assert _heartbeat_tasks() == []
        await asyncio.sleep(0.5)  # past two heartbeat intervals (0.2 s)
        assert await reader.instances("svc") == frozenset()
    finally:
        await reg.close()
        await reader.close()


async def test_a_deregister_while_register_waits_for_the_old_heartbeat(
        tmp_path: Path) -> None:
    """The same race one step earlier: register() of an id registered already waits for
    its old heartbeat before writing, and the deregister() comes meanwhile (its delete
    is then done before the register's write): the instance is not listed afterwards."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.6)
    reg, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await reg.register(inst())
        registering = asyncio.create_task(reg.register(inst()))
        await asyncio.sleep(0)  # it has cancelled the old heartbeat and waits for it
        await reg.deregister(inst())
        with pytest.raises(RegistryError, match="deregistered"):
            await registering
        assert await reader.instances("svc") == frozenset()
        assert _heartbeat_tasks() == []
    finally:
        await reg.close()
        await reader.close()


def _open_files(tmp_path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp_path)):
            found.append(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_a_cancelled_close_still_closes_the_file(tmp_path: Path) -> None:
    """close() cancelled while it stops the heartbeats (a shutdown timeout, asyncio.run's
    sweep): the registry file is closed all the same (it stayed open for good, and a
    second close() returned at once, close() being idempotent)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3))
    await reg.register(inst())
    assert _open_files(tmp_path)
    closing = asyncio.create_task(reg.close())
    await asyncio.sleep(0)  # it is waiting for the heartbeat to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await reg.close()
    for _ in range(100):  # the worker thread closes it: at most a few ms
        if not _open_files(tmp_path):
            break
        await asyncio.sleep(0.02)
    assert _open_files(tmp_path) == []


async def test_a_cancelled_register_leaves_no_entry(tmp_path: Path) -> None:
    """register() cancelled once its write is under way (asyncio.wait_for's timeout on a
    busy file, a start cancelled): its caller takes the instance for not registered, so
    no entry is left (it used to be listed for ttl_s without heartbeat or owner, calls
    going to a server that never started)."""
    opts = LocalOptions(path=tmp_path, ttl_s=30)
    reg, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        registering = asyncio.create_task(reg.register(inst()))
        await asyncio.sleep(0)  # its write is submitted
        registering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await registering
        await reg.instances("svc")  # the worker thread has done what was queued before
        assert await reader.instances("svc") == frozenset()
        assert _heartbeat_tasks() == []
        await reg.register(inst())  # and it may register again
        assert await reader.instances("svc") == {inst()}
    finally:
        await reg.close()
        await reader.close()


async def test_a_cancelled_register_again_keeps_the_previous_registration(
        tmp_path: Path) -> None:
    """The same for a register() of an id registered already (a changed address),
    cancelled while it waits for the old heartbeat to end: the previous registration is
    kept alive (its heartbeat restarted; it was left without one, and expired)."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.3)
    reg, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await reg.register(inst())
        moved = Instance(service="svc", instance_id="a", host="127.0.0.1", port=20002)
        registering = asyncio.create_task(reg.register(moved))
        await asyncio.sleep(0)
        registering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await registering
        await asyncio.sleep(0.5)  # past its TTL (0.3 s): renewed meanwhile
        assert await reader.instances("svc") == {inst()}
        assert len(_heartbeat_tasks()) == 1
    finally:
        await reg.close()
        await reader.close()


async def test_deregistered_ids_leave_no_bookkeeping_behind(tmp_path: Path) -> None:
    """What lets a register() in flight see a deregister() is kept only while a register
    is in flight: a process that registers and deregisters many ids over its life (a
    worker per job, ids from uuid4) does not grow a table of every id it ever
    deregistered (b1dfbc4 kept one count per id for good)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=30))
    try:
        for n in range(20):
            await reg.register(inst(f"job-{n}"))
            await reg.deregister(inst(f"job-{n}"))
        await reg.deregister(inst("never-registered"))
        left = {name: value for name, value in vars(reg).items()
                if isinstance(value, dict)
                and any("job-" in str(k) or "never-registered" in str(k) for k in value)}
        assert left == {}
    finally:
        await reg.close()


async def test_a_heartbeat_left_running_past_close_ends_by_itself(tmp_path: Path) -> None:
    """A heartbeat close() did not stop (none should be left, but one that escaped, say a
    register() racing close() in another thread's loop) ends at its next renewal, which
    finds the registry closed, rather than waking every heartbeat interval for good."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.15))
    await reg.close()
    beating = asyncio.create_task(reg._heartbeat(inst()))
    await asyncio.wait([beating], timeout=5)
    assert beating.done(), "the heartbeat runs on after close()"
    beating.cancel()
