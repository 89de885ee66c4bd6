"""``meshkit services`` and ``meshkit prometheus-targets`` over large registries: many
instances to probe, many services to read. ``--timeout-s`` bounds each ``/readyz`` probe
and each registry read from its own start, not its place in a queue.

Every test talks to loopback only and compares times with wide margins (a read or probe
takes a fifth of its bound or less), so a loaded 2-core box does not decide the outcome.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshkit._cli import _common
from meshkit._cli import services as services_cli
from meshkit._cli.prometheus import TargetWriter
from meshkit.discovery import ConsulOptions, ConsulRegistry, Instance, LocalOptions, LocalRegistry
from meshkit.errors import MeshError
from tests.discovery.consul_double import ConsulDouble

pytestmark = pytest.mark.timeout(90)


async def _admin_app(readyz: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> tuple[web.AppRunner, int]:
    """An aiohttp server on ``127.0.0.1:<ephemeral>`` answering ``GET /readyz`` with
    ``readyz``; its runner and port."""
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def _register_local(reg_dir: Path, instances: list[Instance]) -> None:
    """Register ``instances`` in the local registry at ``reg_dir``; they stay live for
    their 60 s TTL after the registry is closed."""
    reg = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=60.0))
    try:
        for inst in instances:
            await reg.register(inst)
    finally:
        await reg.close()


async def _catalog_services(http: aiohttp.ClientSession, double: ConsulDouble,
                            names: list[str], admin: bool = True) -> None:
    """Register one instance of each service in ``names`` (ID ``<name>-1``, port 20000 +
    its index, with ``admin_port`` 30000 + its index in its meta if ``admin``) in the
    Consul double's catalog, on node ``node-2``."""
    for i, name in enumerate(names):
        service: dict[str, Any] = {"ID": f"{name}-1", "Service": name,
                                   "Address": "127.0.0.1", "Port": 20000 + i}
        if admin:
            service["Meta"] = {"admin_port": str(30000 + i)}
        async with http.put(f"{double.url}/v1/catalog/register", json={
                "Node": "node-2", "Address": "127.0.0.1", "Service": service}) as resp:
            assert resp.status == 200, await resp.text()


def _ready_after(delay_s: float) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A ``/readyz`` handler answering 200 after ``delay_s`` seconds."""
    async def readyz(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response({"ready": True})

    return readyz


async def test_services_each_readyz_is_bounded_from_its_own_start_at_scale(
        tmp_path: Path) -> None:
    """1,000 instances whose admin servers each answer ``/readyz`` in 0.4 s (busy
    processes), listed with ``--timeout-s 3``: every one is ``ready``.

    ``--help`` says ``--timeout-s`` bounds "each /readyz". The probes used to go out all
    at once through one aiohttp session (100 pooled connections) under
    ``ClientTimeout(total=timeout_s)``, whose ``total`` counts the wait for a pooled
    connection: the probes queued behind the first hundreds ran out of time before they
    were sent, and about half of these healthy instances were listed ``unreachable``, a
    wrong health that grew with the fleet. Now at most 100 probes run at once and each
    one's timeout starts when its request does (the old way still lists about 300 of
    them ``unreachable`` with this bound: 7 rounds of 0.4 s fit in 3 s). A probe has 7.5
    times its answer's time: with 5 times (``--timeout-s 2``), 43 probes ran out in a
    suite run on a loaded 2-core box."""
    runner, port = await _admin_app(_ready_after(0.4))
    reg_dir = tmp_path / "registry"
    try:
        await _register_local(reg_dir, [
            Instance(service="big", instance_id=f"big-{i:04d}", host="127.0.0.1",
                     port=20000 + i, meta={"admin_port": str(port)}) for i in range(1000)])
        rows = await services_cli.collect(f"local://{reg_dir}", [], 3.0)
    finally:
        await runner.cleanup()
    health = collections.Counter(r.health for r in rows)
    assert len(rows) == 1000
    assert health == {"ready": 1000}, (
        f"1000 instances each answering /readyz in 0.4 s with --timeout-s 3 were listed "
        f"as {dict(health)}")


async def test_services_hung_admin_servers_do_not_make_healthy_ones_unreachable(
        tmp_path: Path) -> None:
    """150 instances whose ``/readyz`` never answers (hung processes) and 50 that answer
    at once, listed with ``--timeout-s 3``: the hung ones are ``unreachable`` and the 50
    healthy ones ``ready``, and the listing takes a few probe timeouts, not one per hung
    instance (that would be 450 s).

    The timeout is 3 s, not 1 s: the healthy admin server answers on this test's own
    event loop, beside the 100 probes in flight and 150 held connections, and with 8
    test runs on 2 cores (load ~24) one healthy probe of 50 took over 1 s from its turn
    and was listed ``unreachable``. The fault below does not depend on the timeout's
    length: healthy probes queued behind the hung ones ran out of the whole timeout
    unsent, whatever it was.

    The hung probes used to hold every pooled connection for the whole ``--timeout-s``
    while the healthy instances' probes waited for one and ran out of time unsent, so a
    few hung instances had the healthy rest listed ``unreachable``: an outage that was
    not there."""
    never = asyncio.Event()

    async def hangs(request: web.Request) -> web.Response:
        await never.wait()
        return web.json_response({"ready": True})

    hung_runner, hung_port = await _admin_app(hangs)
    ok_runner, ok_port = await _admin_app(_ready_after(0.0))
    reg_dir = tmp_path / "registry"
    loop = asyncio.get_running_loop()
    try:
        # "a-..." sorts first: the hung instances are probed before the healthy ones
        await _register_local(reg_dir, [
            Instance(service="svc", instance_id=f"a-hung-{i:03d}", host="127.0.0.1",
                     port=20000 + i, meta={"admin_port": str(hung_port)}) for i in range(150)
        ] + [Instance(service="svc", instance_id=f"b-ok-{i:03d}", host="127.0.0.1",
                      port=21000 + i, meta={"admin_port": str(ok_port)}) for i in range(50)])
        start = loop.time()
        rows = await services_cli.collect(f"local://{reg_dir}", [], 3.0)
        took = loop.time() - start
    finally:
        never.set()
        await hung_runner.cleanup()
        await ok_runner.cleanup()
    health = collections.Counter(
        (r.instance_id.split("-")[1], r.health) for r in rows)
    assert health == {("hung", "unreachable"): 150, ("ok", "ready"): 50}, dict(health)
    # two waves of hung probes (150 over 100 at once) at 3 s each, plus the registry reads
    assert took < 20.0, f"the listing took {took:.1f} s"


async def test_prometheus_targets_each_registry_read_is_bounded_on_its_own(
        tmp_path: Path) -> None:
    """A Consul datacenter of 400 services whose agent answers each query in 20 ms, read
    with ``--timeout-s 3``: the pass writes 400 targets.

    ``--timeout-s`` is documented as the "bound on each registry read". The failing
    instances used to be read one service after another under a single
    ``asyncio.timeout(timeout_s)``, so 400 reads of 20 ms (8 s) failed the whole pass
    with "the registry cannot be read: no answer from the registry within 3.0 s" though
    no read took more than a few tens of milliseconds, and the targets file was never
    written (``--watch`` failing the same way for ever). Now the reads run in parallel,
    a bounded number at once, each bounded from its own start."""
    double = ConsulDouble()

    @web.middleware
    async def agent_rtt(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET":  # the reads; the test's own registrations go quickly
            await asyncio.sleep(0.02)
        return await handler(request)

    double.app.middlewares.append(agent_rtt)
    await double.start()
    out = tmp_path / "targets.json"
    try:
        async with aiohttp.ClientSession() as http:
            await _catalog_services(http, double, [f"svc{i:04d}" for i in range(400)])
        reg = ConsulRegistry(ConsulOptions(addr=double.addr))
        try:
            writer = TargetWriter(reg, out, keep_failing_s=300.0, timeout_s=3.0)
            written = await writer.once()
        finally:
            await reg.close()
    finally:
        await double.stop()
    assert written == 400
    assert out.read_text().count('"mesh_instance"') == 400


class _CountingRegistry:
    """A registry of ``n`` services whose watches and ``failing()`` reads each answer in
    ``delay_s`` (or never, with ``hang``), counting the reads in flight at once."""

    def __init__(self, n: int, delay_s: float, *, hang: bool = False) -> None:
        self.names = [f"svc{i:04d}" for i in range(n)]
        self.delay_s = delay_s
        self.hang = hang
        self.in_flight = 0
        self.most_in_flight = 0

    async def _read(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(3600 if self.hang else self.delay_s)
        finally:
            self.in_flight -= 1

    async def services(self) -> list[str]:
        return list(self.names)

    async def _watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        await self._read()
        yield frozenset({Instance(service=service, instance_id=f"{service}-1",
                                  host="127.0.0.1", port=20000)})
        await asyncio.sleep(3600)

    def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        return self._watch(service)

    async def failing(self, service: str) -> frozenset[Instance]:
        await self._read()
        return frozenset()

    async def close(self) -> None:
        pass


async def test_registry_reads_run_in_parallel_a_bounded_number_at_once() -> None:
    """The watches' first answers and the ``failing()`` reads of 300 services each
    taking 10 ms run in parallel (a pass takes a fraction of 300 x 10 ms), never more
    than ``REGISTRY_READS_AT_ONCE`` at a time (a Consul agent caps the connections of
    one client: ``limits.http_max_conns_per_client``, 200 by default)."""
    reg = _CountingRegistry(300, 0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    found = await _common.discover(reg, reg.names, 5.0)  # type: ignore[arg-type]
    failing = await _common.failing_instances(reg, reg.names, 5.0)  # type: ignore[arg-type]
    took = loop.time() - start
    assert all(v is not None and len(v) == 1 for v in found.values())
    assert failing == []
    assert 1 < reg.most_in_flight <= _common.REGISTRY_READS_AT_ONCE, reg.most_in_flight
    assert took < 0.5 * (2 * 300 * 0.01), f"600 reads of 10 ms took {took:.2f} s"


async def test_a_registry_that_stops_answering_fails_the_pass_in_about_one_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry of 500 services that lists them and then answers no read (a hung
    agent): ``services`` and ``prometheus-targets`` fail "the registry cannot be read"
    within a few ``--timeout-s`` (0.3 s here), not one timeout per batch of services
    (500 / ``REGISTRY_READS_AT_ONCE`` batches): once a read had no answer in time, the
    reads not started yet are not started."""
    hung: Any = _CountingRegistry(500, 0.0, hang=True)
    monkeypatch.setattr(services_cli, "open_registry", lambda uri: hung)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(SystemExit, match="the registry cannot be read"):
        await services_cli.collect("hung://", [], 0.3)
    writer = TargetWriter(hung, tmp_path / "t.json", keep_failing_s=0, timeout_s=0.3)
    with pytest.raises(MeshError, match="no answer from the registry"):
        await writer.once()
    took = loop.time() - start
    batches = -(-500 // _common.REGISTRY_READS_AT_ONCE)  # 16: 14 s without stopping
    assert took < 0.3 * batches, f"two passes took {took:.1f} s"
    assert not (tmp_path / "t.json").exists()


class _WatchAndFailing:
    """``registry`` with only the reads a registry must or may have (``services()``,
    ``watch()``, ``failing()``): what ``meshkit services`` reads a registry through
    when the registry has no ``snapshot()`` (one of another package)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    async def services(self) -> frozenset[str]:
        return frozenset(await self._registry.services())

    def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        return self._registry.watch(service)  # type: ignore[no-any-return]

    async def failing(self, service: str) -> frozenset[Instance]:
        return frozenset(await self._registry.failing(service))

    async def close(self) -> None:
        await self._registry.close()


async def _rows(monkeypatch: pytest.MonkeyPatch, registry: Any) -> list[Any]:
    """``meshkit services``' rows read through ``registry`` (closed after)."""
    monkeypatch.setattr(services_cli, "open_registry", lambda uri: registry)
    return await services_cli.collect("test://", [], 5.0)


async def test_services_reads_each_consul_service_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``meshkit services`` over a Consul agent with three services, one of them with a
    failing instance: one ``GET /v1/health/service/<name>`` per service. It sent two
    (the first answer of a watch, ``?passing``, then ``failing()``'s read of every
    entry, which holds the passing ones too), twice the load on the agent and two views
    of a service taken apart in time. The rows are those of the two reads."""
    double = ConsulDouble()
    await double.start()
    try:
        async with aiohttp.ClientSession() as http:
            await _catalog_services(http, double, ["svc0", "svc1", "svc2"], admin=False)
            async with http.put(f"{double.url}/v1/agent/service/register", json={
                    "ID": "svc1-dead", "Name": "svc1", "Address": "127.0.0.1", "Port": 9,
                    "Check": {"TTL": "30s"}}) as resp:  # critical: a TTL never passed
                assert resp.status == 200, await resp.text()
        old = await _rows(monkeypatch, _WatchAndFailing(
            ConsulRegistry(ConsulOptions(addr=double.addr))))
        double.requests.clear()
        rows = await _rows(monkeypatch, ConsulRegistry(ConsulOptions(addr=double.addr)))
        reads = collections.Counter(r.path for r in double.requests if r.method == "GET")
    finally:
        await double.stop()
    assert reads == {"/v1/catalog/services": 1, **{
        f"/v1/health/service/svc{i}": 1 for i in range(3)}}, reads
    assert rows == old
    assert [(r.instance_id, r.health) for r in rows] == [
        ("svc0-1", "-"), ("svc1-1", "-"), ("svc1-dead", "failing"), ("svc2-1", "-")]


async def test_services_reads_each_etcd_service_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``meshkit services`` over etcd, a service with a live instance and one whose owner
    died: one request for the service (a ``/kv/txn`` of its keys and last-seen records).
    It made three: the watch's range read, the watch stream it opened at once (to be
    cancelled) and ``failing()``'s txn. The rows are those of those reads."""
    from meshkit.discovery import EtcdOptions, EtcdRegistry
    from tests.support.etcd import EtcdCluster, require_etcd_binary

    cluster = EtcdCluster(require_etcd_binary(), tmp_path / "etcd", size=1)
    await cluster.start()
    opts = EtcdOptions(endpoints=tuple(cluster.endpoints), ttl_s=1, request_timeout_s=1.0,
                       operation_timeout_s=2.0)
    owner, dying = EtcdRegistry(opts), EtcdRegistry(opts)
    try:
        await owner.register(Instance(service="orderd", instance_id="orderd-1",
                                      host="127.0.0.1", port=20001))
        dead = Instance(service="orderd", instance_id="orderd-dead", host="127.0.0.1", port=9)
        await dying.register(dead)
        await dying.close()  # no deregistration: its key goes with its lease
        for _ in range(100):
            if await owner.failing("orderd") == {dead}:
                break
            await asyncio.sleep(0.1)
        old = await _rows(monkeypatch, _WatchAndFailing(EtcdRegistry(opts)))
        reader = EtcdRegistry(opts)
        paths: list[str] = []
        post = reader._post

        async def counted(path: str, *args: Any, **kwargs: Any) -> Any:
            paths.append(path)
            return await post(path, *args, **kwargs)

        monkeypatch.setattr(reader, "_post", counted)
        real_stream = reader._stream

        async def stream(*args: Any) -> None:
            paths.append("/watch")
            await real_stream(*args)

        monkeypatch.setattr(reader, "_stream", stream)
        rows = await _rows(monkeypatch, reader)
    finally:
        await owner.close()
        cluster.close()
    assert paths == ["/kv/txn", "/kv/txn"], paths  # services(), then the service's read
    assert rows == old
    assert [(r.instance_id, r.health) for r in rows] == [
        ("orderd-1", "-"), ("orderd-dead", "failing")]


async def _local_with_a_dead_and_a_gone_instance(reg_dir: Path) -> None:
    """A local registry at ``reg_dir`` with three live services (60 s TTL), ``svc1`` also
    with an instance whose owner died (its heartbeat lapsed, no deregistration) and
    ``svc2`` with one that left (deregistered, its tombstone kept): what ``meshkit
    services`` lists as ``failing``, and what it leaves out."""
    await _register_local(reg_dir, [
        Instance(service=f"svc{i}", instance_id=f"svc{i}-1", host="127.0.0.1",
                 port=20000 + i) for i in range(3)])
    dying = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=0.3))
    dead = Instance(service="svc1", instance_id="svc1-dead", host="127.0.0.1", port=9)
    gone = Instance(service="svc2", instance_id="svc2-gone", host="127.0.0.1", port=9)
    try:
        await dying.register(dead)
        await dying.register(gone)
        await dying.deregister(gone)
    finally:
        await dying.close()  # the heartbeat stops, as at a SIGKILL
    reader = LocalRegistry(LocalOptions(path=reg_dir))
    try:
        for _ in range(100):
            if await reader.failing("svc1") == {dead}:
                break
            await asyncio.sleep(0.05)
        assert await reader.failing("svc1") == {dead}
    finally:
        await reader.close()


async def test_services_reads_each_local_service_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``meshkit services`` over a local registry (three services, one with an instance
    whose owner died, one with a deregistered one): one read of each service's rows. It
    made two (a watch's first poll, then ``failing()``'s read of the same rows), two
    views of a service taken apart in time. It writes nothing (no write probe), and the
    rows are those of the two reads."""
    reg_dir = tmp_path / "registry"
    await _local_with_a_dead_and_a_gone_instance(reg_dir)
    old = await _rows(monkeypatch, _WatchAndFailing(LocalRegistry(LocalOptions(path=reg_dir))))
    reader = LocalRegistry(LocalOptions(path=reg_dir))
    reads: collections.Counter[str] = collections.Counter()
    writes: list[str] = []
    real_read, real_probe = reader._read, reader._probe

    def counted_read(conn: Any, service: str) -> Any:
        reads[service] += 1
        return real_read(conn, service)

    def counted_probe(conn: Any) -> None:
        writes.append("probe")
        real_probe(conn)

    monkeypatch.setattr(reader, "_read", counted_read)
    monkeypatch.setattr(reader, "_probe", counted_probe)
    rows = await _rows(monkeypatch, reader)
    assert (reads, writes) == ({"svc0": 1, "svc1": 1, "svc2": 1}, []), (reads, writes)
    assert rows == old
    assert [(r.instance_id, r.health) for r in rows] == [
        ("svc0-1", "-"), ("svc1-1", "-"), ("svc1-dead", "failing"), ("svc2-1", "-")]


async def _local_in_a_write_outage(reg_dir: Path) -> Instance:
    """A local registry at ``reg_dir`` in a shared write outage (a full disk, a read-only
    file system: nobody has written since): instance ``a``'s last heartbeat was the last
    write, and its expiry has passed since. Its writer's clock was 10 s back, so the expiry
    and the last write are in the past, the expiry after the last write; no boot stamp, so
    every reader judges on the wall clock. A new watch keeps ``a`` (module docstring of
    discovery/_local.py, "Writes fail"): every client of the mesh still calls it."""
    owner = LocalRegistry(LocalOptions(path=reg_dir, ttl_s=3, boot_clock=None,
                                       clock=lambda: time.time() - 10))
    a = Instance(service="svc", instance_id="a", host="127.0.0.1", port=9,
                 meta={"admin_port": "9"})
    try:
        await owner.register(a)
    finally:
        await owner.close()
    return a


def _cannot_write(monkeypatch: pytest.MonkeyPatch, reg: LocalRegistry) -> LocalRegistry:
    """``reg``, whose writes (its write probe) fail as on a full disk."""
    def probe(conn: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(reg, "_probe", probe)
    return reg


async def test_services_rows_during_a_local_write_outage_are_those_of_the_watch_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """During a write outage of a local registry, ``meshkit services`` lists the instance
    a new watch keeps (clients still call it) as a watch's first answer and ``failing()``
    listed it: probed (here ``unreachable``) and ``failing``. ``snapshot()`` gave
    ``instances()``'s view, so it was listed only as ``failing`` ("died or hung; clients
    no longer see them"): an operator diagnosing the outage was told the fleet was down
    while it served. Now ``snapshot().live`` is a new watch's first set: the rows are the
    watch path's."""
    reg_dir = tmp_path / "registry"
    await _local_in_a_write_outage(reg_dir)
    old = await _rows(monkeypatch, _WatchAndFailing(
        _cannot_write(monkeypatch, LocalRegistry(LocalOptions(path=reg_dir)))))
    assert [r.health for r in old if r.instance_id == "a"] == ["unreachable", "failing"], \
        old  # the setup holds: the watch keeps a
    rows = await _rows(monkeypatch, _cannot_write(
        monkeypatch, LocalRegistry(LocalOptions(path=reg_dir))))
    assert rows == old, (
        f"during a write outage the watch path listed "
        f"{[(r.instance_id, r.health) for r in old]} (a kept by every watch); snapshot() "
        f"lists {[(r.instance_id, r.health) for r in rows]}")


async def test_prometheus_targets_during_a_local_write_outage_are_those_of_the_watch_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """During a write outage of a local registry, ``prometheus-targets`` labels the
    instance a new watch keeps ``passing``, as through a watch's first answer and
    ``failing()`` (a failing id that is live is no failing target); through
    ``snapshot()`` it was relabelled ``failing``. The targets file is the watch path's."""
    reg_dir = tmp_path / "registry"
    await _local_in_a_write_outage(reg_dir)
    old_out, out = tmp_path / "old.json", tmp_path / "targets.json"
    old_reg = _WatchAndFailing(_cannot_write(monkeypatch, LocalRegistry(LocalOptions(
        path=reg_dir))))
    reg = _cannot_write(monkeypatch, LocalRegistry(LocalOptions(path=reg_dir)))
    try:
        await TargetWriter(old_reg, old_out, keep_failing_s=300.0,  # type: ignore[arg-type]
                           timeout_s=5.0).once()
        await TargetWriter(reg, out, keep_failing_s=300.0, timeout_s=5.0).once()
    finally:
        await old_reg.close()
        await reg.close()
    health = [(g["labels"]["mesh_instance"], g["labels"]["__meta_meshkit_health"])
              for g in json.loads(old_out.read_text())]
    assert health == [("a", "passing")], health  # the setup holds: the watch keeps a
    assert out.read_text() == old_out.read_text()


async def test_prometheus_targets_reads_each_service_once_per_pass(tmp_path: Path) -> None:
    """``prometheus-targets`` over a Consul agent with three services, one with a failing
    instance: one ``GET /v1/health/service/<name>`` per service in each pass (each
    ``--watch`` interval). It sent two, as ``meshkit services`` did (a watch's first
    answer, then ``failing()``'s read), on every pass. The targets file is the one the
    two reads wrote."""
    double = ConsulDouble()
    await double.start()
    try:
        async with aiohttp.ClientSession() as http:
            await _catalog_services(http, double, ["svc0", "svc1", "svc2"])
            async with http.put(f"{double.url}/v1/agent/service/register", json={
                    "ID": "svc1-dead", "Name": "svc1", "Address": "127.0.0.1", "Port": 9,
                    "Meta": {"admin_port": "9"},
                    "Check": {"TTL": "30s"}}) as resp:  # critical: a TTL never passed
                assert resp.status == 200, await resp.text()
        old_out, out = tmp_path / "old.json", tmp_path / "targets.json"
        old_reg = _WatchAndFailing(ConsulRegistry(ConsulOptions(addr=double.addr)))
        try:
            await TargetWriter(old_reg, old_out, keep_failing_s=300.0,  # type: ignore[arg-type]
                               timeout_s=5.0).once()
        finally:
            await old_reg.close()
        reg = ConsulRegistry(ConsulOptions(addr=double.addr))
        passes = []
        try:
            writer = TargetWriter(reg, out, keep_failing_s=300.0, timeout_s=5.0)
            for _ in range(2):  # two passes of --watch
                double.requests.clear()
                await writer.once()
                passes.append(collections.Counter(
                    r.path for r in double.requests if r.method == "GET"))
        finally:
            await reg.close()
    finally:
        await double.stop()
    once = {"/v1/catalog/services": 1, **{f"/v1/health/service/svc{i}": 1 for i in range(3)}}
    assert passes == [once, once], passes
    assert out.read_text() == old_out.read_text()
    assert [(g["labels"]["mesh_instance"], g["labels"]["__meta_meshkit_health"])
            for g in json.loads(out.read_text())] == [
        ("svc0-1", "passing"), ("svc1-1", "passing"), ("svc1-dead", "failing"),
        ("svc2-1", "passing")]
