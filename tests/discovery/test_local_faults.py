"""LocalRegistry failure modes (issue 12): a registry that cannot be written, one that cannot
be read, and a registry file deleted under running processes.

Process-level faults run in real processes (``registry_child.py``): a process that cannot
write files (``RLIMIT_FSIZE``), a process whose user may not write (or read) the registry,
processes that keep an unlinked file open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.discovery._types import RegistryStatus, StatusTracker
from meshkit.errors import RegistryError
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

CHILD = Path(__file__).with_name("registry_child.py")
REPO = Path(__file__).resolve().parents[2]


def inst(i: str, service: str = "svc") -> Instance:
    """Instance ``i`` of ``service`` (the same shape as the child's instances)."""
    return Instance(service=service, instance_id=i, host="127.0.0.1",
                    port=20000 + sum(map(ord, i)))


class Child:
    """A ``registry_child.py`` process: its protocol events and its structlog lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.stderr_raw: list[str] = []
        self._readers = [asyncio.create_task(self._read_stdout()),
                         asyncio.create_task(self._read_stderr())]

    @classmethod
    async def start(cls, path: Path, *args: str) -> Child:
        """Start a child on registry ``path`` with ``args`` (see registry_child.py)."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), str(path), *args, cwd=str(REPO), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        child = cls(proc)
        await child.wait_for(lambda e: e["event"] == "ready", "ready", timeout_s=15)
        return child

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            text = raw.decode(errors="replace")
            self.stderr_raw.append(text)
            with contextlib.suppress(ValueError):
                self.logs.append(json.loads(text))

    def sets(self, watch: int = 0) -> list[set[str]]:
        """Every set the child's watch number ``watch`` yielded, in order."""
        return [set(e["ids"]) for e in self.events
                if e["event"] == "set" and e["watch"] == watch]

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], what: str,
                       timeout_s: float = 8.0, start: int = 0) -> dict[str, Any]:
        """The first event from index ``start`` on that satisfies ``pred``."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            if self.proc.returncode is not None and not found:
                raise AssertionError(f"child exited ({self.proc.returncode}) before {what}: "
                                     f"{''.join(self.stderr_raw)[-2000:]}")
            found.extend(e for e in self.events[start:] if pred(e))
            return bool(found)

        await until(seen, timeout_s=timeout_s, what=what)
        return found[0]

    async def command(self, line: str) -> dict[str, Any]:
        """Send a command and return its reply."""
        assert self.proc.stdin is not None
        start = len(self.events)
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        name = line.split()[0]
        return await self.wait_for(lambda e: e["event"] == name, f"reply to {line!r}",
                                   start=start)

    async def status(self) -> dict[str, Any]:
        """The child's ``RegistryStatus`` as a dict."""
        reply = await self.command("status")
        assert "error" not in reply, reply["error"]
        return dict(reply["status"])

    async def stop(self) -> None:
        """Ask the child to quit; kill it if it does not within 5 s."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.command("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    """Children started by a test; all are stopped at teardown, together."""
    started: list[Child] = []
    yield started
    await asyncio.gather(*(child.stop() for child in started))


def _warnings(child: Child, fragment: str) -> list[dict[str, Any]]:
    return [e for e in child.logs if e.get("level") == "warning" and fragment in e["event"]]


# -- 1. a registry that cannot be written ------------------------------------------------------
def write_row(path: Path, instance_id: str, expires_at: float | None) -> None:
    """Insert (``expires_at`` given) or deregister an entry by hand (deleted, with the
    tombstone a deregistration leaves), as a process of another kind would: no heartbeat,
    no boot stamp (``expires_at`` is judged on the wall clock, as an older meshkit's
    entry), and the registry's ``last_write`` time is left alone."""
    conn = sqlite3.connect(path / "registry.db", timeout=5, isolation_level=None)
    try:
        if expires_at is None:
            conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
            conn.execute("INSERT INTO deregistered VALUES (?, 'svc', ?)",
                         (instance_id, time.time()))
        else:
            i = inst(instance_id)
            conn.execute("INSERT INTO instances (instance_id, service, host, port, tags,"
                         " meta, weight, expires_at) VALUES (?,?,?,?,?,?,?,?)",
                         (i.instance_id, i.service, i.host, i.port, "[]", "{}", 1, expires_at))
    finally:
        conn.close()


async def test_watch_keeps_endpoints_while_registry_cannot_be_written(
        tmp_path: Path, children: list[Child]) -> None:
    """A process whose writes to the registry fail (heartbeats included) keeps the
    endpoints its watches had past their TTL instead of emptying discovery, and a watch it
    starts during the outage gets them too (the last good set); it logs the outage once (not
    once per heartbeat), then its end once, and reports it in status()."""
    child = await Child.start(tmp_path, "--ttl-s", "0.6", "--poll-s", "0.05",
                              "--register", "a", "b", "--watch", "svc")
    children.append(child)
    write_row(tmp_path, "w", time.time() + 60)  # a witness that stays live throughout
    await child.wait_for(lambda e: e.get("ids") == ["a", "b", "w"], "a, b and w discovered")
    await child.command("fault")
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=5, poll_interval_s=0.05))
    try:
        # Wait until a's and b's entries really expired in the file (nobody renews them)...
        async def expired() -> bool:
            return await reader.instances("svc") == {inst("w")}

        await until(expired, timeout_s=8, what="a and b to expire in the registry file")
        # ...then remove the witness: the first set without it proves that the watch polled
        # after the expiry. A watch started now reads the expired entries at once.
        since = len(child.events)
        write_row(tmp_path, "w", None)
        await child.wait_for(lambda e: e["event"] == "set" and "w" not in e["ids"],
                             "the watch to lose w", start=since)
        assert all({"a", "b"} <= s for s in child.sets()), (
            f"the watch dropped endpoints while writes were failing: {child.sets()}")
        second = (await child.command("watch svc"))["watch"]
        first = await child.wait_for(
            lambda e: e["event"] == "set" and e["watch"] == second, "a new watch's set")
        assert first["ids"] == ["a", "b"], f"a watch started in the outage saw {first['ids']}"
        status = await child.status()
        assert status["writable"] is False and status["write_errors"] >= 2, status
        assert status["readable"] is True and status["failing_since_s"] is not None, status
        assert status["kept_endpoints"] == 4, status  # a and b, in each of two watches
        assert "disk I/O error" in (status["last_error"] or ""), status
        failed = _warnings(child, "cannot be written")
        assert len(failed) == 1, [e["event"] for e in child.logs]
        assert not _warnings(child, "heartbeat failed")

        await child.command("heal")

        async def writable() -> bool:
            return (await child.status())["writable"] is True

        await until(writable, timeout_s=5, what="writes to work again")
        await until(lambda: any("writable again" in e["event"] for e in child.logs),
                    what="the recovery line")
        (recovered,) = [e for e in child.logs if "writable again" in e["event"]]
        assert recovered["outage_s"] > 0
        assert (await child.status())["failing_since_s"] is None

        async def renewed() -> bool:
            return await reader.instances("svc") == {inst("a"), inst("b")}

        await until(renewed, what="a and b renewed")

        async def nothing_kept() -> bool:
            return (await child.status())["kept_endpoints"] == 0

        await until(nothing_kept, what="the watches to keep nothing beyond the registry")
        assert all({"a", "b"} <= s for s in child.sets()), child.sets()
    finally:
        await reader.close()


def _missing(child: Child, ids: set[str], watch: int = 0) -> list[set[str]]:
    """The sets watch ``watch`` of ``child`` yielded that lack one of ``ids``, from the
    first one that had them all on."""
    sets = child.sets(watch)
    first = next((n for n, s in enumerate(sets) if ids <= s), len(sets))
    return [s for s in sets[first:] if not ids <= s]


async def test_watchers_keep_endpoints_until_owners_renew_after_a_write_outage(
        tmp_path: Path, children: list[Child]) -> None:
    """No process can write (A and B own a and b, C only watches); a and b expire. Then A
    writes again (stamping the registry's last write) while B and C still cannot, and B
    some time later: no watch may drop b meanwhile. The first write after an outage does
    not make entries that expired during it dead: their owners have not had a chance to
    renew them (issue 12 item 2, the UNAVAILABLE burst right after the restore)."""
    # TTL 1 s: heartbeats every 1/3 s, a grace period of 1 s after writes work again.
    args = ("--ttl-s", "1", "--poll-s", "0.05")
    a = await Child.start(tmp_path, *args, "--register", "a", "--watch", "svc")
    b = await Child.start(tmp_path, *args, "--register", "b")
    c = await Child.start(tmp_path, *args, "--watch", "svc")
    children.extend((a, b, c))
    for w in (a, c):
        await w.wait_for(lambda e: e.get("ids") == ["a", "b"], "a and b discovered")
    await asyncio.gather(*(x.command("fault") for x in (a, b, c)))
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=5, poll_interval_s=0.05))
    try:
        async def none_live() -> bool:
            return await reader.instances("svc") == frozenset()

        await until(none_live, timeout_s=8, what="a and b to expire in the registry file")

        async def c_cannot_write() -> bool:
            return (await c.status())["writable"] is False

        await until(c_cannot_write, timeout_s=5, what="C's write probe to fail")
        await a.command("heal")

        async def a_renewed() -> bool:
            return await reader.instances("svc") == {inst("a")}

        await until(a_renewed, timeout_s=5, what="A to renew a")
        await asyncio.sleep(0.15)  # polls of A and C see A's write while b is expired
        await asyncio.gather(b.command("heal"), c.command("heal"))

        async def b_renewed() -> bool:
            return await reader.instances("svc") == {inst("a"), inst("b")}

        await until(b_renewed, timeout_s=5, what="B to renew b")
        await asyncio.sleep(1.33)  # past the grace period: the truth applies, a and b live
        for who, w in (("A", a), ("C", c)):
            assert not _missing(w, {"a", "b"}), f"{who}'s watch dropped a live owner: " \
                                                f"{w.sets()}"
    finally:
        await reader.close()


# -- 1b/3b. a new process and a registry it cannot write, or cannot read --------------------
# A chmod'ed registry: the files lose their write (or read) bits and the directory its write
# bit, and the child runs with --honour-permissions so that this holds even when the tests
# run as root. A process that had the file open before keeps writing through its descriptors.
def make_read_only(path: Path, file_mode: int = 0o444) -> None:
    """``chmod`` the registry files to ``file_mode`` and the directory to 0555."""
    for f in path.iterdir():
        f.chmod(file_mode)
    path.chmod(0o555)


def make_writable(path: Path) -> None:
    """Undo :func:`make_read_only` so that the directory can be cleaned up."""
    path.chmod(0o755)
    for f in path.iterdir():
        f.chmod(0o644)


async def start_restricted(path: Path, *args: str) -> Child:
    """A child that honours permission bits (see registry_child.py), skipping the test where
    a root process cannot drop its capabilities."""
    try:
        return await Child.start(path, *args, "--honour-permissions")
    except AssertionError as exc:
        if "exited (3)" in str(exc):
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"cannot drop capabilities (required when CI=true): {exc}")
            pytest.skip(f"cannot drop capabilities: {exc}")
        raise


@pytest.mark.parametrize("wal_files", ["present", "gone"])
async def test_new_process_reads_a_registry_it_cannot_write(
        tmp_path: Path, children: list[Child], wal_files: str) -> None:
    """A process started on a registry its user may read but not write discovers what is
    registered there, whether the -wal/-shm files exist (another process has the file open)
    or not (nobody has it open and they cannot be created), and reports it cannot write.
    While others can write, it follows their changes, and an instance whose owner stopped
    renewing it drops out: the registry is not stuck, only this process cannot write."""
    path = tmp_path / "registry"
    ttl_s = 3 if wal_files == "present" else 30  # "gone": a's entry outlives the writer
    writer = LocalRegistry(LocalOptions(path=path, ttl_s=ttl_s, poll_interval_s=0.05))
    try:
        await writer.register(inst("a"))
        if wal_files == "gone":
            await writer.close()  # the last connection checkpoints and deletes them
            assert sorted(p.name for p in path.iterdir()) == ["registry.db"]
        make_read_only(path)
        # (TTL 1 s: a fault grace of 1 s, during which the reader keeps c, below)
        child = await start_restricted(path, "--ttl-s", "1" if wal_files == "present"
                                       else "30", "--poll-s", "0.05", "--watch", "svc")
        children.append(child)
        first = await child.wait_for(lambda e: e["event"] == "set", "the first set")
        assert first["ids"] == ["a"], f"a new reader saw {first['ids']}, not ['a']"
        reply = await child.command("register x")
        assert reply["error"] and "readonly" in reply["error"], reply
        status = await child.status()
        assert status["readable"] is True and status["writable"] is False, status
        if wal_files == "present":
            await writer.register(inst("b"))  # the writer still can: the reader follows
            await child.wait_for(lambda e: e.get("ids") == ["a", "b"], "b discovered")
            short = LocalRegistry(LocalOptions(path=path, ttl_s=0.5, poll_interval_s=0.05))
            await short.register(inst("c"))
            await child.wait_for(lambda e: e.get("ids") == ["a", "b", "c"], "c discovered")
            since = len(child.events)  # (an earlier set was ["a", "b"] already)
            await short.close()  # c's heartbeats stop; the writer keeps renewing a and b
            # c expires (0.5 s), then the reader, whose write probe fails, keeps it until
            # it has seen the writer write for its fault_grace_s (its ttl_s, 1 s)
            await child.wait_for(lambda e: e.get("ids") == ["a", "b"], "c to drop out",
                                 start=since)
    finally:
        await writer.close()
        make_writable(path)


async def test_new_process_that_cannot_read_the_registry_yields_nothing(
        tmp_path: Path, children: list[Child]) -> None:
    """A process whose user may not read the registry file gets no endpoint set at all
    (not an empty one) and status() says the registry cannot be read."""
    path = tmp_path / "registry"
    writer = LocalRegistry(LocalOptions(path=path, ttl_s=30))
    try:
        await writer.register(inst("a"))
        await writer.close()
        make_read_only(path, file_mode=0o000)
        child = await start_restricted(path, "--poll-s", "0.05", "--watch", "svc")
        children.append(child)

        async def failed_reads() -> bool:
            return child.sets() != [] or (await child.status())["read_errors"] >= 3

        await until(failed_reads, what="three failed reads")
        assert child.sets() == [], f"watch yielded {child.sets()} because of an error"
        status = await child.status()
        assert status["readable"] is False and status["failing_since_s"] is not None
        assert status["last_error"], status
        assert len(_warnings(child, "cannot be read")) == 1, child.logs
    finally:
        make_writable(path)


async def test_corrupt_registry_yields_nothing_until_it_can_be_read(tmp_path: Path) -> None:
    """A registry file that is not a database makes the watch wait (it yields no empty set
    because of the error) and status() report it; once the file is replaced by a good one,
    the watch yields what is registered and a recovery line is logged."""
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not a database\n" * 200)
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=5, poll_interval_s=0.02))
    watch = reader.watch("svc")
    first = asyncio.ensure_future(anext(watch))
    try:
        with capture_logs() as logs:
            await until(lambda: first.done() or reader.status().read_errors >= 3,
                        what="three failed reads")
            assert not first.done(), f"watch yielded {first.result()} because of an error"
            status = reader.status()
            assert status == RegistryStatus(
                kind="local", readable=False, writable=None,
                read_errors=status.read_errors, write_errors=0, reopened=0,
                last_error=status.last_error, failing_since_s=status.failing_since_s)
            assert "not a database" in (status.last_error or "")
            assert status.summary == "the service registry cannot be read"
            assert str(tmp_path) not in status.summary

            good = tmp_path / "good"
            writer = LocalRegistry(LocalOptions(path=good, ttl_s=5))
            try:
                await writer.register(inst("a"))
            finally:
                await writer.close()  # checkpoints: everything is in good/registry.db
            os.replace(good / "registry.db", path)
            assert await asyncio.wait_for(first, 5) == {inst("a")}
        assert reader.status().readable is True and reader.status().failing_since_s is None
        events = [e["event"] for e in logs]
        assert sum("cannot be read" in e for e in events) == 1, events
        assert sum("readable again" in e for e in events) == 1, events
    finally:
        await watch.aclose()
        await reader.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [("tags", "not json"), ("tags", "5"), ("meta", "[1, 2]"), ("host", ""),
     ("host", "127.0.0.1:41009"), ("expires_at", "soon")],
)
async def test_watch_skips_a_malformed_row_and_goes_on(
    tmp_path: Path, column: str, value: str
) -> None:
    """A row that does not decode (a foreign or older writer, a damaged page) is skipped:
    the watch lists the service's other instances and goes on following changes, instead of
    ending (Registry.watch: "The iterator ends only when closed or cancelled"). The warning
    names the row, not its values, and is not repeated at every poll."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3.0, poll_interval_s=0.02))
    watch = reg.watch("svc")
    try:
        await reg.register(inst("a"))
        assert await asyncio.wait_for(anext(watch), 5) == {inst("a")}
        row: dict[str, Any] = {"instance_id": "x", "service": "svc", "host": "127.0.0.1",
                               "port": 41009, "tags": "[]", "meta": json.dumps({"k": "s3cr3t"}),
                               "weight": 1, "expires_at": 4102444800.0}
        row[column] = value
        conn = sqlite3.connect(str(tmp_path / "registry.db"))
        conn.execute(f"INSERT INTO instances ({', '.join(row)}) VALUES "
                     f"({', '.join('?' * len(row))})", tuple(row.values()))
        conn.commit()
        conn.close()
        with capture_logs() as logs:
            reads = reg.status().read_errors
            await asyncio.sleep(0.3)  # many polls over the bad row
            await reg.register(inst("b"))
            assert await asyncio.wait_for(anext(watch), 5) == {inst("a"), inst("b")}
        skipped = [e for e in logs if e["event"] == "skipping unusable local registry entry"]
        assert len(skipped) == 1, logs
        assert skipped[0]["instance_id"] == "x" and skipped[0]["service"] == "svc"
        assert "s3cr3t" not in repr(logs)
        assert reg.status().read_errors == reads  # a bad row is not a read outage
    finally:
        await watch.aclose()
        await reg.close()


async def test_new_client_with_an_unreadable_registry_is_told_the_registry_is_at_fault(
        tmp_path: Path) -> None:
    """A new client whose registry cannot be read gets UNAVAILABLE saying so (the fixed
    phrase of RegistryStatus.summary), not "no endpoint is registered" nor a bare "no
    discovery answer", and without the file's path or the sqlite3 error."""
    import grpc

    import meshkit

    (tmp_path / "registry.db").write_bytes(b"this is not a database\n" * 200)
    registry = LocalRegistry(LocalOptions(path=tmp_path, poll_interval_s=0.02))
    opts = meshkit.DialOptions(insecure=True, resolve_timeout_s=0.5)
    try:
        async with meshkit.dial("svc", registry=registry, options=opts) as ch:
            call = ch.unary_unary("/svc.Svc/Get", _registered_method=True)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=2)
    finally:
        await registry.close()
    assert registry.status().summary == "the service registry cannot be read"
    details = err.value.details() or ""
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
    assert str(tmp_path) not in details and "database" not in details, details
    assert "registry" in details and "no endpoint is registered" not in details, details


async def test_pure_reader_drops_expired_entries_when_it_can_write(tmp_path: Path) -> None:
    """A watcher that registers nothing still drops instances whose heartbeats stopped (their
    process died) once the TTL passes, down to an empty set: nobody wrote since, but its
    write probe succeeds, so the registry is healthy and expiry is real."""
    opts = LocalOptions(path=tmp_path, ttl_s=0.5, poll_interval_s=0.02)
    owner, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await owner.register(inst("a"))
        await owner.register(inst("b"))
        watch = reader.watch("svc")
        assert await anext(watch) == {inst("a"), inst("b")}
        assert reader.status().writable is None  # a healthy poll writes nothing
        await owner.close()  # heartbeats stop; the entries are not removed
        async with asyncio.timeout(5):
            while await anext(watch):  # a and b may expire one poll apart
                pass
        status = reader.status()
        assert status.writable is True and status.ok, status  # the probe ran
        await watch.aclose()
    finally:
        await reader.close()


# -- 2. the registry file deleted under running processes --------------------------------------
def delete_registry_files(path: Path) -> None:
    """``rm path/*``: the registry file and its -wal and -shm files."""
    for f in path.iterdir():
        f.unlink()


async def test_deleted_registry_file_is_reopened_and_processes_find_each_other(
        tmp_path: Path, children: list[Child]) -> None:
    """Process A is registered and heartbeating; the registry file is deleted; process B
    starts (creating a new file) and registers. A notices, reopens the path, registers its
    instance again and logs it once; both then see each other."""
    a = await Child.start(tmp_path, "--ttl-s", "1", "--poll-s", "0.05",
                          "--register", "a", "--watch", "svc")
    children.append(a)
    await a.wait_for(lambda e: e.get("ids") == ["a"], "A sees itself")
    delete_registry_files(tmp_path)
    b = await Child.start(tmp_path, "--ttl-s", "1", "--poll-s", "0.05",
                          "--register", "b", "--watch", "svc")
    children.append(b)
    await a.wait_for(lambda e: e.get("ids") == ["a", "b"], "A to see B", timeout_s=8)
    await b.wait_for(lambda e: e.get("ids") == ["a", "b"], "B to see A", timeout_s=8)
    assert len(_warnings(a, "deleted or replaced")) == 1, a.logs
    assert (await a.status())["reopened"] == 1


async def test_deleted_registry_file_is_recreated_by_its_own_process(tmp_path: Path) -> None:
    """With no other process around, a deleted registry file is recreated by the next
    operation and this process's instances are registered in it again."""
    opts = LocalOptions(path=tmp_path, ttl_s=5, poll_interval_s=0.02)
    reg = LocalRegistry(opts)
    fresh = LocalRegistry(opts)
    try:
        await reg.register(inst("a"))
        delete_registry_files(tmp_path)
        with capture_logs() as logs:
            assert await reg.instances("svc") == {inst("a")}
        assert await fresh.instances("svc") == {inst("a")}
        assert reg.status().reopened == 1
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "local registry file was deleted or replaced; reopened it"]
    finally:
        await reg.close()
        await fresh.close()


async def test_watchers_keep_endpoints_until_owners_reregister_in_a_new_file(
        tmp_path: Path, children: list[Child]) -> None:
    """A and B own a and b, C only watches; the registry file is deleted. Whoever touches
    the path first creates a new, empty file; until every owner has re-registered there,
    no watch may drop a or b (issue 12 item 3: watchers applied the new file's contents,
    one endpoint, before the other owners re-registered). A third owner that registers in
    the new file is seen at once."""
    # TTL 2 s: heartbeats every 2/3 s, so the owners' heartbeats are not what re-registers
    # them first; the grace period (one TTL) covers them anyway.
    args = ("--ttl-s", "2", "--poll-s", "0.05")
    a = await Child.start(tmp_path, *args, "--register", "a", "--watch", "svc")
    b = await Child.start(tmp_path, *args, "--register", "b")
    c = await Child.start(tmp_path, *args, "--watch", "svc")
    children.extend((a, b, c))
    for w in (a, c):
        await w.wait_for(lambda e: e.get("ids") == ["a", "b"], "a and b discovered")
    delete_registry_files(tmp_path)
    deleted_at = time.monotonic()
    d = await Child.start(tmp_path, *args, "--register", "d")
    children.append(d)
    for w in (a, c):
        await w.wait_for(lambda e: e.get("ids") == ["a", "b", "d"], "d discovered")
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=5, poll_interval_s=0.05))
    try:
        async def all_there() -> bool:
            return await reader.instances("svc") == {inst("a"), inst("b"), inst("d")}

        await until(all_there, timeout_s=5, what="a, b and d in the new file")
    finally:
        await reader.close()
    # past the grace period: one TTL (2 s) from when each watcher found the file replaced,
    # at its next poll (0.05 s) after the deletion; 0.5 s of margin for that poll. d's
    # start and the reads above used part of it already.
    await asyncio.sleep(max(0.0, deleted_at + 2.5 - time.monotonic()))
    for who, w in (("A", a), ("C", c)):
        assert not _missing(w, {"a", "b"}), f"{who}'s watch dropped a live owner: {w.sets()}"
        assert w.sets()[-1] == {"a", "b", "d"}, w.sets()


async def test_after_a_fault_a_deregistered_instance_goes_at_once_a_dead_one_after_grace(
        tmp_path: Path, children: list[Child]) -> None:
    """While a watch keeps its last endpoints after the file was replaced, an instance
    whose owner deregisters (a graceful drain) leaves the set at once, and one whose owner
    died (SIGKILL, so it never re-registers) leaves once the grace period is over: the
    registry's truth applies again."""
    ttl_s = 2.0
    args = ("--ttl-s", str(ttl_s), "--poll-s", "0.05")
    a = await Child.start(tmp_path, *args, "--register", "a")
    b = await Child.start(tmp_path, *args, "--register", "b")
    k = await Child.start(tmp_path, *args, "--register", "k")
    c = await Child.start(tmp_path, *args, "--watch", "svc")
    children.extend((a, b, k, c))
    await c.wait_for(lambda e: e.get("ids") == ["a", "b", "k"], "a, b and k discovered")
    k.proc.kill()
    await k.proc.wait()
    delete_registry_files(tmp_path)
    reader = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=5, poll_interval_s=0.05))
    try:
        async def reregistered() -> bool:
            return await reader.instances("svc") == {inst("a"), inst("b")}

        await until(reregistered, timeout_s=5, what="a and b re-registered in the new file")
    finally:
        await reader.close()
    since = len(c.events)
    t0 = time.monotonic()
    reply = await b.command("deregister b")
    assert reply["error"] is None, reply
    gone = await c.wait_for(lambda e: e["event"] == "set" and "b" not in e["ids"],
                            "b to leave C's set", start=since, timeout_s=5)
    took = time.monotonic() - t0
    assert took < ttl_s / 2, f"a deregistered instance took {took:.2f}s to leave"
    assert "a" in gone["ids"] and "k" in gone["ids"], gone  # still within the grace period
    await c.wait_for(lambda e: e.get("ids") == ["a"], "k (dead) to leave C's set",
                     timeout_s=3 * ttl_s)
    assert not _missing(c, {"a"}), c.sets()


# -- status bookkeeping ---------------------------------------------------------------------
class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_status_tracker_reports_each_outage_once() -> None:
    """The first failure of an outage says "started", later ones nothing but a reminder
    every remind_every_s, and the first success after it returns the outage's length."""
    wall, mono = Clock(1_700_000_000.0), Clock(100.0)
    t = StatusTracker("local", clock=wall, monotonic=mono, remind_every_s=60)
    assert t.status() == RegistryStatus(kind="local")
    assert t.write_ok() is None
    assert t.write_failed("disk I/O error") == "started"
    mono.now += 1
    assert t.write_failed("disk I/O error") is None
    assert t.read_ok() is None
    s = t.status()
    assert (s.readable, s.writable, s.write_errors, s.failing_since_s) == (
        True, False, 2, 1_700_000_000.0)
    assert s.summary == "the service registry cannot be written" and not s.ok
    mono.now += 59.5
    assert t.write_failed("x") == "reminder"
    mono.now += 30
    assert t.write_failed("x") is None
    assert t.failing_for_s(write=True) == 90.5
    assert t.recent_write(max_age_s=1) is False and not t.writes_recovered_within(10)
    mono.now += 0.5
    assert t.write_ok() == 91.0
    s = t.status()
    assert s.ok and s.summary is None and s.failing_since_s is None and s.last_error == "x"
    assert t.recent_write(max_age_s=1) is True and t.writes_recovered_within(2)
    mono.now += 3
    assert t.recent_write(max_age_s=1) is None and not t.writes_recovered_within(2)
    assert t.write_failed("again") == "started"


def test_registry_status_is_exported_and_frozen() -> None:
    """RegistryStatus is public API and immutable."""
    import dataclasses

    import meshkit.discovery

    assert "RegistryStatus" in meshkit.discovery.__all__
    with pytest.raises(dataclasses.FrozenInstanceError):
        RegistryStatus(kind="local").readable = True  # type: ignore[misc]


async def test_register_on_an_unusable_path_raises_registry_error(tmp_path: Path) -> None:
    """A registry whose directory cannot be created fails with RegistryError (not a bare
    OSError) and counts a write error."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    reg = LocalRegistry(LocalOptions(path=blocker / "sub"))
    try:
        with pytest.raises(RegistryError):
            await reg.register(inst("a"))
        assert reg.status().writable is False and reg.status().write_errors == 1
    finally:
        await reg.close()


_FORKED_WORKER = r'''
import asyncio, json, os, sys, time
from meshkit.discovery import Instance, LocalOptions, LocalRegistry

reg = LocalRegistry(LocalOptions(path=sys.argv[1], ttl_s=2, poll_interval_s=0.05))
# the pre-fork master checks the registry once (it never serves itself)
asyncio.run(reg.instances("echo"))
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a worker: registers its instance through the registry it inherited
    os.close(r)
    async def worker():
        inst = Instance(service="echo", instance_id=f"w-{os.getpid()}", host="127.0.0.1",
                        port=5000)
        await reg.register(inst)
        listed = await reg.instances("echo")
        await reg.deregister(inst)
        await reg.close()
        return sorted(i.instance_id for i in listed)
    try:
        res = {"listed": asyncio.run(asyncio.wait_for(worker(), 20))}
    except BaseException as exc:
        res = {"error": repr(exc)}
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
deadline = time.monotonic() + 40
while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
    time.sleep(0.05)
data = os.read(r, 65536).decode()
# the master's registry still works after the fork
after = asyncio.run(reg.instances("echo"))
asyncio.run(reg.close())
print(json.dumps({**json.loads(data or '{"error": "no answer from the child"}'),
                  "master_after": sorted(i.instance_id for i in after)}), flush=True)
'''


@pytest.mark.timeout(90)
def test_a_registry_used_before_a_fork_works_in_the_forked_worker(tmp_path: Path) -> None:
    """A pre-fork server (gunicorn's model: the master builds the application, workers
    are forked from it) uses its LocalRegistry once in the master (a start-up check),
    then forks a worker that registers through the registry object it inherited: the
    worker gets a worker thread and a SQLite connection of its own (SQLite forbids using
    a connection opened before a fork in the child: https://sqlite.org/howtocorrupt.html
    section 2.6) and none of its parent's heartbeats or registrations, registers at once
    and is listed; the master's registry goes on working. The child's register() used
    to be queued to the executor's worker thread, which did not survive the fork (its
    idle count did, so no thread was started), and never completed. The scenario runs in
    a script of its own: this process runs grpc's threads and is never forked."""
    script = tmp_path / "forked_worker.py"
    script.write_text(_FORKED_WORKER)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "reg")], cwd=REPO,
                          capture_output=True, text=True, timeout=80,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert "error" not in result, f"the forked worker could not use the registry: {result}"
    assert len(result["listed"]) == 1 and result["listed"][0].startswith("w-"), result
    assert result["master_after"] == [], result
