"""LocalRegistry: bookkeeping with an injected clock, and watches on a real SQLite file."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import re
import sqlite3
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from meshkit.discovery import Instance, LocalOptions, LocalRegistry, registry_from_uri
from meshkit.errors import ConfigError, RegistryError
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop
from tests.support.wait import until


def inst(i: str, service: str = "svc", **kw: object) -> Instance:
    """An instance ``i`` of ``service`` on a distinct port."""
    return Instance(service=service, instance_id=i, host="127.0.0.1",
                    port=20000 + sum(map(ord, i)), **kw)  # type: ignore[arg-type]


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_register_roundtrips_all_fields(tmp_path: Path) -> None:
    """Tags, meta and weight come back from the registry as registered."""
    reg = LocalRegistry(LocalOptions(path=tmp_path))
    try:
        a = inst("a", tags=("v2", "canary"), meta={"zone": "z1", "version": "2"}, weight=3)
        await reg.register(a)
        (got,) = await reg.instances("svc")
        assert got == a and got.meta == {"zone": "z1", "version": "2"}
        assert await reg.instances("other") == frozenset()
    finally:
        await reg.close()


@pytest.mark.parametrize("boot_clock", ["boot clock", "wall clock only"])
async def test_entry_expires_after_ttl_without_heartbeat(tmp_path: Path,
                                                         boot_clock: str) -> None:
    """An instance whose heartbeats stop disappears once its TTL passes: on the boot clock
    where there is one, else on the wall clock (the test moves both)."""
    clock, boot = FakeClock(), FakeClock()
    reg = LocalRegistry(LocalOptions(
        path=tmp_path, ttl_s=3, heartbeat_interval_s=2.9, clock=clock,
        boot_clock=boot if boot_clock == "boot clock" else None, boot_id="test-boot"))
    try:
        await reg.register(inst("a"))
        clock.now += 2.9
        boot.now += 2.9
        assert len(await reg.instances("svc")) == 1
        clock.now += 0.2
        boot.now += 0.2
        assert await reg.instances("svc") == frozenset()
    finally:
        await reg.close()


async def test_snapshot_is_instances_and_failing_from_one_read(tmp_path: Path) -> None:
    """``snapshot(service)`` gives what ``instances()`` and ``failing()`` give: the live
    instances, and those whose heartbeat lapsed without a deregistration (one that
    deregistered is in neither), from one read of the service's rows, writing nothing;
    ``meshkit services`` and ``prometheus-targets`` read each service through it."""
    clock, boot = FakeClock(), FakeClock()

    def opts(ttl_s: float) -> LocalOptions:
        return LocalOptions(path=tmp_path, ttl_s=ttl_s, heartbeat_interval_s=ttl_s * 0.9,
                            clock=clock, boot_clock=boot, boot_id="test-boot")

    owner, dying = LocalRegistry(opts(30)), LocalRegistry(opts(3))
    try:
        a, b, c = inst("a"), inst("b"), inst("c")
        await owner.register(a)
        await dying.register(b)
        await dying.register(c)
        await dying.deregister(c)
        clock.now += 5
        boot.now += 5
        reads: list[str] = []
        runs: list[bool] = []
        read, run = owner._read, owner._run

        def counted(conn: sqlite3.Connection, service: str) -> Any:
            reads.append(service)
            return read(conn, service)

        async def recorded(fn: Any, *, write: bool, **kw: Any) -> Any:
            runs.append(write)
            return await run(fn, write=write, **kw)

        owner._read = counted  # type: ignore[method-assign]
        owner._run = recorded  # type: ignore[method-assign]
        snap = await owner.snapshot("svc")
        assert (reads, runs) == (["svc"], [False])  # one read, no write
        assert (snap.live, snap.failing) == ({a}, {b})
        assert snap == (await owner.instances("svc"), await owner.failing("svc"))
        assert await owner.snapshot("other") == (frozenset(), frozenset())
    finally:
        await owner.close()
        await dying.close()


async def test_snapshot_live_is_a_new_watchs_first_set_during_a_write_outage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``snapshot().live`` is what a new watch yields first, fault rule included: while
    writes fail (a full disk; the write probe fails), the entries live at the registry's
    last write are kept, as every new watch keeps them (``failing`` is still
    ``failing()``'s); once writes work (the probe succeeds) they are not. It was
    ``instances()``'s view, which drops them during the outage."""
    clock = FakeClock()
    opts = LocalOptions(path=tmp_path, ttl_s=3, clock=clock, boot_clock=None)
    owner = LocalRegistry(opts)
    a, b = inst("a"), inst("b")
    try:
        await owner.register(a)  # the last write: a was live then
    finally:
        await owner.close()
    clock.now += 5  # a expired; nobody has written since
    reader = LocalRegistry(opts)
    probes: list[str] = []

    def cannot_write(conn: sqlite3.Connection) -> None:
        probes.append("failed")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(reader, "_probe", cannot_write)
    try:
        watch = reader.watch("svc")
        assert isinstance(watch, AsyncGenerator)
        first = await asyncio.wait_for(anext(watch), 5)
        await watch.aclose()
        assert first == {a}  # the fault rule: the setup holds
        snap = await reader.snapshot("svc")
        assert (snap.live, snap.failing) == (first, await reader.failing("svc")), snap
        assert snap.failing == {a}
        assert await reader.instances("svc") == frozenset()
        assert probes  # the write probe said writes fail
        monkeypatch.undo()  # writes work again: a is dead
        healthy = LocalRegistry(opts)
        try:
            await healthy.register(b)
            snap = await healthy.snapshot("svc")
            assert (snap.live, snap.failing) == (frozenset({b}), frozenset({a})), snap
        finally:
            await healthy.close()
    finally:
        await reader.close()


async def test_heartbeat_keeps_entry_alive(tmp_path: Path) -> None:
    """Heartbeats keep renewing the TTL."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.3, poll_interval_s=0.05))
    try:
        await reg.register(inst("a"))
        for _ in range(8):  # 0.8 s, well past several TTLs
            await asyncio.sleep(0.1)
            assert len(await reg.instances("svc")) == 1
    finally:
        await reg.close()


async def test_watch_yields_initial_set_then_changes(tmp_path: Path) -> None:
    """A watch yields the current set first, then each change, across registry objects."""
    opts = LocalOptions(path=tmp_path, ttl_s=2, poll_interval_s=0.02)
    writer, reader = LocalRegistry(opts), LocalRegistry(opts)
    try:
        await writer.register(inst("a"))
        w = reader.watch("svc")
        assert {i.instance_id for i in await anext(w)} == {"a"}
        await writer.register(inst("b"))
        assert {i.instance_id for i in await asyncio.wait_for(anext(w), 2)} == {"a", "b"}
        await writer.deregister(inst("a"))
        assert {i.instance_id for i in await asyncio.wait_for(anext(w), 2)} == {"b"}
        await w.aclose()
    finally:
        await writer.close()
        await reader.close()


async def test_reregister_replaces_address(tmp_path: Path) -> None:
    """Registering the same instance id again replaces its record."""
    reg = LocalRegistry(LocalOptions(path=tmp_path))
    try:
        await reg.register(inst("a"))
        moved = Instance(service="svc", instance_id="a", host="127.0.0.2", port=999)
        await reg.register(moved)
        assert await reg.instances("svc") == frozenset({moved})
    finally:
        await reg.close()


def test_bad_options_quote_the_value(tmp_path: Path) -> None:
    """Out-of-range options fail at construction with the bad value in the message."""
    with pytest.raises(ConfigError, match="-1"):
        LocalOptions(path=tmp_path, ttl_s=-1)
    with pytest.raises(ConfigError, match="5"):
        LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=5)
    with pytest.raises(ConfigError, match="0"):
        LocalOptions(path=tmp_path, poll_interval_s=0)
    with pytest.raises(ConfigError, match=r"busy_timeout_s.*-2"):
        LocalOptions(path=tmp_path, busy_timeout_s=-2)


class _StartedExecutor(concurrent.futures.ThreadPoolExecutor):
    """One worker thread whose jobs count as started as soon as they are submitted, so
    cancelling the awaiting task never withdraws one (as when the worker has already
    taken it); records how many jobs were submitted."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="test-local")
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        outer.set_running_or_notify_cancel()
        inner = super().submit(fn, *args, **kwargs)

        def copy(done: concurrent.futures.Future[Any]) -> None:
            exc = done.exception()
            if exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(done.result())

        inner.add_done_callback(copy)
        self.submitted += 1
        return outer


async def test_register_again_never_lets_an_old_heartbeat_write_land_last(
        tmp_path: Path) -> None:
    """Registering an id again stops its old heartbeat before the new write: a heartbeat
    write of the old instance that was already under way when register() was called
    lands before the new one, never after it (it would bring back the old address for a
    heartbeat interval)."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=0.05))
    executor = _StartedExecutor()
    reg._executor.shutdown()
    reg._executor = executor
    old = Instance(service="svc", instance_id="a", host="127.0.0.1", port=20001)
    new = Instance(service="svc", instance_id="a", host="127.0.0.2", port=20002)
    try:
        await reg.register(old)
        old_heartbeat = reg._heartbeats["a"]
        write = reg._write

        def gated_write(conn: sqlite3.Connection, *instances: Instance, **kw: Any) -> None:
            if new in instances:
                # Hold the new write until the old heartbeat has queued a write of its own
                # behind it, or has ended (then it can queue none).
                queued = executor.submitted
                deadline = time.monotonic() + 5
                while (executor.submitted == queued and not old_heartbeat.done()
                       and time.monotonic() < deadline):
                    time.sleep(0.005)
            write(conn, *instances, **kw)

        reg._write = gated_write  # type: ignore[method-assign]
        await reg.register(new)
        # Jobs run in order: this read comes after any write queued before it.
        (got,) = await reg.instances("svc")
        assert (got.host, got.port) == (new.host, new.port)
        assert old_heartbeat.done()
    finally:
        await reg.close()


async def test_failed_register_again_keeps_the_old_heartbeat(tmp_path: Path) -> None:
    """When registering an id again fails to write, the previous registration is still
    kept alive: its heartbeat goes on writing the old instance."""
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=3, heartbeat_interval_s=0.05))
    old = Instance(service="svc", instance_id="a", host="127.0.0.1", port=20001)
    new = Instance(service="svc", instance_id="a", host="127.0.0.2", port=20002)
    try:
        await reg.register(old)
        write = reg._write
        beats: list[Instance] = []

        def failing_write(conn: sqlite3.Connection, *instances: Instance, **kw: Any) -> None:
            if new in instances:
                raise sqlite3.OperationalError("disk I/O error")
            beats.extend(instances)
            write(conn, *instances, **kw)

        reg._write = failing_write  # type: ignore[method-assign]
        with pytest.raises(RegistryError, match="disk I/O error"):
            await reg.register(new)
        await until(lambda: len(beats) >= 2, what="two more heartbeats")
        assert set(beats) == {old}
        (got,) = await reg.instances("svc")
        assert got.port == old.port
    finally:
        await reg.close()


def test_bad_instances_are_refused() -> None:
    """Invalid instance fields fail with the value quoted."""
    with pytest.raises(ConfigError, match="'bad name'"):
        Instance(service="bad name", instance_id="x", host="h", port=1)
    with pytest.raises(ConfigError, match="70000"):
        Instance(service="s", instance_id="x", host="h", port=70000)
    with pytest.raises(ConfigError, match="weight"):
        Instance(service="s", instance_id="x", host="h", port=1, weight=0)
    assert Instance(service="s", instance_id="x", host="::1", port=5).address == "[::1]:5"


@pytest.mark.parametrize("host", ["127.0.0.1:50051", "unix:/tmp/orderd.sock", "10.0.0.5 ",
                                  "[::1", "::1]", "[orderd]", "http://orderd", "a b"])
def test_an_instance_host_that_is_no_address_nor_name_is_refused(host: str) -> None:
    """``Instance(host="127.0.0.1:50051", port=50051)`` (a host:port pasted where a host
    goes), ``"unix:/tmp/orderd.sock"``, a trailing space from a config file or an
    unbalanced ``"[::1"`` were accepted: registered and discovered as if valid, with the
    address ``[127.0.0.1:50051]:50051``..., every call then failed ``UNAVAILABLE`` "all 1
    endpoints are failing" with nothing naming the bad value. The host is now checked as
    ``ServeOptions.host`` is (ConfigError quoting it), so a registry skips such a record
    with a warning."""
    with pytest.raises(ConfigError, match="host") as info:
        Instance(service="orderd", instance_id="o1", host=host, port=50051)
    assert repr(host) in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "fe80::1%eth0", "orderd",
                                  "orderd-1.orders.svc.cluster.local.", "my_host"])
async def test_an_instance_host_may_be_any_address_or_name(tmp_path: Path, host: str) -> None:
    """Every spelling of a host ``ServeOptions`` takes is an instance's host, also the
    bracketed IPv6 ``"[::1]"`` that older meshkit versions registered (``serve()`` on
    ``host="[::1]"``): such a record still loads."""
    inst = Instance(service="orderd", instance_id="o1", host=host, port=50051)
    assert inst.host == host
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=5.0, poll_interval_s=0.05))
    try:
        await reg.register(inst)
        assert await reg.instances("orderd") == frozenset({inst})
    finally:
        await reg.close()


@pytest.mark.parametrize("service", ["orderd\n", "orderd\r", "a" * 63 + "\n", 3])
def test_instance_service_name_is_matched_whole(service: object) -> None:
    """``$`` also matches before a final newline: ``"orderd\n"`` was a valid service name
    (and so a valid MeshServer name)."""
    with pytest.raises(ConfigError, match=re.escape(repr(service))):
        Instance(service=service, instance_id="x", host="h", port=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value", "quoted"), [
    ("tags", "v2", "'v2'"), ("tags", b"v2", "b'v2'"), ("tags", ("v2", 2), "2"),
    ("port", True, "True"), ("port", 50051.0, "50051.0"), ("port", "50051", "'50051'"),
    ("weight", True, "True"), ("weight", 1.5, "1.5"),
])
def test_instance_fields_of_the_wrong_type_are_refused(field: str, value: object,
                                                       quoted: str) -> None:
    """``tags="v2"`` was stored as the tags ``v`` and ``2`` (no ``Subset(tags=("v2",))``
    matched it) and ``port=True`` as port 1, where ServeOptions refuses both."""
    kw: dict[str, Any] = {"service": "s", "instance_id": "x", "host": "h", "port": 1,
                          field: value}
    with pytest.raises(ConfigError, match=field) as err:
        Instance(**kw)
    assert quoted in str(err.value)


@pytest.mark.parametrize(("field", "value"), [
    ("instance_id", "orderd-\ud83d"), ("host", "h\udc80st"), ("tags", ("v2", "\ud83d")),
    ("meta", {"zone": "eu-\udfff"}), ("meta", {"\ud800": "v"}),
])
def test_instance_strings_not_encodable_as_utf8_are_refused(field: str, value: object) -> None:
    """A registry record read from JSON can hold a lone surrogate (``"\\ud83d"``: what
    JavaScript's ``JSON.stringify`` writes for an id cut in the middle of an emoji).
    ``Instance`` accepted it (any 1..128 characters), the channel listed it, and the
    ``instance_id`` label made prometheus-client fail to encode the exposition: every
    ``/metrics`` scrape answered 500 while the record was listed. Such a string is now a
    ConfigError (quoted escaped), which every registry's decoding catches to skip the
    record with a warning; the same characters paired (one emoji) are accepted."""
    kw: dict[str, Any] = {"service": "s", "instance_id": "x", "host": "h", "port": 1,
                          field: value}
    with pytest.raises(ConfigError, match="UTF-8") as err:
        Instance(**kw)
    assert "\\ud" in str(err.value) or "\\udc80" in str(err.value)  # escaped, printable
    str(err.value).encode("utf-8")
    ok = Instance(service="s", instance_id="orderd-\U0001f600", host="h", port=1,
                  tags=("\u00e9t\u00e9",), meta={"z\u00f6ne": "\u4e2d"})
    assert ok.instance_id == "orderd-\U0001f600"


def test_instance_tags_take_any_collection_of_strings() -> None:
    inst = Instance(service="s", instance_id="x", host="h", port=1, tags=["v2", "canary"])
    assert inst.tags == ("v2", "canary")


def test_registry_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """local:// URIs build a LocalRegistry with options; unknown schemes are refused."""
    reg = registry_from_uri(f"local://{tmp_path}?ttl_s=5&poll_interval_s=0.1")
    assert isinstance(reg, LocalRegistry)
    assert reg.options.path == tmp_path / "registry.db"
    assert reg.options.ttl_s == 5.0
    assert reg.options.busy_timeout_s == 5.0
    assert registry_from_uri(  # type: ignore[attr-defined]
        f"local://{tmp_path}?busy_timeout_s=0.5").options.busy_timeout_s == 0.5
    assert isinstance(registry_from_uri(f"local://{tmp_path}/x.db"), LocalRegistry)
    with pytest.raises(ConfigError, match="zookeeper://x"):
        registry_from_uri("zookeeper://x")
    with pytest.raises(ConfigError, match="ttl_s"):
        registry_from_uri(f"local://{tmp_path}?ttl_s=abc")
    with pytest.raises(ConfigError, match="bogus"):
        registry_from_uri(f"local://{tmp_path}?bogus=1")
    from meshkit.discovery import registry_from_env

    monkeypatch.setenv("MESHKIT_REGISTRY", f"local://{tmp_path}/env")
    env_reg = registry_from_env()
    assert isinstance(env_reg, LocalRegistry)
    assert env_reg.options.path == tmp_path / "env" / "registry.db"


@pytest.mark.parametrize("uri", ["local://tmp/meshkit-uri-test", "local:tmp/meshkit-uri-test",
                                 "local://other-host/tmp/meshkit-uri-test",
                                 "local://localhost:80/tmp/meshkit-uri-test",
                                 "local:./x?ttl_s=2"])
def test_a_local_registry_uri_without_an_absolute_path_is_refused(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``registry_from_uri("local://tmp/mesh")`` (two slashes, the usual typo of the
    documented ``local:///path``: ``tmp`` is the host) and ``local:tmp/mesh`` were accepted
    as the relative path ``tmp/mesh/registry.db``, under each process's working
    directory: a server and a client started from two directories used two registries and
    dial() failed ``UNAVAILABLE`` with no hint why. A ``local:`` URI with a host other
    than ``localhost`` or a relative path is now refused, the URI quoted."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="absolute path") as info:
        registry_from_uri(uri)
    assert repr(uri) in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing created under the working directory


def test_a_local_registry_uri_may_name_localhost(tmp_path: Path) -> None:
    """``local://localhost/abs/path`` is the local machine's ``/abs/path``, as in ``file:``
    URIs (RFC 8089), and ``local:/abs/path`` the same; neither depends on the working
    directory (``localhost/abs/path`` under it, before)."""
    for uri in (f"local://localhost{tmp_path}/reg", f"local://LocalHost{tmp_path}/reg",
                f"local:{tmp_path}/reg"):
        reg = registry_from_uri(uri)
        assert reg.options.path == tmp_path / "reg" / "registry.db", uri  # type: ignore[attr-defined]


def test_path_rule_directory_or_database_file(tmp_path: Path) -> None:
    """A path is the database file only if it is an existing file, or does not exist and
    ends in .db/.sqlite/.sqlite3 without a trailing slash; anything else (an existing
    directory, a trailing slash, a new name like run.d) is a directory holding
    registry.db."""
    def resolved(path: Any) -> Path:
        return LocalOptions(path=path).path

    assert resolved(tmp_path / "run.d") == tmp_path / "run.d" / "registry.db"
    assert resolved(tmp_path / "plain") == tmp_path / "plain" / "registry.db"
    assert resolved(f"{tmp_path}/reg.db/") == tmp_path / "reg.db" / "registry.db"
    assert resolved(tmp_path / "reg.db") == tmp_path / "reg.db"
    assert resolved(tmp_path / "reg.sqlite3") == tmp_path / "reg.sqlite3"
    (tmp_path / "dir.db").mkdir()
    assert resolved(tmp_path / "dir.db") == tmp_path / "dir.db" / "registry.db"
    (tmp_path / "registry-file").write_bytes(b"")
    assert resolved(tmp_path / "registry-file") == tmp_path / "registry-file"
    reg = registry_from_uri(f"local://{tmp_path}/run.d")
    assert reg.options.path == tmp_path / "run.d" / "registry.db"  # type: ignore[attr-defined]


def _busy(code: int = sqlite3.SQLITE_BUSY, msg: str = "database is locked") -> sqlite3.Error:
    exc = sqlite3.OperationalError(msg)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


def contended_connect(monkeypatch: pytest.MonkeyPatch, fail: dict[str, list[sqlite3.Error]],
                      calls: list[str]) -> None:
    """Make every ``sqlite3.connect`` return a connection whose ``execute`` raises the
    queued errors for statements that start with a key of ``fail``, in order, before
    running them for real: the immediate SQLITE_BUSY that SQLite's busy handler does
    not cover, which a real race produces only now and then."""
    real_connect = sqlite3.connect

    class Contended(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            calls.append(sql)
            for prefix, queue in fail.items():
                if sql.startswith(prefix) and queue:
                    raise queue.pop(0)
            return super().execute(sql, *args)

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=Contended, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


async def test_busy_errors_the_busy_handler_skips_are_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_BUSY (and its extended codes) at open or on a write is retried: nothing is
    lost and the caller sees no error."""
    calls: list[str] = []
    busy_recovery = (1 << 8) | sqlite3.SQLITE_BUSY
    contended_connect(monkeypatch, {"PRAGMA journal_mode=WAL": [_busy(), _busy()],
                                    "INSERT": [_busy(busy_recovery)]}, calls)
    reg = LocalRegistry(LocalOptions(path=tmp_path))
    try:
        await reg.register(inst("a"))
        assert await reg.instances("svc") == frozenset({inst("a")})
    finally:
        await reg.close()
    assert sum(c == "PRAGMA journal_mode=WAL" for c in calls) == 3
    assert sum(c.startswith("INSERT INTO instances") for c in calls) == 2


async def test_busy_past_the_timeout_fails_and_other_errors_fail_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file busy for longer than ``busy_timeout_s`` fails with RegistryError; an error
    other than busy is not retried."""
    calls: list[str] = []
    contended_connect(monkeypatch, {"INSERT": [_busy() for _ in range(10_000)],
                                    "DELETE FROM instances WHERE instance_id":
                                        [_busy(10, "disk I/O error")]}, calls)
    reg = LocalRegistry(LocalOptions(path=tmp_path, busy_timeout_s=0.2))
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match="database is locked"):
            await reg.register(inst("a"))
        assert 0.2 <= time.monotonic() - t0 < 2.0
        with pytest.raises(RegistryError, match="disk I/O error"):
            await reg.deregister(inst("a"))
        assert sum(c.startswith("DELETE FROM instances WHERE instance_id") for c in calls) == 1
    finally:
        await reg.close()


def _race_child(path: str, i: int, barrier: Any, out: Any) -> None:
    """Register ``p<i>`` in a new registry at ``path`` once every child is ready. Reports
    ``("tried", i, None)`` when it first asks SQLite to switch the file to WAL (a trace
    callback on its connections; the library is not touched) and ``("done", i, error or
    None)`` at the end."""
    tried = False

    def traced(sql: str) -> None:
        nonlocal tried
        if not tried and "journal_mode=WAL" in sql:
            tried = True
            out.put(("tried", i, None))

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(traced)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]  # this child process only

    async def main() -> None:
        # a long busy timeout: on a loaded box the last child may try well after the first
        reg = LocalRegistry(LocalOptions(path=Path(path), busy_timeout_s=20.0))
        try:
            await reg.register(inst(f"p{i}"))
            await reg.instances("svc")
        finally:
            await reg.close()

    barrier.wait()
    try:
        asyncio.run(main())
        out.put(("done", i, None))
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(("done", i, f"{type(exc).__name__}: {exc}"))


def _race(ctx: Any, path: Path, n: int, *, held: bool) -> tuple[list[str], set[int]]:
    """One round: ``n`` children register in a new registry at ``path`` at the same moment.
    Returns their errors, and which children tried to switch the file to WAL.

    If ``held``, the file is created first and this process holds its write lock (``BEGIN
    IMMEDIATE``, as a process switching a new file to WAL does) until every child has tried
    its own switch to WAL (or finished): SQLite answers that switch with SQLITE_BUSY at
    once, without its busy timeout, so only the library's own retry gets the children
    through, whatever the timing on a loaded box."""
    lock: sqlite3.Connection | None = None
    if held:
        path.mkdir()
        lock = sqlite3.connect(path / "registry.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
    try:
        barrier, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_race_child, args=(str(path), i, barrier, out))
                 for i in range(n)]
        for p in procs:
            p.start()
        tried: set[int] = set()
        done: dict[int, str | None] = {}
        while len(done) < n:
            if lock is not None and len(tried | set(done)) == n:
                lock.execute("COMMIT")
                lock.close()
                lock = None
            kind, i, error = out.get(timeout=30)
            if kind == "tried":
                tried.add(i)
            else:
                done[i] = error
        for p in procs:
            p.join(timeout=10)
    finally:
        if lock is not None:
            lock.close()
    return [e for e in done.values() if e], tried


def test_processes_racing_to_create_the_file_all_register(tmp_path: Path) -> None:
    """Processes that open a new registry file at the same moment (servers started
    together) all register: a switch to WAL that SQLite refuses with SQLITE_BUSY at once
    (another process holds the new file's lock while it switches) is retried, not fatal.
    The first round makes that happen to every child; the others are free races."""
    ctx = multiprocessing.get_context("forkserver")
    # This module too: else every child imports it (and pytest) after the fork, ~1 s of
    # CPU each; preloaded, the children reach the barrier in a few ms.
    ctx.set_forkserver_preload(["meshkit.discovery", __name__])
    n = 6
    for round_ in range(5):
        path = tmp_path / f"r{round_}"
        errors, tried = _race(ctx, path, n, held=round_ == 0)
        assert errors == [], f"round {round_}: {errors}"
        if round_ == 0:  # each child met the held lock, so the retry was what passed
            assert tried == set(range(n))
        assert len(asyncio.run(_instances(path))) == n


async def _instances(path: Path) -> frozenset[Instance]:
    reg = LocalRegistry(LocalOptions(path=path))
    try:
        return await reg.instances("svc")
    finally:
        await reg.close()


def test_registers_again_in_a_later_asyncio_run(tmp_path: Path) -> None:
    """A process that keeps one LocalRegistry and runs its async part with
    ``asyncio.run()`` more than once (a supervisor loop restarting the application after
    a crash, a CLI tool, a test session with a loop per test) registers the same instance
    again in each run, and a heartbeat on the current loop keeps it alive. register() used
    to wait for the previous run's heartbeat task (done, its loop closed) with
    ``asyncio.wait``, which schedules on that dead loop: ``RuntimeError: Event loop is
    closed`` in every later run, so the service could never register again."""
    # ttl_s 0.6 (a heartbeat every 0.2 s; the heartbeat test above runs at 0.3): two TTLs 1.2 s
    reg = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=0.6, poll_interval_s=0.05))
    me = inst("i1")

    async def register_and_list() -> frozenset[Instance]:
        await reg.register(me)
        return await reg.instances("svc")

    async def still_listed_after_two_ttls() -> frozenset[Instance]:
        await reg.register(me)
        await asyncio.sleep(2 * reg.options.ttl_s)  # only a heartbeat on this loop keeps it
        return await reg.instances("svc")

    try:
        assert asyncio.run(register_and_list()) == {me}
        assert asyncio.run(register_and_list()) == {me}
        assert asyncio.run(still_listed_after_two_ttls()) == {me}
    finally:
        asyncio.run(reg.close())


def test_watches_in_a_later_asyncio_run_with_a_dead_owners_entry(tmp_path: Path) -> None:
    """With an entry whose owner died after the registry's last write (a crashed
    process: the watches then probe whether this process can write, one probe at a time
    under a lock), concurrent watches in a later ``asyncio.run()`` (one per dialed
    service, pytest-asyncio's next test with a shared registry) yield. The probe lock was
    made once and bound itself to the first loop in which two watches contended for it:
    later they raised ``RuntimeError: <Lock> is bound to a different event loop``."""
    opts = LocalOptions(path=tmp_path / "reg", ttl_s=0.6, poll_interval_s=0.05)

    async def owner_dies(suffix: str) -> None:
        """Another process: registers two instances, deregisters one (the registry's last
        write) and dies (its loop ends, the other entry is left to expire)."""
        other = LocalRegistry(opts)
        await other.register(inst("dead" + suffix))
        gone = inst("gone" + suffix)
        await other.register(gone)
        await asyncio.sleep(0.3)
        await other.deregister(gone)

    reg = LocalRegistry(opts)

    async def watches() -> list[list[str]]:
        async def first() -> list[str]:
            watch = reg.watch("svc")
            try:
                return sorted(x.instance_id for x in await watch.__anext__())
            finally:
                await watch.aclose()

        async with asyncio.timeout(8):
            return await asyncio.gather(*(first() for _ in range(8)))

    try:
        for run in ("1", "2"):
            run_loop(owner_dies(run))
            time.sleep(1.0)  # expired, after the last write
            assert run_loop(watches()) == [[]] * 8, run
    finally:
        run_loop(reg.close())


# -- a LocalRegistry shared by servers in two threads' event loops ------------------------------
@pytest.mark.timeout(30)
def test_deregister_from_another_threads_loop(tmp_path: Path) -> None:
    """An instance registered from thread A's loop and deregistered from another loop
    (B's server, a shutdown hook running its own asyncio.run()) is deleted, and A's
    heartbeat stops. deregister() awaited A's heartbeat task from B's loop: a bare
    ``RuntimeError: ... attached to a different loop`` (not RegistryError), A's task
    cancelled from the wrong thread, and the row left listed."""
    reg = LocalRegistry(LocalOptions(path=tmp_path / "r.db", ttl_s=5,
                                     heartbeat_interval_s=0.5))
    me = inst("i1")
    a = LoopThread()
    try:
        a.run(reg.register(me))
        heartbeat = reg._heartbeats["i1"]

        async def deregister_and_list() -> frozenset[Instance]:
            async with asyncio.timeout(5):
                await reg.deregister(me)
                return await reg.instances("svc")

        assert run_loop(deregister_and_list()) == frozenset()

        async def ended() -> bool:
            await until(heartbeat.done, what="A's heartbeat ended")
            return heartbeat.cancelled()

        assert a.run(ended())
    finally:
        a.run(reg.close())
        a.close()


@pytest.mark.timeout(30)
def test_close_from_another_threads_loop_stops_its_heartbeats(tmp_path: Path) -> None:
    """close() called in another loop than the one that registered (B's shutdown after
    A's register) stops A's heartbeat in A's loop and closes the file; it awaited A's
    task from B's loop: ``RuntimeError: ... attached to a different loop``, the
    executor and file left open."""
    reg = LocalRegistry(LocalOptions(path=tmp_path / "r.db", ttl_s=5,
                                     heartbeat_interval_s=0.5))
    a = LoopThread()
    try:
        a.run(reg.register(inst("i1")))
        heartbeat = reg._heartbeats["i1"]

        async def close() -> None:
            async with asyncio.timeout(5):
                await reg.close()

        run_loop(close())

        async def ended() -> bool:
            await until(heartbeat.done, what="A's heartbeat ended")
            return heartbeat.cancelled()

        assert a.run(ended())
        assert reg._conn is None
    finally:
        a.run(reg.close())
        a.close()


@pytest.mark.timeout(30)
def test_another_loops_heartbeat_write_never_lands_after_deregister(tmp_path: Path) -> None:
    """deregister() from B's loop cannot wait for A's heartbeat (another thread's loop):
    it cancels it there. A heartbeat write A submits after the delete (A's step ran at
    the same time as B's deregister, before A's loop saw the cancel) must not put the
    deregistered instance back until its TTL."""
    import threading

    reg = LocalRegistry(LocalOptions(path=tmp_path / "r.db", ttl_s=30,
                                     heartbeat_interval_s=0.05))
    executor = _StartedExecutor()
    reg._executor.shutdown()
    reg._executor = executor
    me = inst("i1")
    a = LoopThread()
    armed, held, deleted = threading.Event(), threading.Event(), threading.Event()
    submit = executor.submit

    def gated_submit(fn: Any, /, *args: Any, **kw: Any) -> concurrent.futures.Future[Any]:
        # A's next heartbeat write is held in A's thread until B's delete is done.
        if armed.is_set() and threading.current_thread() is a._thread and not held.is_set():
            held.set()
            deleted.wait(5)
        return submit(fn, *args, **kw)

    executor.submit = gated_submit  # type: ignore[method-assign]
    try:
        a.run(reg.register(me))
        armed.set()
        assert held.wait(5), "A's heartbeat wrote no more"

        async def deregister_then_list() -> frozenset[Instance]:
            async with asyncio.timeout(5):
                await reg.deregister(me)
                queued = executor.submitted
                deleted.set()
                await until(lambda: executor.submitted > queued, what="A's write queued")
                return await reg.instances("svc")  # runs after A's write

        assert run_loop(deregister_then_list()) == frozenset()
    finally:
        deleted.set()
        a.run(reg.close())
        a.close()
