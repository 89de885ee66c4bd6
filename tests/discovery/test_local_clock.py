"""LocalRegistry and steps of the machine's wall clock (NTP, a resumed VM, ``date -s``).

Every process sharing the registry file is on one host, so liveness is judged on the boot
clock (``CLOCK_BOOTTIME``) of the writer's boot, not on the wall clock: a step forward must
not hide live instances, a step back must not bring back dead ones, and the sweep must never
delete a live row. Rows of another boot id are judged on the wall clock: they may be a
container's with a boot id of its own on this kernel (live), or left from before a reboot.
During a rolling upgrade older meshkit versions read and write the same file: their rows (no boot
stamp) are judged on the wall clock as before, and they go on reading the new rows.

The wall clock is stepped by injecting ``LocalOptions.clock`` (the real time plus an offset
the test moves, shared by the processes of the test as the machine's clock is); the boot
clock is the real one unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import Instance, LocalOptions, LocalRegistry, _local
from tests.support.echo import mesh_echo, method
from tests.support.procs import children
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ROOT = Path(__file__).resolve().parents[2]

linux_only = pytest.mark.skipif(
    getattr(time, "CLOCK_BOOTTIME", None) is None
    or not Path("/proc/sys/kernel/random/boot_id").exists(),
    reason="needs CLOCK_BOOTTIME and /proc/sys/kernel/random/boot_id (Linux)")


def inst(i: str, service: str = "svc") -> Instance:
    """Instance ``i`` of ``service`` on a distinct port."""
    return Instance(service=service, instance_id=i, host="127.0.0.1",
                    port=20000 + sum(map(ord, i)))


class SteppedWall:
    """The machine's wall clock: the real time plus ``offset``, which the test steps."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class HandClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(path: Path) -> dict[str, dict[str, Any]]:
    """The ``instances`` table of the registry in directory ``path``, by instance id."""
    conn = sqlite3.connect(path / "registry.db", timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return {r["instance_id"]: dict(r) for r in conn.execute("SELECT * FROM instances")}
    finally:
        conn.close()


# -- the wall clock steps on a running host -------------------------------------------------
@linux_only
async def test_a_forward_wall_clock_step_fails_no_call(tmp_path: Path) -> None:
    """Two servers and a client share the registry; the machine's wall clock steps 300 s
    forward (more than ttl_s and than the sweep's 10 TTLs). Until the servers' next
    heartbeat every entry's wall-clock expiry is in the past: the client's watch used to
    drop both servers (and its write probe's sweep deleted their rows), so calls failed
    UNAVAILABLE until the heartbeats came. Liveness on the boot clock keeps them: no call
    fails and the channel keeps both endpoints."""
    wall = SteppedWall()

    def registry() -> LocalRegistry:
        # ttl 6 s: the servers' next heartbeat is up to 2 s after the step
        return LocalRegistry(LocalOptions(path=tmp_path, ttl_s=6, poll_interval_s=0.05,
                                          clock=wall))

    client_reg = registry()
    opts = meshkit.DialOptions(insecure=True, balancer=RoundRobin)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(mesh_echo("echo", "s1", registry()))
        await stack.enter_async_context(mesh_echo("echo", "s2", registry()))
        ch = await stack.enter_async_context(
            meshkit.dial("echo", registry=client_reg, options=opts))
        stack.push_async_callback(client_reg.close)
        await ch.wait_for_endpoints(2, timeout_s=10)
        unary = ch.unary_unary(method("Unary"))
        assert (await unary(b"", timeout=2)).split(b"|")[0] in (b"s1", b"s2")
        wall.offset += 300.0
        failures: list[str] = []
        keys: list[list[str]] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5  # well within the servers' next heartbeat
        while loop.time() < end:
            try:
                await unary(b"", timeout=2)
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
            keys.append([e.key for e in ch.endpoints()])
            await asyncio.sleep(0.01)
        assert not failures, f"{len(failures)} calls failed after the step: {failures[:3]}"
        assert all(k == ["s1", "s2"] for k in keys), \
            f"the channel lost endpoints: {[k for k in keys if k != ['s1', 's2']][:3]}"


@linux_only
async def test_a_forward_wall_clock_step_neither_hides_nor_sweeps_live_rows(
        tmp_path: Path) -> None:
    """Right after a 300 s forward step, before its owner's next heartbeat, a live entry
    is still listed (not ``failing``), and a write by another process (which runs the
    sweep of rows dead for 10 TTLs) leaves its row in the file."""
    wall = SteppedWall()
    opts = LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=2.9,
                        poll_interval_s=0.05, clock=wall)
    owner, other = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await owner.register(inst("a"))
        assert await other.instances("svc") == {inst("a")}
        wall.offset += 300.0
        assert await other.instances("svc") == {inst("a")}, "a live entry was hidden"
        assert await other.failing("svc") == frozenset()
        await other.register(inst("r"))  # its first write: the sweep is due
        assert "a" in rows(tmp_path), "the sweep deleted a live entry"
        assert await other.instances("svc") == {inst("a"), inst("r")}
    finally:
        await owner.close()
        await other.close()


@linux_only
@pytest.mark.timeout(90)
async def test_a_backward_wall_clock_step_does_not_bring_back_a_killed_instance(
        tmp_path: Path) -> None:
    """Two server processes; one is SIGKILLed and drops out of the client's channel after
    its TTL. Then the machine's wall clock steps back an hour: the dead instance's entry
    (not yet collected) had an expiry an hour "in the future" again and came back into the
    channel for the hour: calls were sent to a dead endpoint. On the boot clock it stays
    dead."""
    uri = f"local://{tmp_path}?ttl_s=1&poll_interval_s=0.05"
    wall = SteppedWall()
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=1, poll_interval_s=0.05,
                                     clock=wall))
    opts = meshkit.DialOptions(insecure=True, balancer=RoundRobin)
    async with children(tmp_path / "logs") as kids:
        servers = [await kids.start("tests.support.echo", "--registry", uri,
                                    "--instance-id", i) for i in ("p1", "p2")]
        for s in servers:
            await s.wait_line("READY", timeout_s=20)
        try:
            async with meshkit.dial("echo", registry=reg, options=opts) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                await servers[0].kill()
                await until(lambda: [e.key for e in ch.endpoints()] == ["p2"], timeout_s=5,
                            what="p1 (killed) to leave the channel")
                assert [i.instance_id for i in await reg.failing("echo")] == ["p1"]
                wall.offset -= 3600.0
                unary = ch.unary_unary(method("Unary"))
                keys: list[list[str]] = []
                served: set[bytes] = set()
                loop = asyncio.get_running_loop()
                end = loop.time() + 1.0  # 20 polls of the registry
                while loop.time() < end:
                    served.add((await unary(b"", timeout=2)).split(b"|")[0])
                    keys.append([e.key for e in ch.endpoints()])
                    await asyncio.sleep(0.01)
                assert all(k == ["p2"] for k in keys), \
                    f"the killed instance came back: {[k for k in keys if k != ['p2']][:3]}"
                assert served == {b"p2"}
                assert [i.instance_id for i in await reg.instances("echo")] == ["p2"]
        finally:
            await reg.close()


# -- another boot, another time namespace -----------------------------------------------------
async def test_entries_of_another_boot_are_judged_by_the_wall_clock(tmp_path: Path) -> None:
    """A stamp of another boot id cannot be told apart: the writer may be in a container
    with a boot id of its own on this kernel (LXC/LXD/Incus, systemd-nspawn: same boot
    clock, live), or the file outlived a reboot (the owner is gone). Such an entry is
    judged on the wall clock, as an unstamped one: listed while its wall-clock expiry is
    ahead (whatever the boot clocks say), ``failing`` after it, and deleted by the sweep
    only once dead for 10 TTLs on the wall clock, never for its boot id alone."""
    wall = HandClock(1_000_000.0)
    other = LocalRegistry(LocalOptions(
        path=tmp_path, ttl_s=3, clock=wall, boot_clock=HandClock(9_000_000.0),
        boot_id="00000000-0000-4000-8000-000000000000"))
    await other.register(inst("other"))
    await other.close()  # its heartbeats stop
    boot = HandClock(5_000.0)  # far behind the writer's: no boot-clock judgement applies
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3, clock=wall, boot_clock=boot,
                                        boot_id="11111111-1111-4111-8111-111111111111"))
    try:
        assert await reader.instances("svc") == {inst("other")}
        await reader.register(inst("r"))  # its first write sweeps
        assert set(rows(tmp_path)) == {"other", "r"}, "the sweep deleted a live entry"
        wall.now += 3.1
        assert await reader.instances("svc") == {inst("r")}
        assert await reader.failing("svc") == {inst("other")}
        boot.now += 100.0  # dead for 10 TTLs on the boot clock, not on the wall clock
        await reader._run(reader._probe, write=True)  # a sweep
        assert "other" in rows(tmp_path)
        wall.now += 30.0  # dead for 10 TTLs on the wall clock: swept at the next write
        await reader._run(reader._probe, write=True)
        assert "other" not in rows(tmp_path)
    finally:
        await reader.close()


_CONTAINER_CHILD = r'''
import asyncio, sys
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

async def main():
    reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=3))
    await reg.register(Instance(service="svc", instance_id="in-container",
                                host="127.0.0.1", port=20001))
    print("boot", reg.options.boot_id, flush=True)
    print("registered", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "list":
        live = sorted(i.instance_id for i in await reg.instances("svc"))
        failing = sorted(i.instance_id for i in await reg.failing("svc"))
        print("live", ",".join(live), "failing", ",".join(failing), flush=True)
    await reg.close()

asyncio.run(main())
'''
_CONTAINER_BOOT_ID = "0c0ffee0-0000-4000-8000-000000000001"


def _container_child(tmp_path: Path, reg_dir: Path) -> subprocess.Popen[str]:
    """A process that sees a boot id of its own at ``/proc/sys/kernel/random/boot_id``, as
    every process of an LXC/LXD/Incus container does (liblxc bind-mounts a fresh boot id
    over it at container start, lxc/lxc#3034) and of a systemd-nspawn container (nspawn's
    setup_boot_id): same kernel, same ``CLOCK_BOOTTIME``, same time namespace, so a
    registry directory bind-mounted into it is shared with the host through SQLite's WAL.
    Done as those runtimes do it: a mount namespace (``unshare -m``) and a bind mount over
    the file. Skipped where this process may not do that (no unshare(1), not root)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    fake = tmp_path / "container-boot-id"
    fake.write_text(_CONTAINER_BOOT_ID + "\n")
    mount = f"mount --bind {fake} /proc/sys/kernel/random/boot_id"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && cat "
                            "/proc/sys/kernel/random/boot_id"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0 or _CONTAINER_BOOT_ID not in probe.stdout:
        pytest.skip(f"cannot bind-mount a boot id in a mount namespace: {probe.stderr}")
    env = {**os.environ, "PYTHONPATH": str(_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        ["unshare", "-m", "sh", "-c",
         f"{mount} && exec {sys.executable} -c '{_CONTAINER_CHILD}' {reg_dir}"],
        cwd=str(_ROOT), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _line(child: subprocess.Popen[str], prefix: str, timeout_s: float = 15.0) -> str:
    """The child's next stdout line starting with ``prefix`` (lines before it skipped)."""
    assert child.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
        if line.startswith(prefix):
            return line.strip()
    stderr = child.stderr.read() if child.stderr is not None and child.poll() is not None \
        else ""
    raise AssertionError(f"no {prefix!r} line from the child: {seen} {stderr}")


@linux_only
async def test_an_instance_in_a_container_with_its_own_boot_id_is_listed_on_the_host(
        tmp_path: Path) -> None:
    """A live instance registered from a container with a boot id of its own on this
    kernel (LXC/LXD/Incus, systemd-nspawn), the registry directory shared with the host,
    and one registered on the host: each side lists the other's as live, none as failing,
    and neither side's sweep deletes the other's row. Its stamp used to be taken for one
    written before a reboot: dead on the other side (never listed, its clients failing
    UNAVAILABLE, ``failing()`` reporting it) and deleted by the other side's sweep at each
    garbage collection, where the wall clock had listed it."""
    reg_dir = tmp_path / "registry"
    host = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=3))
    child: subprocess.Popen[str] | None = None
    try:
        await host.register(inst("on-host"))
        child = _container_child(tmp_path, reg_dir)
        assert _line(child, "boot") == f"boot {_CONTAINER_BOOT_ID}"
        assert host.options.boot_id != _CONTAINER_BOOT_ID
        _line(child, "registered")  # its first write swept the file
        await host._run(host._probe, write=True)  # the host's sweep
        assert set(rows(reg_dir)) == {"on-host", "in-container"}, \
            "a sweep deleted the other side's live entry"
        live = {i.instance_id for i in await host.instances("svc")}
        failing = {i.instance_id for i in await host.failing("svc")}
        assert (live, failing) == ({"on-host", "in-container"}, set()), (
            f"a live instance in a container with its own boot id (same kernel, "
            f"heartbeating) is not listed on the host: live={sorted(live)}, "
            f"failing={sorted(failing)}")
        assert child.stdin is not None
        child.stdin.write("list\n")
        child.stdin.flush()
        assert _line(child, "live") == "live in-container,on-host failing", \
            "the host's live instance is not listed in the container"
    finally:
        await host.close()
        if child is not None:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@linux_only
async def test_a_process_in_another_time_namespace_is_judged_by_the_wall_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process in another time namespace (a container started with boot-time offsets,
    or restored by CRIU) shares the boot id but not the boot clock: its entries are
    judged on the wall clock, not on a boot clock offset from the reader's (here by a
    million seconds: they would have stayed live for eleven days)."""
    wall = HandClock(1_000_000.0)
    boottime = time.CLOCK_BOOTTIME
    monkeypatch.setattr(_local, "_time_namespace", lambda: "4026532001")
    inside = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3, clock=wall,
                                        boot_clock=lambda: time.clock_gettime(boottime) + 1e6))
    monkeypatch.setattr(_local, "_time_namespace", lambda: "4026531834")
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3, clock=wall))
    try:
        await inside.register(inst("c"))
        await inside.close()  # its heartbeats stop
        assert await reader.instances("svc") == {inst("c")}
        wall.now += 3.1
        assert await reader.instances("svc") == frozenset()
        assert await reader.failing("svc") == {inst("c")}
        wall.now += 30.0  # dead for 10 TTLs on the wall clock: swept at the next write
        await reader.register(inst("r"))
        assert set(rows(tmp_path)) == {"r"}
    finally:
        await reader.close()


async def test_the_sweep_deletes_entries_dead_for_ten_ttls_on_the_boot_clock(
        tmp_path: Path) -> None:
    """The sweep goes by the boot clock for entries of this boot: one dead for 10 TTLs on
    it is deleted although the wall clock, stepped back, says it has not even expired;
    one dead for less is kept (``failing``)."""
    wall, boot = HandClock(1_000_000.0), HandClock(5_000.0)
    opts = LocalOptions(path=tmp_path, ttl_s=3, clock=wall, boot_clock=boot,
                        boot_id="22222222-2222-4222-8222-222222222222")
    owner, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await owner.register(inst("gone"))
        boot.now += 25.0
        await owner.register(inst("late"))
        await owner.close()
        wall.now -= 3600.0
        boot.now += 10.0  # gone: dead for 32 s (over 10 TTLs); late: for 7 s
        await reader.register(inst("r"))  # its first write: the sweep is due
        assert set(rows(tmp_path)) == {"late", "r"}
        assert await reader.failing("svc") == {inst("late")}
    finally:
        await reader.close()


async def test_without_a_boot_clock_expiry_follows_the_wall_clock(tmp_path: Path) -> None:
    """Where there is no boot clock (macOS; ``boot_clock=None``) expiry is judged on the
    wall clock, as before, for this process's reads and sweeps."""
    wall = HandClock(1_000_000.0)
    opts = LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=2.9, clock=wall,
                        boot_clock=None)
    owner, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await owner.register(inst("a"))
        await owner.close()
        wall.now += 2.9
        assert await reader.instances("svc") == {inst("a")}
        wall.now += 0.2
        assert await reader.instances("svc") == frozenset()
        wall.now += 30.0  # dead for 10 TTLs: swept at the next write
        await reader.register(inst("r"))
        assert set(rows(tmp_path)) == {"r"}
    finally:
        await reader.close()


# -- a rolling upgrade: older meshkit versions on the same file -------------------------------
# The SQL of meshkit before boot stamps, verbatim: its schema, its heartbeat upsert, its
# read and its sweep.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    tags        TEXT NOT NULL,
    meta        TEXT NOT NULL,
    weight      INTEGER NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_service ON instances (service, expires_at);
CREATE TABLE IF NOT EXISTS last_write (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    seq         INTEGER NOT NULL,
    written_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deregistered (
    instance_id TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    at          REAL NOT NULL
);
"""
OLD_UPSERT = (
    "INSERT INTO instances (instance_id, service, host, port, tags, meta, weight,"
    " expires_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(instance_id) DO UPDATE SET"
    " service=excluded.service, host=excluded.host, port=excluded.port,"
    " tags=excluded.tags, meta=excluded.meta, weight=excluded.weight,"
    " expires_at=excluded.expires_at")
OLD_READ = ("SELECT instance_id, host, port, tags, meta, weight, expires_at FROM instances"
            " WHERE service = ?")
OLD_SWEEP = "DELETE FROM instances WHERE expires_at < ?"


class OldMeshkit:
    """An older meshkit process on the registry in directory ``path``, by its own SQL."""

    def __init__(self, path: Path, ttl_s: float = 3.0) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path / "registry.db", timeout=5, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        tables = {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables >= {"instances", "last_write", "deregistered"}:
            self.conn.executescript(OLD_SCHEMA)
        self.ttl_s = ttl_s

    def heartbeat(self, i: Instance, now: float) -> None:
        """Its upsert of ``i`` at wall-clock time ``now``."""
        self.conn.execute(OLD_UPSERT, (i.instance_id, i.service, i.host, i.port, "[]", "{}",
                                       i.weight, now + self.ttl_s))

    def live(self, service: str, now: float) -> set[str]:
        """The ids its read lists as live at wall-clock time ``now``."""
        return {r[0] for r in self.conn.execute(OLD_READ, (service,)) if r[6] > now}

    def sweep(self, now: float) -> None:
        """Its sweep at wall-clock time ``now``."""
        self.conn.execute(OLD_SWEEP, (now - 10 * self.ttl_s,))

    def close(self) -> None:
        """Close its connection."""
        self.conn.close()


async def test_an_older_file_is_upgraded_in_place_and_older_versions_go_on(
        tmp_path: Path) -> None:
    """A file an older meshkit made, with an older process's live entry, is upgraded in
    place when a new process opens it (columns added: nothing dropped, nothing copied).
    The older process's entry is judged on the wall clock, as that process judges it;
    the older process keeps renewing it, reads the new process's entry as live on the
    wall clock, and its sweep leaves it."""
    wall, boot = HandClock(time.time()), HandClock(5_000.0)  # moved together: no step
    old = OldMeshkit(tmp_path, ttl_s=30)
    new = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=30, clock=wall, boot_clock=boot))
    try:
        old.heartbeat(inst("o"), wall.now)
        await new.register(inst("n"))
        columns = {r[1] for r in old.conn.execute("PRAGMA table_info(instances)")}
        assert {"boot_id", "boot_expires_at", "boot_wall_expires_at"} <= columns
        assert await new.instances("svc") == {inst("o"), inst("n")}
        assert old.live("svc", wall.now) == {"o", "n"}
        old.sweep(wall.now)
        assert set(rows(tmp_path)) == {"o", "n"}
        for c in (wall, boot):
            c.now += 20.0
        old.heartbeat(inst("o"), wall.now)  # the older process renews its entry
        for c in (wall, boot):
            c.now += 20.0  # o renewed 20 s ago; n (no heartbeat here) 40 s ago
        assert await new.instances("svc") == {inst("o")}
        assert await new.failing("svc") == {inst("n")}
        assert old.live("svc", wall.now) == {"o"}
        for c in (wall, boot):
            c.now += 20.0  # o too is older than its TTL now
        assert await new.instances("svc") == frozenset()
        assert old.live("svc", wall.now) == set()
    finally:
        old.close()
        await new.close()


async def test_an_older_writer_renewing_a_newer_ones_entry_is_judged_by_the_wall_clock(
        tmp_path: Path) -> None:
    """An instance id registered by a new process, then (the service rolled back to an
    older version, same deterministic id) renewed by an older one: the older writer
    leaves the boot stamp as it was, so the stamp no longer matches the entry and the wall
    clock decides, as the older writer means: live while it renews, not dead by the stale
    boot-clock expiry."""
    wall, boot = HandClock(time.time()), HandClock(5_000.0)
    opts = LocalOptions(path=tmp_path, ttl_s=3, clock=wall, boot_clock=boot,
                        boot_id="11111111-1111-4111-8111-111111111111")
    new, reader = LocalRegistry(opts), LocalRegistry(opts)
    old = OldMeshkit(tmp_path)
    try:
        await new.register(inst("a"))
        await new.close()
        assert await reader.instances("svc") == {inst("a")}
        old.heartbeat(inst("a"), wall.now + 10.0)  # an older writer renews it
        for c in (wall, boot):
            c.now += 5.0  # past the boot-clock expiry the new writer stamped
        assert await reader.instances("svc") == {inst("a")}, "renewed, yet dropped"
        await reader.register(inst("r"))  # a sweep
        assert "a" in rows(tmp_path)
        wall.now += 9.0  # the older writer stopped: dead on the wall clock
        assert inst("a") not in await reader.instances("svc")
    finally:
        old.close()
        await reader.close()


@linux_only
async def test_a_process_that_could_not_upgrade_the_file_judges_by_boot_once_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that opened an older file it could not upgrade (read-only to it) reads
    on the wall clock, and on the boot clock as soon as another process upgraded the
    file: a forward step then hides nothing from it either."""
    old = OldMeshkit(tmp_path)
    old.close()
    wall = SteppedWall()
    opts = LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=2.9, clock=wall)
    reader = LocalRegistry(opts)
    real_add = _local._add_boot_columns

    def add(conn: sqlite3.Connection, *, write: bool) -> bool:
        return real_add(conn, write=False)  # as if the file were read-only to it

    monkeypatch.setattr(_local, "_add_boot_columns", add)
    try:
        assert await reader.instances("svc") == frozenset()
        monkeypatch.setattr(_local, "_add_boot_columns", real_add)
        owner = LocalRegistry(opts)
        try:
            await owner.register(inst("a"))
            assert await reader.instances("svc") == {inst("a")}
            wall.offset += 300.0
            assert await reader.instances("svc") == {inst("a")}
        finally:
            await owner.close()
    finally:
        await reader.close()


def test_an_older_file_that_cannot_be_written_is_left_as_it_is(tmp_path: Path) -> None:
    """Upgrading an older file adds the boot columns once (and not again); a file that
    cannot be written is left as it is, without an error: it is read on the wall clock."""
    OldMeshkit(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = ON")  # writes fail: SQLITE_READONLY
        assert _local._add_boot_columns(conn, write=True) is False
        assert _local._add_boot_columns(conn, write=False) is False
        conn.execute("PRAGMA query_only = OFF")
        assert _local._add_boot_columns(conn, write=False) is False
        assert _local._add_boot_columns(conn, write=True) is True
        assert _local._add_boot_columns(conn, write=True) is True
        names = [r[1] for r in conn.execute("PRAGMA table_info(instances)")]
        assert names[-3:] == ["boot_id", "boot_expires_at", "boot_wall_expires_at"]
        assert len(names) == 11
    finally:
        conn.close()


def test_boot_options_are_checked(tmp_path: Path) -> None:
    """``boot_clock`` must be callable or None, ``boot_id`` a non-empty string without
    ``/`` or None: the message names the field and quotes the value."""
    from meshkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"boot_clock.*12"):
        LocalOptions(path=tmp_path, boot_clock=12)  # type: ignore[arg-type]
    for bad in ("", "a/b", 5):
        with pytest.raises(ConfigError, match="boot_id"):
            LocalOptions(path=tmp_path, boot_id=bad)  # type: ignore[arg-type]
    assert LocalOptions(path=tmp_path, boot_id=None, boot_clock=None).boot_id is None

