"""Tests of ConsulRegistry against the Consul agent test double (consul_double.py).

The ``check_*`` coroutines observe the agent only through its HTTP API, so
``test_consul_real.py`` runs the very same checks against a real agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import random
import re
import socket
import ssl
import textwrap
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import aiohttp.resolver
import consul
import grpc
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

import meshkit
import meshkit.discovery._resolver as _resolver
from meshkit.discovery._consul import ConsulOptions, ConsulRegistry, _TokenBucket
from meshkit.discovery._types import Instance, Registry, RegistryStatus
from meshkit.errors import ConfigError, RegistryError
from tests.discovery._forking import (
    check_connections_after_close,
    check_lookup_after_fork,
    check_master_undisturbed,
    check_workers_jitter,
    connections_after_close_script,
    forked,
    lookup_after_fork_script,
    parent_after_fork_script,
    workers_jitter_script,
)
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.conftest import SlowDns
from tests.discovery.consul_double import ConsulDouble
from tests.support.echo import add_echo
from tests.support.loops import LoopThread
from tests.support.loops import run as run_loop
from tests.support.wait import until

_T = TypeVar("_T")

pytestmark = pytest.mark.timeout(15)

# Small times so the whole file runs in seconds against the double.
FAST: dict[str, Any] = {
    "ttl_s": 0.6,
    "check_interval_s": 0.2,
    "deregister_critical_after_s": 60.0,
    "wait_s": 0.5,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.04,
    "request_timeout_s": 2.0,
    # the watch's rate limit (default one query a second after a burst of 2) would space a
    # test's third and later changes a second apart; the tests of the limit set their own
    "watch_query_interval_s": 0.1,
}


# -- helpers shared with test_consul_real.py ------------------------------------------------
# unique_service, make_instance and Collector come from the conformance suite.


def _ssl_for(opts: ConsulOptions) -> ssl.SSLContext | bool:
    if opts.effective_scheme != "https":
        return True
    ctx = ssl.create_default_context(cafile=opts.ca_file)
    if opts.cert_file:
        ctx.load_cert_chain(opts.cert_file, opts.key_file)
    if not opts.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def passing_ids(opts: ConsulOptions, service: str) -> set[str]:
    """IDs of the passing instances of ``service``, read straight from the agent."""
    headers = {"X-Consul-Token": opts.token} if opts.token else {}
    async with aiohttp.ClientSession() as session, session.get(
        f"{opts.base_url}/v1/health/service/{service}", params={"passing": "1"},
        headers=headers, ssl=_ssl_for(opts),
    ) as resp:
        resp.raise_for_status()
        return {e["Service"]["ID"] for e in await resp.json()}


async def check_register_watch_deregister(opts: ConsulOptions) -> None:
    """Watch yields [] first, then each add/remove; deregister removes; close ends the watch."""
    service = unique_service()
    a, b = make_instance(service, 1), make_instance(service, 2)
    reg = ConsulRegistry(opts)
    watcher = Collector(reg, service)
    try:
        assert await watcher.next() == frozenset()
        await reg.register(a)
        assert await watcher.next() == {a}
        got = next(iter(await passing_ids(opts, service)))
        assert got == a.instance_id
        await reg.register(b)
        assert await watcher.next() == {a, b}
        await reg.deregister(a)
        assert await watcher.next() == {b}
        assert await passing_ids(opts, service) == {b.instance_id}
        await reg.deregister(b)
        assert await watcher.next() == frozenset()
        await reg.deregister(b)  # unknown now: ignored
    finally:
        await reg.close()
    async with asyncio.timeout(3):
        await watcher.ended.wait()  # close() ends the iterator
    await watcher.stop()


async def check_heartbeat(opts: ConsulOptions) -> None:
    """A TTL instance stays passing across several TTLs while heartbeating, then lapses."""
    service = unique_service()
    a = make_instance(service, 1)
    reg = ConsulRegistry(opts)
    try:
        await reg.register(a)
        end = time.monotonic() + 3 * opts.ttl_s
        while time.monotonic() < end:  # sample an invariant over three TTLs
            assert await passing_ids(opts, service) == {a.instance_id}
            await asyncio.sleep(opts.ttl_s / 5)
    finally:
        await reg.close()  # stops the heartbeat, does not deregister

    async def lapsed() -> bool:
        return not await passing_ids(opts, service)

    await until(lapsed, timeout_s=3 * opts.ttl_s + 3, what="TTL check to lapse")
    cleanup = ConsulRegistry(opts)
    try:
        await cleanup.deregister(a)
    finally:
        await cleanup.close()


async def service_checks(opts: ConsulOptions, service: str) -> dict[str, dict[str, str]]:
    """``{instance_id: {CheckID: Status}}`` of every instance of ``service``, passing or not
    (its service checks only, not the node's ``serfHealth``), read straight from the agent."""
    headers = {"X-Consul-Token": opts.token} if opts.token else {}
    async with aiohttp.ClientSession() as session, session.get(
        f"{opts.base_url}/v1/health/service/{service}", headers=headers, ssl=_ssl_for(opts),
    ) as resp:
        resp.raise_for_status()
        return {e["Service"]["ID"]: {c["CheckID"]: c["Status"] for c in e["Checks"]
                                     if c.get("ServiceID")}
                for e in await resp.json()}


async def check_register_again_of_a_critical_id(opts: ConsulOptions) -> None:
    """An instance id the agent still holds with a critical TTL check (its process crashed
    and restarted before the agent reaped it: serve()'s default id
    ``<service>-<hostname>-<pid>`` is the same again in a container, pid 1) is passing, in
    every ``?passing`` watch, as soon as register() returns, as it documents; and the agent
    holds only the new registration's check, the crashed one's is gone."""
    service = unique_service()
    a = make_instance(service, 1)
    crashed = ConsulRegistry(opts)
    await crashed.register(a)
    await crashed.close()  # the process dies: no deregistration, the heartbeat stops

    async def lapsed() -> bool:
        statuses = (await service_checks(opts, service)).get(a.instance_id, {})
        return bool(statuses) and set(statuses.values()) == {"critical"}

    await until(lapsed, timeout_s=3 * opts.ttl_s + 3, what="TTL check to lapse")
    # the first heartbeat of the restarted process comes ttl_s * 10 / 3 later, well after
    # the reads below
    restarted = ConsulRegistry(dataclasses.replace(opts, ttl_s=opts.ttl_s * 10))
    try:
        await restarted.register(a)
        assert await passing_ids(opts, service) == {a.instance_id}, (
            f"register() returned but the instance is not passing: "
            f"{await service_checks(opts, service)}")
        checks = (await service_checks(opts, service))[a.instance_id]
        assert list(checks.values()) == ["passing"], checks  # the crashed one's check is gone
    finally:
        try:
            await restarted.deregister(a)
        finally:
            await restarted.close()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


class FastSleep:
    """Injected backoff sleep: records each delay and sleeps only 10 ms."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.01)


@pytest.fixture
async def make_registry(
    double: ConsulDouble,
) -> AsyncIterator[Callable[..., ConsulRegistry]]:
    """Factory of registries on the double with FAST options (closed at teardown)."""
    made: list[ConsulRegistry] = []

    def make(sleep: FastSleep | None = None, **overrides: Any) -> ConsulRegistry:
        opts = ConsulOptions(**{"addr": double.addr, **FAST, **overrides})
        reg = ConsulRegistry(opts, rng=random.Random(7), sleep=sleep or FastSleep())
        made.append(reg)
        return reg

    yield make
    for reg in made:
        await reg.close()


def _opts(double: ConsulDouble, **overrides: Any) -> ConsulOptions:
    return ConsulOptions(**{"addr": double.addr, **FAST, **overrides})


class StallingProxy:
    """A loopback TCP proxy in front of the double that decides per request (each chunk a
    client sends): ``rule(chunk)`` returns ``"pass"`` (forward it) or ``"stall"`` (never
    forward it and never answer: the connection stays open and silent, as one whose path
    died without a reset, a hung agent thread, a black-holed NAT entry)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.rule: Callable[[bytes], str] = lambda chunk: "pass"
        self.stalled: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        back: asyncio.Task[None] | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(up_writer)
            back = asyncio.create_task(self._pump(up_reader, writer))
            self._tasks.add(back)
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if self.rule(chunk) == "stall":
                    self.stalled.append(chunk)
                    back.cancel()
                    await asyncio.get_running_loop().create_future()  # silent forever
                up_writer.write(chunk)
                await up_writer.drain()
            await asyncio.wait({back}, timeout=1.0)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)
            if back is not None:
                back.cancel()
                self._tasks.discard(back)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.transport.abort()


def _keepers() -> list[asyncio.Task[Any]]:
    """The keep-alive tasks of Consul registries still running in this loop."""
    return [t for t in asyncio.all_tasks()
            if t.get_name().startswith("meshkit-consul-keeper-") and not t.done()]


# -- the shared checks, against the double ------------------------------------------------------
async def test_register_watch_deregister(double: ConsulDouble) -> None:
    """Watch yields the empty set, then each registration and deregistration, and ends on close."""
    await check_register_watch_deregister(_opts(double))


async def test_heartbeat_keeps_ttl_instance_passing(double: ConsulDouble) -> None:
    """The heartbeat passes the TTL check every ttl/3 so the check never turns critical."""
    await check_heartbeat(_opts(double))
    check_ids = [cid for cid in double.passes if ":ttl:" in cid]
    assert len(check_ids) == 1
    assert double.passes[check_ids[0]] >= 6  # about 3 TTLs at ttl/3
    assert double.status_history.count((check_ids[0], "critical")) == 1  # only after close()


@pytest.mark.timeout(30)
async def test_one_stalled_ttl_pass_drops_a_live_instance_from_discovery() -> None:
    """A single heartbeat (``PUT /v1/agent/check/pass``) that is never answered (one
    silently dead pooled connection, a hung agent thread) made a healthy, heartbeating
    instance's TTL check go critical, so it left every watch (``?passing``) and every
    balanced channel, until the next heartbeat.

    The keeper slept ``ttl_s / 3``, then waited up to ``request_timeout_s`` for the pass,
    then slept ``ttl_s / 3`` again before the next try: with the defaults (ttl 15 s,
    request_timeout 10 s) one unanswered pass meant 5 + 10 + 5 = 20 s between passes on
    the agent, past the 15 s TTL (here the defaults scaled by 3/25: ttl 1.8 s, timeout
    1.2 s, backoff base 0.3 s; 0.6 + 1.2 + 0.6 = 2.4 s between passes).
    README: the TTL is "renewed every ``ttl_s / 3``", and a registry fault is not "every
    instance left"; Consul's TTL check contract is that the application updates the check
    *within* the TTL. Now passes are due ``ttl_s / 3`` after the last one that got
    through, each is bounded by ``ttl_s / 3`` and by what is left of the TTL, and a failed
    one is retried after a short backoff: one lost request no longer costs a live
    instance its health."""
    async with ConsulDouble() as double:
        proxy = StallingProxy(double.port)
        await proxy.start()
        reg = ConsulRegistry(ConsulOptions(addr=proxy.addr, ttl_s=1.8, request_timeout_s=1.2,
                                           backoff_base_s=0.3, wait_s=1.0,
                                           deregister_critical_after_s=60.0))
        try:
            a = make_instance("orderd", 1)
            await reg.register(a)
            first = {"done": False}

            def stall_first_pass(chunk: bytes) -> str:
                if b"/v1/agent/check/pass/" in chunk and not first["done"]:
                    first["done"] = True
                    return "stall"
                return "pass"

            proxy.rule = stall_first_pass
            await until(lambda: bool(proxy.stalled), timeout_s=5.0,
                        what="the first TTL pass to be stalled")
            stalled_at = time.monotonic()
            # the stalled pass is given up; observe past the TTL and a later pass
            await until(lambda: double.service_passes["orderd-1"] >= 1
                        and time.monotonic() - stalled_at > 2.1, timeout_s=8.0,
                        what="a later TTL pass")
            went_critical = [s for _, s in double.status_history if s == "critical"]
            assert not went_critical, (
                "one unanswered TTL pass let the check of a live, heartbeating instance go "
                f"critical (status history: {double.status_history}): it left discovery")
        finally:
            await reg.close()
            await proxy.close()


async def test_a_failed_heartbeat_is_retried_before_the_ttl_runs_out(
    double: ConsulDouble, make_registry: Any
) -> None:
    """A heartbeat that fails at once (the agent answers 500, a reset connection) is
    retried after a short backoff, not a whole ``ttl_s / 3`` later, so two failures in a
    row no longer use up the TTL: the check stays passing through a short agent hiccup."""
    reg = make_registry(ttl_s=1.5)  # a heartbeat every 0.5 s
    await reg.register(make_instance("orderd", 1))
    check = double.service_check("orderd-1")
    assert check is not None

    def passes_sent() -> int:
        return sum(1 for r in double.requests if r.path == f"/v1/agent/check/pass/{check.check_id}")

    await until(lambda: passes_sent() >= 1, timeout_s=3.0, what="a first heartbeat")
    sent = passes_sent()
    double.set_down(True)
    await until(lambda: reg.status().writable is False, timeout_s=3.0,
                what="a failed heartbeat")
    await asyncio.sleep(0.4)  # shorter than ttl_s / 3: the keeper goes on trying
    double.set_down(False)
    await until(lambda: reg.status().writable is True, timeout_s=1.5,
                what="a retried heartbeat soon after the agent answers again")
    assert passes_sent() >= sent + 3  # retried within one interval
    assert not any(s == "critical" for _, s in double.status_history)


@pytest.mark.timeout(60)
async def test_the_ttl_check_of_a_busy_process_survives_a_reconnect_by_host_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Load must not mark an instance that is merely busy critical. A registry speaking
    to its agent by host name (``CONSUL_HTTP_ADDR=consul-agent:8500``, a Kubernetes
    service's name; ``localhost`` here) whose pooled connections are gone
    (the agent restarted, an idle timeout) connects again, and aiohttp's default resolver
    (py-consul's connector has no other) ran the name lookup with ``loop.getaddrinfo``,
    in the loop's default executor. An application that fills that executor with its own
    blocking work (``asyncio.to_thread``, ``run_in_executor(None, ...)``) left every TTL
    pass waiting behind it: each timed out, the check went critical and the live instance
    dropped out of every watch (then was reaped after ``deregister_critical_after_s``).
    Now the registry looks the name up on threads of its own (``meshkit-consul-dns``),
    released by close(). aiohttp's DNS cache (10 s) is turned off here, as it will have
    lapsed by the time a long-lived process reconnects. A control without the load (the
    same reconnect) stays passing too."""
    original_init = aiohttp.TCPConnector.__init__

    def no_dns_cache(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["use_dns_cache"] = False  # stands for the 10 s cache having lapsed
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.TCPConnector, "__init__", no_dns_cache)
    # a pass every ttl_s / 3, each bounded by that; critical 3 s unpassed. The restart
    # (a pass in flight held up to the agent's 0.2 s shutdown, refused retries, the new
    # listener) takes well under 1 s, but with ttl_s = 1 a loaded CI box (two workers on two
    # cores) once stretched it past the TTL with the lookups on their own threads; blocked
    # lookups (the fault) wait 30 s, far past 3 s either way.
    ttl_s = 3.0

    async def run(loaded: bool) -> tuple[list[str], int, set[str]]:
        release = threading.Event()
        blocked: list[asyncio.Future[bool]] = []
        async with ConsulDouble() as double:
            reg = ConsulRegistry(ConsulOptions(**{**FAST, "addr": f"localhost:{double.port}",
                                                  "ttl_s": ttl_s}))
            try:
                a = make_instance(unique_service(), 1)
                await reg.register(a)
                if loaded:  # more blocking jobs than the default executor has threads
                    loop = asyncio.get_running_loop()
                    blocked = [loop.run_in_executor(None, release.wait, 30.0)
                               for _ in range(64)]
                # the pooled connections are gone: the next pass connects again
                await double.stop()
                await asyncio.sleep(0.1)
                await double.start()
                passes = double.service_passes[a.instance_id]
                # Until three passes got through the new connection (the reconnect and its
                # lookup are behind them: the check is freshly passing, the reaper looks
                # every 20 ms) or the check went critical (a lookup stuck behind the jobs:
                # no pass gets through, critical ttl_s after the last one before the stop).
                with contextlib.suppress(AssertionError):  # judged below
                    await until(lambda: double.service_passes[a.instance_id] - passes >= 3
                                or any(s == "critical" for _, s in double.status_history),
                                timeout_s=2 * ttl_s + 1.0)
                statuses = [s for _, s in double.status_history]
                passes = double.service_passes[a.instance_id] - passes
                names = {t.name for t in reg._dns.pool._threads}
                return statuses, passes, names
            finally:
                release.set()
                await asyncio.gather(*blocked, return_exceptions=True)
                await reg.close()
                threads = list(reg._dns.pool._threads)
                await until(lambda: not any(t.is_alive() for t in threads),
                            what="the lookup threads to end after close()")

    # the control and the loaded run side by side (each its own agent and registry), as
    # each mostly waits for its passes for up to 2 * ttl_s + 1: jobs blocking the loop's
    # default executor would hold up both runs' name lookups, so the loaded run is judged
    # first
    (c_statuses, c_passes, _), (statuses, passes, names) = await asyncio.gather(
        run(loaded=False), run(loaded=True))
    assert "critical" not in statuses and passes >= 3, (
        f"the TTL check of a live, busy process went critical ({statuses}, {passes} "
        "passes through) after a reconnect: its heartbeats' name lookup waited behind the "
        "default executor's blocking jobs (the control without load beside it: "
        f"{c_statuses}, {c_passes} passes)")
    assert names and all(n.startswith("meshkit-consul-dns") for n in names), names
    assert "critical" not in c_statuses and c_passes >= 3, (c_statuses, c_passes)  # alone


async def test_an_ip_address_agent_starts_no_lookup_thread(
        double: ConsulDouble, make_registry: Any) -> None:
    """An agent given by IP address (``127.0.0.1:<port>``, the default) costs no name
    lookup: aiohttp connects to the address as is, so the registry's lookup pool
    (``meshkit-consul-dns``) never starts a thread, through register, a watch and
    heartbeats, and close() leaves none."""
    reg = make_registry()
    a = make_instance(unique_service(), 1)
    await reg.register(a)
    watcher = Collector(reg, a.service)
    try:
        await until(lambda: double.service_passes[a.instance_id] >= 2, timeout_s=5.0,
                    what="two heartbeats")
        assert await watcher.next() == {a}
    finally:
        await watcher.stop()
    assert not reg._dns.pool._threads
    await reg.close()
    assert not reg._dns.pool._threads


async def test_a_localhost_agent_is_reached_where_getaddrinfo_refuses_ai_addrconfig(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows without an active network refuses ``getaddrinfo('localhost', AF_UNSPEC,
    AI_ADDRCONFIG)`` (WSAHOST_NOT_FOUND, 11004; aio-libs/aiohttp#5357), and aiohttp's
    ThreadedResolver (py-consul's connector's before the registry had threads of its own)
    retries ``localhost`` there without the flag (aiohttp 3.14, ``_is_windows_localhost``).
    The registry's lookup, documented to give addresses "as aiohttp's ThreadedResolver
    gives them", had no such retry: an agent at ``CONSUL_HTTP_ADDR=localhost:8500`` on such
    a box failed every request with ClientConnectorDNSError. Emulated here on Linux:
    getaddrinfo refuses as Windows does, and the platform flags say Windows. Another name
    is not retried (the resolver's error stands)."""
    real = socket.getaddrinfo

    def windows_getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                            proto: int = 0, flags: int = 0) -> Any:
        if (isinstance(host, str) and host.rstrip(".").casefold() == "localhost"
                and family == socket.AF_UNSPEC and flags & socket.AI_ADDRCONFIG):
            raise socket.gaierror(11004, "getaddrinfo failed")
        return real(host, port, family, type, proto, flags)

    async with ConsulDouble() as double:
        monkeypatch.setattr(socket, "getaddrinfo", windows_getaddrinfo)
        monkeypatch.setattr(aiohttp.resolver, "_IS_WINDOWS", True)
        monkeypatch.setattr(_resolver, "_IS_WINDOWS", True, raising=False)
        # the control: aiohttp's own resolver (what the connector had before) copes
        found = await aiohttp.resolver.ThreadedResolver().resolve(
            "localhost", double.port, socket.AF_UNSPEC)
        assert any(r["host"] == "127.0.0.1" for r in found), found
        reg = ConsulRegistry(ConsulOptions(**{**FAST, "addr": f"localhost:{double.port}"}))
        try:
            try:
                await reg.register(make_instance(unique_service(), 1))
            except RegistryError as exc:
                pytest.fail(f"an agent at localhost is unreachable where aiohttp's resolver "
                            f"reached it: {exc}")
        finally:
            await reg.close()
        # only localhost is retried without the flag, as aiohttp does
        with pytest.raises(socket.gaierror):
            _resolver._lookup("localhost.test", double.port, socket.AF_UNSPEC)


async def test_a_plain_http_agent_costs_no_tls_context(
        double: ConsulDouble, make_registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client of a plain ``http`` agent (the default, ``127.0.0.1:8500``) built a TLS
    context all the same (``ssl.create_default_context()``, which loads the system CAs:
    20-50 ms of the event loop, once per loop) that aiohttp never used. Now only an
    ``https`` agent's client builds one (test_mutual_tls_to_agent: it is still used)."""
    built: list[object] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    reg = make_registry()
    await reg.register(make_instance(unique_service(), 1))
    assert await reg.services()
    assert built == [], f"{len(built)} TLS context(s) built for an http agent"


# -- registration --------------------------------------------------------------------------------
async def test_register_payload_ttl(double: ConsulDouble, make_registry: Any) -> None:
    """The TTL registration carries every Instance field and a TTL check with deregistration."""
    reg = make_registry(ttl_s=15.0, deregister_critical_after_s=90.0)
    a = make_instance("orderd", 3)
    await reg.register(a)
    put = [r for r in double.requests if r.path == "/v1/agent/service/register"][-1]
    assert put.method == "PUT"
    assert put.query == {"replace-existing-checks": "true"}
    check_id = put.body["Checks"][0]["CheckID"]
    assert re.fullmatch(r"service:orderd-3:ttl:[0-9a-f]{8}", check_id), check_id
    assert put.body == {
        "ID": "orderd-3", "Name": "orderd", "Address": "127.0.0.1", "Port": 41003,
        "Tags": ["v2", "n3"], "Meta": {"zone": "a", "n": "3"},
        "Weights": {"Passing": 3, "Warning": 1},
        "Checks": [{
            "CheckID": check_id, "Name": "meshkit heartbeat of orderd-3",
            "TTL": "15s", "Status": "passing", "DeregisterCriticalServiceAfter": "90s",
            # the agent's answers tell no TTL: other processes' watches read it here
            "Notes": "meshkit heartbeat, TTL 15s",
        }],
    }
    assert double.services["orderd-3"].checks[check_id].status == "passing"


async def test_each_registration_has_check_ids_new_to_the_agent(
    double: ConsulDouble, make_registry: Any
) -> None:
    """register() of an id already registered gives its checks CheckIDs of their own (the
    agent would keep the status of a CheckID it holds, ignoring the new Status), replaces
    the previous ones (replace-existing-checks) and the heartbeat passes the new one."""
    reg = make_registry(check="both", ttl_s=0.6, check_interval_s=30.0)
    await reg.register(make_instance("orderd", 1))
    first = {c["CheckID"] for c in double.registrations[-1]["Checks"]}
    await reg.register(make_instance("orderd", 1, weight=5))
    second = {c["CheckID"] for c in double.registrations[-1]["Checks"]}
    assert len(first) == len(second) == 3 and not first & second
    assert set(double.services["orderd-1"].checks) == second
    old_ttl_id = next(cid for cid in first if ":ttl:" in cid)
    old_passes = double.passes[old_ttl_id]
    ttl_id = next(cid for cid in second if ":ttl:" in cid)
    await until(lambda: double.passes[ttl_id] >= 2, what="heartbeats of the new check")
    assert double.passes[old_ttl_id] == old_passes  # the old check is no longer passed
    assert len(double.registrations) == 2 and reg.status().reopened == 0
    await reg.deregister(make_instance("orderd", 1))
    assert "orderd-1" not in double.services


class _SlowPassDouble(ConsulDouble):
    """The double with TTL passes held ``pass_delay_s`` before they are applied."""

    pass_delay_s = 0.0

    async def _check_pass(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.pass_delay_s)
        return await super()._check_pass(request)


async def test_a_heartbeat_crossing_a_register_is_no_lost_instance() -> None:
    """A heartbeat sent for the previous registration's TTL check just before register()
    replaced it gets 404 (the CheckID is gone): the keeper takes that for a registration
    superseded, not for an agent that forgot the instance (which it would register again,
    critical, logging a warning and counting status().reopened)."""
    async with _SlowPassDouble() as double:
        reg = ConsulRegistry(_opts(double, ttl_s=0.6), sleep=FastSleep())
        try:
            await reg.register(make_instance("orderd", 1))
            first = double.service_check("orderd-1")
            assert first is not None
            double.pass_delay_s = 0.5

            def passes_sent() -> int:
                return sum(1 for r in double.requests
                           if r.path == f"/v1/agent/check/pass/{first.check_id}")

            sent = passes_sent()
            with capture_logs() as logs:
                await until(lambda: passes_sent() > sent, what="a heartbeat in flight")
                await reg.register(make_instance("orderd", 1, weight=5))  # before it lands
                second = double.service_check("orderd-1")
                assert second is not None and second.check_id != first.check_id
                await until(lambda: double.passes[second.check_id] >= 1, timeout_s=5.0,
                            what="a heartbeat of the new check")
            assert len(double.registrations) == 2, double.registrations
            assert reg.status().reopened == 0
            assert not [e for e in logs if "forgot" in e["event"]], logs
        finally:
            await reg.close()


@pytest.mark.parametrize("kind", ["grpc", "both"])
async def test_register_payload_grpc(double: ConsulDouble, make_registry: Any, kind: str) -> None:
    """check=grpc (or both) adds a GRPC check on host:port/service with TLS flag, interval
    and an initial passing status, and one on host:port (the whole server, "") after it."""
    reg = make_registry(check=kind, check_interval_s=5.0, grpc_use_tls=True,
                        deregister_critical_after_s=60.0)
    await reg.register(make_instance("orderd", 1))
    checks = double.registrations[-1]["Checks"]
    whole = checks.pop()
    assert whole["GRPC"] == "127.0.0.1:41001"
    assert re.fullmatch(r"service:orderd-1:grpc-server:[0-9a-f]{8}", whole["CheckID"])
    check_id = checks[-1]["CheckID"]
    assert whole["CheckID"].rsplit(":", 1)[1] == check_id.rsplit(":", 1)[1]
    assert re.fullmatch(r"service:orderd-1:grpc:[0-9a-f]{8}", check_id), check_id
    grpc_check = {
        "CheckID": check_id, "Name": "gRPC health of orderd-1",
        "GRPC": "127.0.0.1:41001/orderd", "GRPCUseTLS": True, "Interval": "5s",
        "Timeout": "2s", "Status": "passing", "DeregisterCriticalServiceAfter": "60s",
    }
    if kind == "grpc":
        assert checks == [grpc_check]
    else:
        assert [c.get("TTL") for c in checks] == ["600ms", None]
        assert checks[1] == grpc_check


async def test_register_payload_of_a_zoned_ipv6_host(double: ConsulDouble,
                                                      make_registry: Any) -> None:
    """An instance on a zoned IPv6 address (``fe80::1%eth0``) registers its ``Address``
    as it is and its GRPC check target as ``Instance.address``, the zone's ``%`` written
    ``%25``: Consul's check dials ``passthrough:///<host:port>`` and grpc-go takes that
    text as a URI, percent-decoding it (a raw ``%eth0`` is an invalid escape to it, a raw
    ``%11`` the byte 0x11)."""
    reg = make_registry(check="grpc")
    await reg.register(Instance(service="orderd", instance_id="orderd-1",
                                host="fe80::1%eth0", port=41001))
    sent = double.registrations[-1]
    assert sent["Address"] == "fe80::1%eth0"
    assert [c["GRPC"] for c in sent["Checks"]] == ["[fe80::1%25eth0]:41001/orderd",
                                                  "[fe80::1%25eth0]:41001"]


async def test_grpc_check_follows_grpc_health(double: ConsulDouble, make_registry: Any) -> None:
    """With check=grpc the instance is discoverable only while its grpc.health.v1 is SERVING."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("orderd", health_pb2.HealthCheckResponse.NOT_SERVING)
        reg = make_registry(check="grpc", check_interval_s=0.1)
        a = make_instance("orderd", 1, port=port)
        watcher = Collector(reg, "orderd")
        assert await watcher.next() == frozenset()
        await reg.register(a)
        await servicer.set("orderd", health_pb2.HealthCheckResponse.SERVING)
        await watcher.until_set({a})
        await servicer.set("orderd", health_pb2.HealthCheckResponse.NOT_SERVING)
        await watcher.until_set(set())
        await watcher.stop()
    finally:
        await server.stop(None)


@pytest.mark.parametrize("kind", ["grpc", "both"])
async def test_grpc_checked_instance_is_discoverable_at_once(
    double: ConsulDouble, make_registry: Any, kind: str
) -> None:
    """With check=grpc (or both) a new instance is in watches as soon as register() has
    returned, not only after the agent's first run of its gRPC check, up to one
    check_interval_s later (Consul starts a check without a Status critical and staggers
    its first run within the Interval; the double waits the whole Interval)."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("orderd", health_pb2.HealthCheckResponse.SERVING)
        reg = make_registry(check=kind, check_interval_s=30.0)
        a = make_instance("orderd", 1, port=port)
        watcher = Collector(reg, "orderd")
        assert await watcher.next() == frozenset()
        await reg.register(a)
        await watcher.until_set({a}, timeout_s=3.0)
        check = double.service_check("orderd-1", "grpc")
        assert check is not None and check.status == "passing"
        await watcher.stop()
    finally:
        await server.stop(None)


async def test_deregister_removes_and_stops_heartbeat(
    double: ConsulDouble, make_registry: Any
) -> None:
    """Deregister removes the service from the agent at once and ends its heartbeat task."""
    reg = make_registry()
    a = make_instance("orderd", 1)
    await reg.register(a)
    await until(lambda: double.service_passes["orderd-1"] >= 1, what="first heartbeat")
    await reg.deregister(a)
    assert "orderd-1" not in double.services
    assert not reg._keepers  # no heartbeat task left behind
    await reg.deregister(a)  # unknown instance: ignored


async def test_register_again_of_a_critical_id_is_passing_at_once(double: ConsulDouble) -> None:
    """register() of an instance id the agent still held with a critical TTL check (a
    crashed process restarted with the same id before the agent reaped it) left it out of
    every ``?passing`` watch until its first heartbeat, ``ttl_s / 3`` later (5 s by
    default), although register() (and so serve()) had returned: the registration reused
    the check's CheckID and sent ``Status: "passing"``, which Consul ignores for a CheckID it
    holds (it keeps the check's current status, agent.go addServiceInternal). Each
    registration's checks now have CheckIDs new to the agent, so their Status applies."""
    await check_register_again_of_a_critical_id(_opts(double, ttl_s=0.3))


async def test_register_again_of_a_critical_grpc_checked_id_is_passing_at_once(
    double: ConsulDouble,
) -> None:
    """check="grpc": the same restart, its gRPC check critical (the crashed process no longer
    answers grpc.health.v1), stayed out of every watch until the agent's next run of the
    check, up to check_interval_s (10 s by default) after register() returned. Now passing
    at once; the agent's own run of the new check then keeps it so while it serves."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("orderd", health_pb2.HealthCheckResponse.SERVING)
        # the crashed process's address answers nothing: its check turns critical
        a = make_instance("orderd", 1, port=_free_port())
        crashed = ConsulRegistry(_opts(double, check="grpc", check_interval_s=0.2))
        await crashed.register(a)
        await crashed.close()
        await until(lambda: [c.status for c in double.services["orderd-1"].checks.values()]
                    == ["critical"] * 2, what="gRPC checks to fail", timeout_s=5.0)
        # restarted on a new port; the agent's first run of its check 30 s away
        b = make_instance("orderd", 1, port=port)
        restarted = ConsulRegistry(_opts(double, check="grpc", check_interval_s=30.0))
        try:
            await restarted.register(b)
            opts = _opts(double)
            assert await passing_ids(opts, "orderd") == {"orderd-1"}, (
                await service_checks(opts, "orderd"))
            assert list((await service_checks(opts, "orderd"))["orderd-1"].values()) == [
                "passing"] * 2
        finally:
            await restarted.close()
    finally:
        await server.stop(None)


def _free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _no_status(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with no initial ``Status`` in its checks (the keeper's re-registration)."""
    return {**payload, "Checks": [{k: v for k, v in c.items() if k != "Status"}
                                  for c in payload["Checks"]]}


async def test_reregisters_after_agent_forgets_ttl(
    double: ConsulDouble, make_registry: Any
) -> None:
    """A heartbeat answered 404 unknown check (agent restarted) re-sends the original payload
    without the initial Status, then passes the TTL check at once (this process is alive)."""
    reg = make_registry(ttl_s=6.0)  # a heartbeat every 2 s
    await reg.register(make_instance("orderd", 1))
    original = double.registrations[-1]
    double.forget_all()
    await until(lambda: "orderd-1" in double.services, what="re-registration", timeout_s=3.0,
                interval_s=0.005)
    assert len(double.registrations) == 2
    assert double.registrations[-1] == _no_status(original)
    # passed at once, not at the next heartbeat 2 s later
    await until(lambda: (c := double.service_check("orderd-1")) is not None
                and c.status == "passing", what="TTL check passed after re-registration",
                timeout_s=1.0)
    passes = [r for r in double.requests if r.path.startswith("/v1/agent/check/pass/")]
    assert passes  # the 404 came from a heartbeat


async def test_reregisters_after_agent_forgets_grpc(
    double: ConsulDouble, make_registry: Any
) -> None:
    """With check=grpc, a 404 from the periodic GET /v1/agent/service/<id> re-registers."""
    reg = make_registry(check="grpc", check_interval_s=0.1)
    await reg.register(make_instance("orderd", 1))
    original = double.registrations[-1]
    double.forget_all()
    await until(lambda: "orderd-1" in double.services, what="re-registration")
    assert double.registrations[-1] == _no_status(original)
    assert any(r.path == "/v1/agent/service/orderd-1" for r in double.requests)


async def test_reaped_not_serving_instance_is_not_resurrected_as_passing(
    double: ConsulDouble, make_registry: Any
) -> None:
    """check="grpc": an instance whose grpc.health.v1 says NOT_SERVING turns critical and the
    agent reaps it after DeregisterCriticalServiceAfter; the keeper's re-registration after
    the 404 carries no Status (Consul's default: critical until the check passes), so the
    instance never re-enters a ?passing watch while it stays NOT_SERVING."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    double.grpc_stagger_s = 0.3
    try:
        await servicer.set("orderd", health_pb2.HealthCheckResponse.SERVING)
        # reaped 0.5 s after turning critical; a new check's first run 0.3 s after it is
        # registered, so a re-registered instance is checked before it can be reaped
        reg = make_registry(check="grpc", check_interval_s=0.3,
                            deregister_critical_after_s=0.5)
        a = make_instance("orderd", 1, port=port)
        watcher = Collector(reg, "orderd")
        assert await watcher.next() == frozenset()
        await reg.register(a)
        assert double.registrations[-1]["Checks"][0]["Status"] == "passing"  # register()
        await watcher.until_set({a})
        await servicer.set("orderd", health_pb2.HealthCheckResponse.NOT_SERVING)
        await watcher.until_set(set())  # the agent's check found it critical
        # Two reap cycles (critical, reaped 0.5 s later, registered again at the keeper's
        # next look, its check's first run 0.3 s after that): the first re-registration's
        # whole life, a Status passing included, lies behind the second one.
        await until(lambda: len(double.registrations) >= 3, timeout_s=8.0,
                    what="the instance reaped and registered again twice")
        seen: list[frozenset[Any]] = []
        while not watcher.queue.empty():
            seen.append(watcher.queue.get_nowait())
        assert frozenset({a}) not in seen, seen
        assert all("Status" not in c for r in double.registrations[1:] for c in r["Checks"])
        # Once it serves again, the agent's own check run puts it back.
        await servicer.set("orderd", health_pb2.HealthCheckResponse.SERVING)
        await watcher.until_set({a}, timeout_s=5.0)
        await watcher.stop()
    finally:
        await server.stop(None)


async def test_failed_reregistration_keeps_previous_registration_alive(
    double: ConsulDouble, make_registry: Any
) -> None:
    """When register() of an already registered id fails (agent briefly down), the previous
    registration is still in the agent and its heartbeat goes on: it stays passing."""
    reg = make_registry()
    await reg.register(make_instance("orderd", 1))
    double.set_down(True)
    with pytest.raises(RegistryError):
        await reg.register(make_instance("orderd", 1, weight=5))
    double.set_down(False)
    passes = double.service_passes["orderd-1"]
    await until(lambda: double.service_passes["orderd-1"] >= passes + 3,
                what="three more heartbeats")
    check = double.service_check("orderd-1")
    assert check is not None and check.status == "passing"
    assert not any(s == "critical" for _, s in double.status_history)


async def test_reregistration_replaces_payload_of_the_heartbeat(
    double: ConsulDouble, make_registry: Any
) -> None:
    """After a successful re-registration one heartbeat goes on, and if the agent forgets the
    instance it registers the new payload again, not the old one."""
    reg = make_registry()
    await reg.register(make_instance("orderd", 1))
    await reg.register(make_instance("orderd", 1, weight=5))
    assert len(reg._keepers) == 1
    new = double.registrations[-1]
    double.forget_all()
    await until(lambda: "orderd-1" in double.services, what="re-registration")
    assert double.registrations[-1] == _no_status(new)
    assert double.services["orderd-1"].weights["Passing"] == 5


async def test_many_watches_do_not_starve_registration(double: ConsulDouble) -> None:
    """100 watches each hold a connection for their blocking query; register and the
    heartbeats of the same registry still get a connection (aiohttp's default connector
    allows 100 in all)."""
    reg = ConsulRegistry(_opts(double, wait_s=20.0, request_timeout_s=1.0))
    watchers = [Collector(reg, f"svc{i}") for i in range(100)]
    try:
        async with asyncio.timeout(10):
            for w in watchers:
                await w.next()

            def blocked() -> int:
                return sum(1 for r in double.requests
                           if r.path.startswith("/v1/health/") and "index" in r.query)

            await until(lambda: blocked() >= 100, what="100 blocked watches")
        await reg.register(make_instance("gateway", 1))
        await until(lambda: double.service_passes["gateway-1"] >= 2, what="heartbeats")
    finally:
        for w in watchers:
            w.task.cancel()
        await asyncio.gather(*(w.task for w in watchers), return_exceptions=True)
        await reg.close()


async def test_register_unreachable_agent_raises_registry_error() -> None:
    """An unreachable agent makes register raise RegistryError chained from the aiohttp error."""
    async with ConsulDouble() as d:
        addr = d.addr
    reg = ConsulRegistry(ConsulOptions(addr=addr, **FAST))
    try:
        with pytest.raises(RegistryError, match="cannot register") as info:
            await reg.register(make_instance("orderd", 1))
        assert isinstance(info.value.__cause__, aiohttp.ClientError)
    finally:
        await reg.close()


# -- watch ------------------------------------------------------------------------------------
async def test_watch_blocking_query_parameters(double: ConsulDouble, make_registry: Any) -> None:
    """After a non-blocking first read, queries send ?passing, the last X-Consul-Index and wait."""
    reg = make_registry()
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == frozenset()
    first_index = double.index_of("orderd")
    await until(lambda: len(double.health_requests("orderd")) >= 2, what="blocking query")
    first, second = double.health_requests("orderd")[:2]
    assert "index" not in first.query and "passing" in first.query
    assert second.query == {"passing": "1", "index": str(first_index), "wait": "500ms"}
    other = make_registry()
    await other.register(make_instance("orderd", 1))
    assert await watcher.next() == {make_instance("orderd", 1)}
    new_index = double.index_of("orderd")
    await until(lambda: double.health_requests("orderd")[-1].query.get("index") == str(new_index),
                what="query with the new index")
    await watcher.stop()


async def test_watch_index_backwards_resets(double: ConsulDouble, make_registry: Any) -> None:
    """When X-Consul-Index goes backwards the watch re-reads without blocking and stays correct."""
    reg = make_registry()
    a, b = make_instance("orderd", 1), make_instance("orderd", 2)
    await reg.register(a)
    for _ in range(5):
        double.touch("orderd")  # the index the watch blocks on is now well above 1
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == {a}
    high = str(double.index_of("orderd"))
    await until(lambda: double.health_requests("orderd")[-1].query.get("index") == high,
                what="blocking on the high index")
    seen = len(double.health_requests("orderd"))
    double.reset_index(1)
    await reg.register(b)  # index 2: still below the one the watch is blocked on
    await watcher.until_set({a, b})
    await until(lambda: any("index" not in r.query
                            for r in double.health_requests("orderd")[seen:]),
                what="non-blocking re-read after the reset")
    await reg.deregister(b)
    await watcher.until_set({a})
    await watcher.stop()


async def test_agent_restarted_without_state_keeps_the_live_instances() -> None:
    """A Consul agent that restarts without its persisted state (dev mode, a container
    without a volume: the case the module docstring names, "If the agent forgets an
    instance (it restarted without persisted state ...)") comes back answering an empty
    ``/v1/health/service/orderd`` with an ``X-Consul-Index`` far below the one the watch
    had seen. The watch yielded the empty set at once, so every balanced channel dropped
    every endpoint and calls failed ``UNAVAILABLE`` until each owner's keeper noticed (its
    next heartbeat, up to ``ttl_s / 3`` = 5 s later) and registered again, although every
    instance was alive: the watch reset its index to 0 after the error, so the index that
    went backwards was never told.

    README, "A registry fault is not 'every instance left'": as the etcd registry does
    with a replaced store, the watch now remembers the highest index it saw and, when a
    read comes back below it, keeps the instances of its last set the agent no longer
    lists for ``fault_grace_s`` (default ``ttl_s``), until their owners have registered
    again (``status().kept_endpoints``)."""
    async with ConsulDouble() as double:
        owner = ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=30.0))  # beat every 10 s
        reader = ConsulRegistry(ConsulOptions(addr=double.addr, wait_s=1.0, backoff_base_s=0.05,
                                              backoff_max_s=0.2, request_timeout_s=1.0))
        a = make_instance("orderd", 1)
        watcher: Collector | None = None
        try:
            await owner.register(a)
            for _ in range(20):
                double.touch("orderd")  # an index well above what a fresh agent starts at
            watcher = Collector(reader, "orderd")
            assert await watcher.next() == {a}
            seen = len(double.health_requests("orderd"))
            # the agent restarts without its state: services forgotten, index back to 1
            await double.stop()
            double.forget_all()
            double.reset_index(1)
            await asyncio.sleep(0.2)
            await double.start()
            # the watch reads the restarted agent (the owner's next heartbeat is ~10 s away)
            await until(lambda: len(double.health_requests("orderd")) > seen + 1
                        and reader.status().readable is True, timeout_s=5.0,
                        what="the watch to read the restarted agent")
            await asyncio.sleep(0.5)
            yielded = []
            while not watcher.queue.empty():
                yielded.append(watcher.queue.get_nowait())
            lost = [sorted(i.instance_id for i in s) for s in yielded if a not in s]
            assert not lost, (
                f"after the agent restarted empty the watch yielded {lost}: the live "
                "instance orderd-1 was dropped before its owner could register it again")
            assert reader.status().kept_endpoints == 1
        finally:
            if watcher is not None:
                await watcher.stop()
            await owner.close()
            await reader.close()
        assert reader.status().kept_endpoints == 0  # the watch ended


async def test_instances_kept_after_an_agent_restart_go_after_fault_grace_s(
    double: ConsulDouble
) -> None:
    """After an agent restarted without its state (the index went backwards) the watch
    keeps the last set's instances for ``fault_grace_s``: one whose owner registers it
    again is listed by the agent from then on (a later deregistration of it, with the
    index moving forward, removes it at once); one whose owner never comes back goes
    when the grace ends, even while the watch is blocked in a long poll."""
    owner = ConsulRegistry(_opts(double, ttl_s=30.0))  # no heartbeat during the test
    reader = ConsulRegistry(_opts(double, wait_s=30.0, fault_grace_s=1.5))
    a, b = make_instance("orderd", 1), make_instance("orderd", 2)
    watcher = Collector(reader, "orderd")
    try:
        await owner.register(a)
        await owner.register(b)
        for _ in range(20):
            double.touch("orderd")
        await watcher.until_set({a, b})
        await double.stop()
        double.forget_all()
        double.reset_index(1)
        await double.start()
        await until(lambda: reader.status().kept_endpoints == 2, timeout_s=5.0,
                    what="the watch to keep both instances")
        t0 = time.monotonic()
        await owner.register(a)  # a's owner is back; b's never comes
        await until(lambda: reader.status().kept_endpoints == 1, timeout_s=3.0,
                    what="a listed by the agent again")
        assert watcher.queue.empty()  # the set did not change: {a, b}
        await owner.deregister(a)  # a drain: the index moves forward, a goes at once
        assert await watcher.next() == {b}
        assert time.monotonic() - t0 < 1.5
        assert await watcher.next(timeout_s=3.0) == frozenset()  # the grace ended
        assert time.monotonic() - t0 >= 1.0
        assert reader.status().kept_endpoints == 0
    finally:
        await watcher.stop()
        await owner.close()
        await reader.close()


async def test_an_instance_listed_again_under_another_id_is_not_kept_twice(
    double: ConsulDouble
) -> None:
    """Two nodes list a service defined without an ID (Consul's ID is then the name, so
    both carry ``orderd``: listed as ``node-a/orderd`` and ``node-b/orderd``). After the
    agent lost its state the watch keeps both; node-a registers again first, now the only
    entry, listed as plain ``orderd``. The watch matched what the agent lists again with
    what it keeps by instance_id only, so it yielded node-a's endpoint twice (``orderd``
    and ``node-a/orderd``) for the whole grace, a balanced channel sending it twice its
    share, and node-a's deregistration left its kept copy until the grace ended. Now a
    kept instance goes when the agent lists the same (node, Service.ID) or the same
    endpoint again: node-a once, its removal at once."""

    async def catalog_register(node: str, ip: str) -> None:
        async with aiohttp.ClientSession() as session, session.put(
            f"{double.url}/v1/catalog/register", json={
                "Node": node, "Address": ip, "Service": {"Service": "orderd", "Port": 50051},
            }) as resp:
            assert resp.status == 200, await resp.text()

    reader = ConsulRegistry(_opts(double, wait_s=1.0, ttl_s=15.0, fault_grace_s=8.0))
    watcher = Collector(reader, "orderd")
    try:
        await catalog_register("node-a", "127.0.0.2")
        await catalog_register("node-b", "127.0.0.3")
        for _ in range(20):
            double.touch("orderd")
        await until(lambda: watcher.latest is not None and len(watcher.latest) == 2,
                    timeout_s=5.0, what="both nodes' instances")
        # the agent (cluster) loses its state: index back to 1, nothing listed
        await double.stop()
        double.forget_all()
        double.other_nodes.clear()
        double.reset_index(1)
        await double.start()
        await until(lambda: reader.status().kept_endpoints == 2, timeout_s=5.0,
                    what="the watch to keep both instances")
        await catalog_register("node-a", "127.0.0.2")  # node-a is back
        await until(lambda: any(i.instance_id == "orderd" for i in (watcher.latest or ())),
                    timeout_s=5.0, what="node-a listed again")
        await asyncio.sleep(0.3)
        latest = watcher.latest or frozenset()
        assert sorted((i.instance_id, i.address) for i in latest) == [
            ("node-b/orderd", "127.0.0.3:50051"), ("orderd", "127.0.0.2:50051")]
        assert reader.status().kept_endpoints == 1
        double.other_nodes.clear()  # node-a deregistered: the index moves forward
        double.touch("orderd")
        await until(lambda: sorted(i.instance_id for i in (watcher.latest or ()))
                    == ["node-b/orderd"], timeout_s=3.0, what="node-a gone at once")
    finally:
        await watcher.stop()
        await reader.close()


async def test_watch_never_blocks_on_index_zero(double: ConsulDouble, make_registry: Any) -> None:
    """A returned X-Consul-Index of 0 is sent back as 1, never as a blocking index below 1."""
    reg = make_registry()
    a = make_instance("orderd", 1)
    await reg.register(a)
    double.reset_index(0)
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == {a}
    await until(lambda: len(double.health_requests("orderd")) >= 3, what="three queries")
    indexes = [r.query.get("index") for r in double.health_requests("orderd")]
    assert indexes[:3] == [None, "1", "1"]
    await watcher.stop()


async def test_watch_ignores_spurious_wakeups(double: ConsulDouble, make_registry: Any) -> None:
    """An index that moves without a change in the passing set yields nothing new."""
    reg = make_registry()
    a = make_instance("orderd", 1)
    await reg.register(a)
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == {a}
    for _ in range(3):
        double.touch("orderd")
        idx = str(double.index_of("orderd"))

        def reblocked(i: str = idx) -> bool:
            return double.health_requests("orderd")[-1].query.get("index") == i

        await until(reblocked, what="re-blocked on the touched index")
    assert watcher.queue.empty()
    await watcher.stop()


class _MaxRandom(random.Random):
    """uniform(a, b) -> b: every backoff delay equals its cap, so growth is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_watch_backoff_grows_when_only_blocking_queries_fail() -> None:
    """When every blocking query fails (a proxy in front of the agent answering 504 to each
    ``index=`` query) while the non-blocking re-read after it succeeds, the backoff still
    grows: only a successful blocking query resets it."""
    from aiohttp import web

    entry = {"Node": {"Node": "n1", "Address": "127.0.0.2"},
             "Service": {"ID": "orderd-1", "Service": "orderd", "Port": 50051}, "Checks": []}

    async def health(request: web.Request) -> web.Response:
        if "index" in request.query:
            return web.Response(status=504, text="upstream timed out")
        return web.json_response([entry], headers={"X-Consul-Index": "7"})

    app = web.Application()
    app.router.add_get("/v1/health/service/{name}", health)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sleep = FastSleep()
    opts = ConsulOptions(**{**FAST, "addr": f"127.0.0.1:{runner.addresses[0][1]}",
                            "backoff_base_s": 0.01, "backoff_max_s": 1.0})
    reg = ConsulRegistry(opts, rng=_MaxRandom(), sleep=sleep)
    watcher = Collector(reg, "orderd")
    try:
        assert len(await watcher.next()) == 1
        await until(lambda: len(sleep.delays) >= 8, what="eight retries")
        assert sleep.delays[:8] == [min(1.0, 0.01 * 2 ** n) for n in range(8)]
    finally:
        await watcher.stop()
        await reg.close()
        await runner.cleanup()


@pytest.mark.parametrize("outage", ["stopped", "500"])
async def test_watch_survives_outage(
    double: ConsulDouble, make_registry: Any, outage: str
) -> None:
    """During an outage the watch yields nothing (keeps the last set), backs off, then resumes."""
    sleep = FastSleep()
    reg = make_registry(sleep=sleep)
    a, b = make_instance("orderd", 1), make_instance("orderd", 2)
    await reg.register(a)
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == {a}
    with capture_logs() as logs:
        if outage == "stopped":
            await double.stop()
        else:
            double.set_down(True)
        await until(lambda: len(sleep.delays) >= 5, what="five backoff sleeps")
        assert watcher.queue.empty()
        if outage == "stopped":
            await double.start()
        else:
            double.set_down(False)
        await reg.register(b)
        assert await watcher.next() == {a, b}
    base, cap = FAST["backoff_base_s"], FAST["backoff_max_s"]
    for attempt, delay in enumerate(sleep.delays[:5], start=1):
        assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1))
    warnings_ = [e for e in logs if e["event"].startswith("consul watch failed")]
    assert warnings_ and all(e["log_level"] == "warning" for e in warnings_)
    await watcher.stop()


async def test_status_follows_watches_and_registrations(
    double: ConsulDouble, make_registry: Any
) -> None:
    """status() reports watch failures as read errors, failed heartbeats as write errors, a
    re-registration after the agent forgot the instance as ``reopened``, and the recovery."""
    sleep = FastSleep()
    reg = make_registry(sleep=sleep)
    assert reg.status() == RegistryStatus(kind="consul")
    a = make_instance("orderd", 1)
    await reg.register(a)
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == {a}
    assert reg.status().ok and reg.status().readable and reg.status().writable
    double.set_down(True)
    await until(lambda: reg.status().read_errors >= 2 and reg.status().write_errors >= 1,
                what="failed watch queries and heartbeats")
    down = reg.status()
    assert down.readable is False and down.writable is False and not down.ok
    assert down.failing_since_s is not None and "No cluster leader" in (down.last_error or "")
    assert down.summary == "the service registry cannot be read"
    assert double.addr not in down.summary
    double.set_down(False)
    await until(lambda: reg.status().ok and reg.status().readable is True,
                what="reads and writes to work again")
    assert reg.status().failing_since_s is None
    double.forget_all()
    await until(lambda: reg.status().reopened == 1, what="re-registration counted")
    await watcher.stop()


async def test_close_ends_blocked_watch(double: ConsulDouble) -> None:
    """close() ends a watch blocked in a long poll at once, and cancelling a watch is clean."""
    reg = ConsulRegistry(_opts(double, wait_s=30.0))
    w1, w2 = Collector(reg, "orderd"), Collector(reg, "orderd")
    assert await w1.next() == frozenset() and await w2.next() == frozenset()
    await until(lambda: len(double.health_requests("orderd")) >= 4, what="both blocked")
    await w2.stop()  # cancellation while blocked
    assert w2.task.cancelled()
    t0 = time.monotonic()
    await reg.close()
    async with asyncio.timeout(2):
        await w1.ended.wait()
    assert time.monotonic() - t0 < 2
    assert not reg._race.inflight


async def test_register_finishing_during_close_starts_no_keeper(double: ConsulDouble) -> None:
    """``close()`` while a ``register()`` is in flight (a server shutting down as it
    starts, a task group cancelled): when the agent's answer arrived as ``close()`` ran,
    ``register()`` returned normally *after* ``close()`` and started a keep-alive task on
    the closed registry that nothing ever cancelled: it woke every ``ttl_s / 3`` forever,
    logged ``consul heartbeat failed; retrying ... Consul registry ... is closed`` each
    time and flipped the closed registry's ``status()`` to ``writable=False``.

    ``Registry.close()``: "Stop heartbeats and watches and release resources". Now such a
    ``register()`` raises ``RegistryError`` (the registry is closed) and starts no keeper,
    and a keeper that finds its registry closed ends."""
    leaked: list[str] = []
    try:
        for attempt in range(12):
            reg = ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=0.6))
            await reg.register(make_instance("warm", attempt + 1))  # the client exists
            sent = len(double.registrations)
            task = asyncio.create_task(reg.register(make_instance("orderd", attempt + 1)))
            async with asyncio.timeout(5):  # spin the loop: close() lands as the answer does
                while len(double.registrations) == sent:  # noqa: ASYNC110 - the agent got the PUT
                    await asyncio.sleep(0)
            for _ in range(attempt % 3):
                await asyncio.sleep(0)
            await reg.close()
            with contextlib.suppress(RegistryError):
                await task
            await asyncio.sleep(0.05)
            leaked += [t.get_name() for t in _keepers()]
            for t in _keepers():
                t.cancel()
        assert not leaked, (
            f"keep-alive tasks still running after close(): {leaked} (each logs a "
            "warning every ttl_s / 3 forever)")
    finally:
        for t in _keepers():
            t.cancel()


async def _during_a_slow_lookup(reg: ConsulRegistry, op: str) -> Any:
    """``op`` of ``reg`` (its agent's name looked up slowly): a coroutine to run."""
    instance = make_instance(unique_service(), 1)
    if op == "register":
        return reg.register(instance)
    if op == "deregister":
        return reg.deregister(instance)
    if op == "snapshot":
        return reg.snapshot(instance.service)
    return reg.services()


@pytest.mark.parametrize("op", ["register", "deregister", "services", "snapshot"])
async def test_a_call_racing_close_during_the_agents_name_lookup_raises_registry_error(
        double: ConsulDouble, slow_dns: SlowDns, op: str) -> None:
    """close() while a call waits for the agent's name lookup (a slow DNS server): close()
    closes the client, its aiohttp connector cancels the lookup's task
    (``TCPConnector._close`` cancels ``_resolve_host_tasks``) and the call raised a bare
    CancelledError out of a task nobody cancelled (``cancelling() == 0``), which a
    caller's gather() or TaskGroup takes for a cancellation of its own. register()
    documents RegistryError "also when close() ran while the agent answered"; so do
    deregister() and the reads (the agent cannot be reached). Now RegistryError ("...
    is closed")."""
    reg = ConsulRegistry(ConsulOptions(**{**FAST, "request_timeout_s": 5.0,
                                          "addr": f"slow-dns.test:{double.port}"}))

    async def outcome() -> str:
        try:
            await (await _during_a_slow_lookup(reg, op))
            return "done"
        except RegistryError as exc:
            return f"RegistryError: {exc}"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            return f"CancelledError (task cancelling()={task.cancelling()})"

    try:
        task = asyncio.create_task(outcome())
        await until(slow_dns.asked.is_set, what="the call to wait for the lookup")
        await reg.close()
        got = await asyncio.wait_for(task, 10)
    finally:
        slow_dns.set()
        await reg.close()
    assert got.startswith("RegistryError: ") and "is closed" in got, got


async def test_a_cancel_during_the_agents_name_lookup_still_cancels(
        double: ConsulDouble, slow_dns: SlowDns) -> None:
    """The caller's own cancel of a register() waiting for the agent's name lookup is no
    closed registry: it propagates (the task ends cancelled), also when close() follows
    at once."""
    for then_close in (False, True):
        reg = ConsulRegistry(ConsulOptions(**{**FAST, "request_timeout_s": 5.0,
                                              "addr": f"slow-dns.test:{double.port}"}))
        slow_dns.asked.clear()
        try:
            task = asyncio.create_task(reg.register(make_instance(unique_service(), 1)))
            await until(slow_dns.asked.is_set, what="register() to wait for the lookup")
            task.cancel()
            if then_close:
                await reg.close()
            done, _ = await asyncio.wait((task,), timeout=10)
            assert done and task.cancelled(), (then_close, task)
        finally:
            await reg.close()
    slow_dns.set()


async def test_watch_rate_limits_a_churning_index(double: ConsulDouble) -> None:
    """While a service's index moves every 5 ms (idempotent writes, a flapping check) the
    watch polls at a bounded rate (Consul's blocking-query guide, "Rate limit": a token
    bucket, burst 2; one query a second by default) instead of one query per change."""
    reg = ConsulRegistry(_opts(double, wait_s=30.0, watch_query_interval_s=1.0),
                         rng=random.Random(1))
    await reg.register(make_instance("orderd", 1))
    watcher = Collector(reg, "orderd")
    try:
        await watcher.next()
        await asyncio.sleep(0.1)  # the watch is blocked on its index
        before = len(double.health_requests("orderd"))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            double.touch("orderd")
            await asyncio.sleep(0.005)
        made = len(double.health_requests("orderd")) - before
        # burst 2 + one token in the second of churn, + one query that may be in flight
        assert made <= 5, f"{made} health queries in 1 s of index churn: a busy loop"
    finally:
        await watcher.stop()
        await reg.close()


def test_token_bucket_bursts_two_then_spaces_by_interval() -> None:
    """The watch's token bucket: a full bucket (2) answers at once, then each reservation
    waits one interval more than the last; time returns the tokens, never more than 2."""
    now = [100.0]
    bucket = _TokenBucket(0.5, 2, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    now[0] += 1.0  # pays the two tokens owed, no more
    assert bucket.reserve() == 0.5
    now[0] += 60.0  # a long quiet spell refills to the burst only
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.5]


async def test_watch_follows_a_quiet_service_at_once(double: ConsulDouble) -> None:
    """The rate limit costs a quiet service nothing: a change after a quiet spell is seen
    well within watch_query_interval_s, and so is a second one right after it (burst 2)."""
    reg = ConsulRegistry(_opts(double, wait_s=30.0, watch_query_interval_s=2.0))
    other = ConsulRegistry(_opts(double))
    a, b = make_instance("orderd", 1), make_instance("orderd", 2)
    watcher = Collector(reg, "orderd")
    try:
        assert await watcher.next() == frozenset()
        t0 = time.monotonic()
        await other.register(a)
        assert await watcher.next() == {a}
        await other.register(b)
        assert await watcher.next() == {a, b}
        assert time.monotonic() - t0 < 1.0
    finally:
        await watcher.stop()
        await reg.close()
        await other.close()


async def test_long_wait_blocking_query_not_cut_by_aiohttp_default_timeout(
    double: ConsulDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wait_s may be up to 600 s, but aiohttp's default session timeout (total=300 s) would
    cut every quiet blocking query with wait_s above ~282 s and count it as a read failure.
    Time scaled by 1/600: the default total becomes 0.5 s and wait_s 600 s is 1.0 s."""
    import aiohttp.client

    monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT",
                        aiohttp.ClientTimeout(total=0.5, sock_connect=30))
    reg = ConsulRegistry(_opts(double, wait_s=1.0), rng=random.Random(1))
    watcher = Collector(reg, "quiet")
    try:
        assert await watcher.next() == frozenset()
        await until(lambda: len(double.health_requests("quiet")) >= 3,
                    what="one full blocking query answered and the next one sent")
        st = reg.status()
        assert st.read_errors == 0 and st.readable is True, st
    finally:
        await watcher.stop()
        await reg.close()


async def test_same_service_id_on_two_nodes_gives_two_instances(
    double: ConsulDouble, make_registry: Any
) -> None:
    """A Consul service ID is unique per agent only (it defaults to the Name), so two nodes
    may both list ID "orderd"; the watch still yields two instances with distinct
    instance_ids (qualified by the node), while a unique ID is kept as it is."""
    async with aiohttp.ClientSession() as session:
        for node, ip in (("node-a", "127.0.0.2"), ("node-b", "127.0.0.3")):
            async with session.put(f"{double.url}/v1/catalog/register", json={
                "Node": node, "Address": ip, "Service": {"Service": "orderd", "Port": 50051},
            }) as resp:
                assert resp.status == 200, await resp.text()
    reg = make_registry()
    mine = make_instance("orderd", 1)
    await reg.register(mine)
    instances = await Collector(reg, "orderd").next()
    assert sorted((i.instance_id, i.address) for i in instances) == [
        ("node-a/orderd", "127.0.0.2:50051"), ("node-b/orderd", "127.0.0.3:50051"),
        ("orderd-1", "127.0.0.1:41001")]
    assert mine in instances


async def test_node_address_used_when_service_address_empty(
    double: ConsulDouble, make_registry: Any
) -> None:
    """An entry with an empty Service.Address is reached at its Node.Address (Consul docs)."""
    async with aiohttp.ClientSession() as session, session.put(
        f"{double.url}/v1/agent/service/register",
        json={"Name": "orderd", "ID": "bare", "Port": 4000},
    ) as resp:
        assert resp.status == 200
    watcher = Collector(make_registry(), "orderd")
    (inst,) = await watcher.next()
    assert (inst.host, inst.port, inst.weight) == ("127.0.0.1", 4000, 1)
    await watcher.stop()



async def test_an_unusable_entry_is_warned_of_once_by_error_type_never_its_values(
    double: ConsulDouble, make_registry: Any
) -> None:
    """An entry Instance refuses (here a meta value with a lone surrogate) is skipped with
    a warning. That warning came on every answer of the watch (each blocking query's end,
    every change of the service) and quoted the error's text, which quotes the refused
    value: a meta value may hold a secret (a DSN with its password). As the local
    registry does, it now names the service, the instance id and the error's type only,
    once per entry and then at most every 60 s while the entry stays unusable."""
    async with aiohttp.ClientSession() as session, session.put(
        f"{double.url}/v1/catalog/register", json={
            "Node": "node-b", "Address": "127.0.0.3", "Service": {
                "Service": "orderd", "ID": "bad", "Port": 50051,
                "Meta": {"db_url": "postgres://app:s3cret-pw@db/orders\ud800"}}},
    ) as resp:
        assert resp.status == 200, await resp.text()
    reg = make_registry(wait_s=0.1)  # each blocking query of the quiet service ends sooner
    mine = make_instance("orderd", 1)
    await reg.register(mine)
    watcher = Collector(reg, "orderd")
    try:
        with capture_logs() as logs:
            assert await watcher.next() == frozenset({mine})
            before = len(double.health_requests("orderd"))
            await until(lambda: len(double.health_requests("orderd")) >= before + 3,
                        what="three more watch answers", timeout_s=10)
    finally:
        await watcher.stop()
    skipped = [e for e in logs if e["event"] == "skipping unusable consul service entry"]
    assert [(e["service"], e["instance_id"], e["error"]) for e in skipped] == [
        ("orderd", "bad", "ConfigError")], skipped
    assert "s3cret" not in repr(logs)


# -- ACL ---------------------------------------------------------------------------------------
async def test_acl_token_sent_on_every_request() -> None:
    """With a token every request carries it in X-Consul-Token, and an ACL agent accepts them."""
    async with ConsulDouble(required_token="s3cret-good-token") as d:
        reg = ConsulRegistry(_opts(d, token="s3cret-good-token"))
        a = make_instance("orderd", 1)
        watcher = Collector(reg, "orderd")
        assert await watcher.next() == frozenset()
        await reg.register(a)
        assert await watcher.next() == {a}
        await until(lambda: d.service_passes["orderd-1"] >= 1, what="heartbeat")
        await reg.deregister(a)
        await reg.close()
        await watcher.stop()
        assert d.requests
        assert {r.token for r in d.requests} == {"s3cret-good-token"}


async def test_a_read_filtered_by_acls_is_warned_of_and_in_status() -> None:
    """A token that may not read a service's instances (it lacks service:read or node:read)
    gets an empty list from Consul, HTTP 200, with X-Consul-Results-Filtered-By-ACLs: true:
    the watch yielded the empty set, status() said readable with no error, nothing was
    logged, and dial() just found no endpoints. The header is now read: a warning (once per
    read, at most every 10 minutes) and status().last_error say the ACLs hid entries; the
    read still counts as readable, and the set is still what the agent lists."""
    good, limited = "s3cret-good-token", "limited-token-2"
    async with ConsulDouble(required_token=good, limited_tokens=[limited]) as d:
        owner = ConsulRegistry(_opts(d, token=good))
        # wait_s=0.1: each blocking query of the quiet service ends sooner
        reg = ConsulRegistry(_opts(d, token=limited, wait_s=0.1), sleep=FastSleep())
        try:
            await owner.register(make_instance("orderd", 1))
            with capture_logs() as logs:
                watcher = Collector(reg, "orderd")
                assert await watcher.next() == frozenset()
                await until(lambda: len(d.health_requests("orderd")) >= 4,
                            what="several reads of the watch")
                assert await reg.failing("orderd") == frozenset()
                assert await reg.services() == frozenset()
                await watcher.stop()
            warned = [e for e in logs if "filtered by ACLs" in e["event"]]
            assert sorted(e["read"] for e in warned) == [
                "catalog", "health of 'orderd'", "watch of 'orderd'"], logs
            assert all(e["log_level"] == "warning" for e in warned)
            status = reg.status()
            assert status.readable is True and status.read_errors == 0, status
            assert "filtered by ACLs" in (status.last_error or ""), status
            assert limited not in repr(status) and all(limited not in repr(e) for e in logs)
        finally:
            await owner.close()
            await reg.close()


async def test_an_anonymous_empty_read_from_a_deny_agent_is_warned_of() -> None:
    """No token at all (CONSUL_HTTP_TOKEN unset) against an agent whose default ACL policy
    is deny: Consul filters what the anonymous token may not read and, for it, never says
    so; the watch quietly stayed empty. An empty answer there now logs a warning naming the
    variables to set (once per read), not an error in status(): the anonymous token may
    have been granted reads, and a service may have no instance."""
    async with ConsulDouble(required_token="s3cret-good-token") as d:
        owner = ConsulRegistry(_opts(d, token="s3cret-good-token"))
        # wait_s=0.1: each blocking query of the quiet service ends sooner
        reg = ConsulRegistry(_opts(d, wait_s=0.1), sleep=FastSleep())
        try:
            await owner.register(make_instance("orderd", 1))
            with capture_logs() as logs:
                watcher = Collector(reg, "orderd")
                assert await watcher.next() == frozenset()
                await until(lambda: len(d.health_requests("orderd")) >= 4,
                            what="several reads of the watch")
                await watcher.stop()
            warned = [e for e in logs if "no ACL token" in e["event"]]
            assert len(warned) == 1 and "CONSUL_HTTP_TOKEN_FILE" in warned[0]["event"], logs
            status = reg.status()
            assert status.readable is True and status.last_error is None, status
        finally:
            await owner.close()
            await reg.close()


async def test_no_acl_warning_when_the_token_reads_everything() -> None:
    """A token that may read everything, or an agent without ACLs: no warning, even for a
    service without instances."""
    for token in ("s3cret-good-token", None):
        async with ConsulDouble(required_token=token) as d:
            reg = ConsulRegistry(_opts(d, token=token), sleep=FastSleep())
            try:
                with capture_logs() as logs:
                    watcher = Collector(reg, "orderd")
                    assert await watcher.next() == frozenset()
                    assert await reg.services() == frozenset()
                    await watcher.stop()
                assert not [e for e in logs if "ACL" in e["event"]], logs
                assert reg.status().last_error is None
            finally:
                await reg.close()


async def test_wrong_token_fails_without_leaking_it() -> None:
    """A wrong token makes register/deregister raise RegistryError whose text never holds it."""
    secret = "wrong-secret-4711"
    async with ConsulDouble(required_token="s3cret-good-token") as d:
        reg = ConsulRegistry(_opts(d, token=secret), sleep=FastSleep())
        with pytest.raises(RegistryError) as info:
            await reg.register(make_instance("orderd", 1))
        assert "403" in str(info.value) and "ACL not found" in str(info.value)
        with pytest.raises(RegistryError) as info2:
            await reg.deregister(make_instance("orderd", 1))
        assert isinstance(info2.value.__cause__, consul.ACLPermissionDenied)
        with capture_logs() as logs:
            watcher = Collector(reg, "orderd")
            # one warning per outage (not per retry): several retries, one line
            await until(lambda: reg.status().read_errors >= 3 and len(logs) >= 1,
                        what="watch failures logged")
            await watcher.stop()
        await reg.close()
    status = reg.status()
    assert status.readable is False and status.writable is False, status
    assert "ACL not found" in (status.last_error or "")
    texts = [str(info.value), repr(info.value), str(info2.value), repr(reg.options),
             str(reg.options), repr(reg), *(repr(e) for e in logs), repr(status)]
    assert all(secret not in t for t in texts)


# -- TLS ---------------------------------------------------------------------------------------
def _write_pki(tmp: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
             issuer_key: ec.EllipticCurvePrivateKey, ca: bool, ip: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             # Python 3.13's ssl verifies with VERIFY_X509_STRICT, which refuses a CA
             # without keyUsage or subjectKeyIdentifier and a leaf without an
             # authorityKeyIdentifier (real Consul/OpenSSL-made certificates carry them)
             .add_extension(x509.KeyUsage(
                 digital_signature=not ca, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                 crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 issuer_key.public_key()), critical=False))
        if ip:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = cert("test ca", ca_key, ca_name, ca_key, True, False)
    paths = {"ca": str(tmp / "ca.crt")}
    Path(paths["ca"]).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, ip in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(name, key, ca_name, ca_key, False, ip)
        paths[name] = str(tmp / f"{name}.crt")
        paths[f"{name}_key"] = str(tmp / f"{name}.key")
        Path(paths[name]).write_bytes(c.public_bytes(serialization.Encoding.PEM))
        Path(paths[f"{name}_key"]).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return paths


async def test_mutual_tls_to_agent(tmp_path: Path) -> None:
    """https with ca_file/cert_file/key_file talks to an agent that requires client certs."""
    pki = _write_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    server_ctx.load_cert_chain(pki["server"], pki["server_key"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    async with ConsulDouble(ssl_context=server_ctx) as d:
        env = {"CONSUL_HTTP_ADDR": f"https://{d.addr}", "CONSUL_CACERT": pki["ca"],
               "CONSUL_CLIENT_CERT": pki["client"], "CONSUL_CLIENT_KEY": pki["client_key"]}
        good = ConsulRegistry(ConsulOptions.from_env(env, **FAST))
        bare = ConsulRegistry(ConsulOptions.from_env(
            {"CONSUL_HTTP_ADDR": f"https://{d.addr}", "CONSUL_CACERT": pki["ca"]}, **FAST))
        try:
            await good.register(make_instance("orderd", 1))
            assert "orderd-1" in d.services
            with pytest.raises(RegistryError):  # no client certificate: handshake refused
                await bare.register(make_instance("orderd", 2))
        finally:
            await good.close()
            await bare.close()


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl_s": -1.0}, "ttl_s must be > 0, got -1.0"),
        ({"wait_s": 0}, "wait_s must be > 0, got 0"),
        ({"wait_s": 601.0}, "wait_s must be <= 600 (Consul's limit), got 601.0"),
        ({"check_interval_s": "10s"}, "check_interval_s must be a number of seconds, got '10s'"),
        ({"backoff_base_s": 2.0, "backoff_max_s": 1.0}, "got 1.0"),
        ({"check": "http"}, "got 'http'"),
        ({"scheme": "ftp"}, "got 'ftp'"),
        ({"addr": "unix:///tmp/consul.sock"}, "got 'unix:///tmp/consul.sock'"),
        ({"addr": "127.0.0.1:99999"}, "got '127.0.0.1:99999'"),
        ({"addr": "http://"}, "got 'http://'"),
        ({"ca_file": "/nonexistent/ca.pem"}, "got '/nonexistent/ca.pem'"),
        ({"request_timeout_s": float("nan")}, "request_timeout_s must be > 0, got nan"),
        ({"watch_query_interval_s": 0}, "watch_query_interval_s must be > 0, got 0"),
        ({"fault_grace_s": -1.0}, "fault_grace_s must be >= 0, got -1.0"),
        # a re-registered gRPC-checked instance starts critical: reaped before its check
        ({"check": "grpc", "check_interval_s": 60.0, "deregister_critical_after_s": 60.0},
         "check_interval_s must be < deregister_critical_after_s=60.0 with check='grpc', "
         "got 60.0"),
    ],
)
def test_options_validation_quotes_bad_value(kwargs: dict[str, Any], message: str) -> None:
    """Invalid options raise ConfigError whose message quotes the offending value."""
    with pytest.raises(ConfigError) as info:
        ConsulOptions(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("field", ["ttl_s", "check_interval_s", "deregister_critical_after_s"])
def test_durations_past_gos_range_are_refused(field: str) -> None:
    """The agent reads these as Go durations (int64 nanoseconds, about 292 years at
    most): 1e10 s was accepted, sent as "10000000000s", and every register() was refused
    by the agent (time.ParseDuration fails). It is a ConfigError quoting it; the longest
    Go duration in whole seconds is accepted."""
    with pytest.raises(ConfigError, match=field) as info:
        ConsulOptions(**{field: 1e10})
    assert "10000000000.0" in str(info.value)
    longest = (2**63 - 1) // 10**9
    kwargs: dict[str, Any] = {field: longest}
    if field == "check_interval_s":
        kwargs["deregister_critical_after_s"] = longest
    assert getattr(ConsulOptions(**kwargs), field) == longest


def test_options_tls_file_rules(tmp_path: Path) -> None:
    """key_file needs cert_file; a client cert goes with verify=False too (as Consul's
    client presents it: tests/discovery/test_consul_tls_trust.py)."""
    f = tmp_path / "x.pem"
    f.write_text("x")
    with pytest.raises(ConfigError, match="key_file needs cert_file"):
        ConsulOptions(key_file=str(f))
    assert ConsulOptions(cert_file=str(f), verify=False).verify is False


def test_options_defaults_and_token_never_shown() -> None:
    """Defaults are the documented ones and the token stays out of repr."""
    o = ConsulOptions(token="tok-abc")
    assert (o.addr, o.check, o.wait_s, o.ttl_s, o.base_url, o.watch_query_interval_s) == (
        "127.0.0.1:8500", "ttl", 30.0, 15.0, "http://127.0.0.1:8500", 1.0)
    assert "tok-abc" not in repr(o)
    with pytest.raises(ConfigError) as info:
        ConsulOptions(token="bad\ntoken")
    assert "bad" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"base_url": "http://127.0.0.1:8500", "token": None, "verify": True}),
        ({"CONSUL_HTTP_ADDR": "10.1.2.3:8500"}, {"base_url": "http://10.1.2.3:8500"}),
        ({"CONSUL_HTTP_ADDR": "https://consul.example:8501"},
         {"base_url": "https://consul.example:8501", "host": "consul.example"}),
        ({"CONSUL_HTTP_ADDR": "consul.example", "CONSUL_HTTP_SSL": "true"},
         {"base_url": "https://consul.example:8501"}),
        ({"CONSUL_HTTP_ADDR": "[::1]:8500"}, {"base_url": "http://[::1]:8500", "host": "::1"}),
        ({"CONSUL_HTTP_TOKEN": "tok-1", "CONSUL_HTTP_SSL_VERIFY": "false"},
         {"token": "tok-1", "verify": False}),
        ({"CONSUL_HTTP_SSL": "0", "CONSUL_HTTP_TOKEN": ""}, {"scheme": None, "token": None}),
    ],
)
def test_from_env(env: dict[str, str], expected: dict[str, Any]) -> None:
    """from_env reads Consul's CLI variables like the consul command does."""
    opts = ConsulOptions.from_env(env)
    for name, value in expected.items():
        assert getattr(opts, name) == value, name


def test_from_env_reads_the_token_file(tmp_path: Path) -> None:
    """``CONSUL_HTTP_TOKEN_FILE`` (Consul's CLI variable: the path of a file holding the ACL
    token, how Vault agent, Kubernetes secrets or Nomad templates hand it over) was ignored:
    the registry ran anonymous, register() failed 403 and a client that only discovers got
    Consul's ACL-filtered empty instance list, status() readable. from_env now reads it
    once, stripped of surrounding white space; as in Consul's client the file's token wins
    over ``CONSUL_HTTP_TOKEN``, which serves only when the file holds nothing; an explicit
    ``token`` override wins over both, the file then not read."""
    token_file = tmp_path / "consul.token"
    token_file.write_text("8f5c1f0e-token-from-file\n")
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:8500", "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
    assert ConsulOptions.from_env(env).token == "8f5c1f0e-token-from-file"
    both = {**env, "CONSUL_HTTP_TOKEN": "from-env"}
    assert ConsulOptions.from_env(both).token == "8f5c1f0e-token-from-file"
    assert ConsulOptions.from_env(both, token="explicit").token == "explicit"
    assert ConsulRegistry.from_uri("consul://h:8500", environ=env).options.token == (
        "8f5c1f0e-token-from-file")
    token_file.write_text(" \n")
    assert ConsulOptions.from_env(both).token == "from-env"


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot be read"),
    (b"", "holds no token"),
    (b"tok-one\ntok-two\n", "one token on one line"),
    (b"\xff\xfe-secret", "not UTF-8 text"),
])
def test_from_env_refuses_an_unusable_token_file(
    tmp_path: Path, content: bytes | None, message: str,
) -> None:
    """A token file that cannot be read, holds nothing (CONSUL_HTTP_TOKEN unset too) or is
    no single-line text is a ConfigError naming the variable and the path, never quoting
    what the file holds: not a registry that silently runs anonymous."""
    path = tmp_path / "missing.token" if content is None else tmp_path / "consul.token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        ConsulOptions.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)})
    text = str(info.value)
    assert "CONSUL_HTTP_TOKEN_FILE" in text and str(path) in text
    assert all(secret not in text for secret in ("tok-one", "tok-two", "secret"))
    assert ConsulOptions.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)},
                                  token="explicit").token == "explicit"


def test_from_env_tls_files_and_overrides(tmp_path: Path) -> None:
    """CONSUL_CACERT/CLIENT_CERT/CLIENT_KEY map to the TLS fields; keyword overrides win."""
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = str(tmp_path / f"{name}.pem")
        Path(files[name]).write_text("pem")
    env = {"CONSUL_HTTP_ADDR": "https://h:8501", "CONSUL_CACERT": files["ca"],
           "CONSUL_CLIENT_CERT": files["cert"], "CONSUL_CLIENT_KEY": files["key"],
           "CONSUL_HTTP_TOKEN": "from-env"}
    opts = ConsulOptions.from_env(env, token="explicit", check="grpc")
    assert (opts.ca_file, opts.cert_file, opts.key_file) == (
        files["ca"], files["cert"], files["key"])
    assert (opts.token, opts.check) == ("explicit", "grpc")
    with pytest.raises(ConfigError, match="'maybe'"):
        ConsulOptions.from_env({"CONSUL_HTTP_SSL": "maybe"})
    with pytest.raises(ConfigError, match="nope"):
        ConsulOptions.from_env({}, nope=1)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("consul://127.0.0.1:8500", {"base_url": "http://127.0.0.1:8500", "check": "ttl"}),
        ("consul+https://consul.example:8501", {"base_url": "https://consul.example:8501"}),
        ("consul+http://h:1234?check=grpc&ttl_s=5&verify=false&wait_s=10",
         {"base_url": "http://h:1234", "check": "grpc", "ttl_s": 5.0, "verify": False,
          "wait_s": 10.0}),
        ("consul://h:8500?watch_query_interval_s=0.25", {"watch_query_interval_s": 0.25}),
        ("consul://h:8500?ttl_s=6", {"fault_grace_s": 6.0}),  # default: one TTL
        ("consul://h:8500?fault_grace_s=0", {"fault_grace_s": 0.0}),  # 0: off
        ("consul://", {"base_url": "http://env-host:8500"}),
        # consul+https without a host keeps CONSUL_HTTP_ADDR but never loses the TLS
        ("consul+https://", {"base_url": "https://env-host:8500", "scheme": "https"}),
        ("consul+https:///?wait_s=5", {"base_url": "https://env-host:8500", "wait_s": 5.0}),
        ("consul+https://?scheme=http", {"base_url": "https://env-host:8500"}),
    ],
)
def test_from_uri(uri: str, expected: dict[str, Any]) -> None:
    """URIs set the address and scheme, query parameters set options, the env token applies."""
    env = {"CONSUL_HTTP_TOKEN": "env-token", "CONSUL_HTTP_ADDR": "env-host:8500"}
    reg = ConsulRegistry.from_uri(uri, environ=env)
    assert reg.options.token == "env-token"
    for name, value in expected.items():
        assert getattr(reg.options, name) == value, name


@pytest.mark.parametrize(
    ("env", "base_url"),
    [({}, "https://127.0.0.1:8500"),
     ({"CONSUL_HTTP_ADDR": "http://10.0.0.1:8500"}, "https://10.0.0.1:8500"),
     ({"CONSUL_HTTP_ADDR": "10.0.0.1:8500", "CONSUL_HTTP_SSL": "false"},
      "https://10.0.0.1:8500")],
)
def test_from_uri_https_without_host_keeps_https(env: dict[str, str], base_url: str) -> None:
    """``consul+https://`` with no host takes the address from CONSUL_HTTP_ADDR (or the
    default) and still speaks https, so the ACL token never goes out in clear text."""
    opts = ConsulOptions.from_uri("consul+https://", environ={**env, "CONSUL_HTTP_TOKEN": "t"})
    assert opts.effective_scheme == "https"
    assert opts.base_url == base_url


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("consul://user:pw@h:8500", "must not carry user info"),
        ("consul://h:8500?token=abc", "not accepted in a Consul URI"),
        ("consul://h:8500?bogus=1", "'bogus'"),
        ("consul://h:8500?ttl_s=soon", "got 'soon'"),
        ("consul://h:8500/path", "got '/path'"),
        ("etcd://h:2379", "got 'etcd'"),
    ],
)
def test_from_uri_rejects(uri: str, message: str) -> None:
    """Bad URIs raise ConfigError naming the bad part; a token in the URI is refused unquoted."""
    with pytest.raises(ConfigError) as info:
        ConsulOptions.from_uri(uri, environ={})
    assert message in str(info.value)
    assert "pw" not in str(info.value) and "abc" not in str(info.value)


@pytest.mark.parametrize("uri", [
    "consul://tok:pa/SECRETXYZ@127.0.0.1:8500",      # '/' in a password (base64 ones)
    "consul://tok:SECRETXYZ?x@127.0.0.1:8500",       # '?' in a password
    "consul://tok:SECRETXYZ?ttl_s=5@127.0.0.1:8500",
    "consul+https://tok:pa#SECRETXYZ@127.0.0.1:8500",
    "consul://SECRETXYZ/@127.0.0.1:8500",
    "consul://tok:SECRETXYZ?ca_file=x@127.0.0.1:8500",  # netloc 'tok:SECRETXYZ' left
])
def test_from_uri_user_info_whatever_the_password_holds_is_refused_unquoted(
        uri: str) -> None:
    """User info whose password holds an unencoded '/', '?' or '#' is refused as user
    info, quoting nothing of it. The URI parser ended the netloc at that character: the
    "takes no path" error quoted the path (the password's tail), the port check of
    CONSUL_HTTP_ADDR's rules quoted 'tok:SECRETXYZ'."""
    with pytest.raises(ConfigError) as info:
        ConsulOptions.from_uri(uri, environ={})
    assert "SECRETXYZ" not in str(info.value), str(info.value)
    assert "must not carry user info" in str(info.value)



@pytest.mark.parametrize("build", [
    lambda: ConsulOptions(addr="[::1:8500"),
    lambda: ConsulOptions(addr="http://[::1:8500"),
    lambda: ConsulOptions(addr="::1]:8500"),
    lambda: ConsulOptions.from_uri("consul://[::1:8500", environ={}),
    lambda: ConsulOptions.from_env({"CONSUL_HTTP_ADDR": "[::1:8500"}),
], ids=["addr", "addr-scheme", "addr-close", "from_uri", "env"])
def test_an_unbalanced_bracket_is_a_config_error_quoting_the_address(
        build: Callable[[], object]) -> None:
    """A typo'd IPv6 literal (``[::1:8500``, its ``]`` left out) raised urllib's bare
    ``ValueError('Invalid IPv6 URL')``, naming neither the option nor the value, where
    every other bad address or URI is a ConfigError quoting it."""
    with pytest.raises(ConfigError, match=r"::1") as info:
        build()
    assert "Invalid IPv6 URL" not in str(info.value)


def test_a_tls_file_path_holding_an_at_sign_is_no_user_info(tmp_path: Path) -> None:
    """23e81ca refused any '@' after '//' as user info or a token. An '@' is plain URI
    text in a query (RFC 3986 pchar), and TLS files live in such directories: a systemd
    template unit's credentials (``/run/credentials/orderd@1.service/``), an AD-joined
    machine's home (``/home/john@corp.com/``). ``?ca_file=<that path>`` failed "... or a
    token (it holds '@'); set CONSUL_HTTP_TOKEN instead", naming neither the real cause
    nor the way out. Now an '@' in the value of ca_file, cert_file or key_file is taken
    as written; one anywhere else is still refused, the error saying to write it %40."""
    ca_dir = tmp_path / "orderd@1.service"
    ca_dir.mkdir()
    ca = ca_dir / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    options = ConsulOptions.from_uri(f"consul+https://127.0.0.1:8501?ca_file={ca}",
                                     environ={})
    assert options.ca_file == str(ca)
    assert options.base_url == "https://127.0.0.1:8501"
    with pytest.raises(ConfigError, match="%40"):
        ConsulOptions.from_uri("consul://127.0.0.1:8500?check=a@b", environ={})


def test_an_unbalanced_bracket_after_user_info_is_quoted_masked() -> None:
    """Its error quotes the address or URI with the user info masked, as the others."""
    for build in (lambda: ConsulOptions(addr="http://tok:SECRETXYZ@[::1:8500"),
                  lambda: ConsulOptions.from_uri("consul://tok:SECRETXYZ@[::1:8500",
                                                 environ={})):
        with pytest.raises(ConfigError) as info:
            build()
        assert "SECRETXYZ" not in str(info.value) and "***@[::1:8500" in str(info.value)


def test_default_options_come_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ConsulRegistry() with no options is configured by CONSUL_HTTP_ADDR like the CLI."""
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "https://envhost:9501")
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    assert ConsulRegistry().options.base_url == "https://envhost:9501"
    assert os.environ["CONSUL_HTTP_ADDR"] == "https://envhost:9501"


async def test_options_token_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token in the options is the one sent, even where py-consul would prefer the env's."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "env-token-should-not-be-sent")
    async with ConsulDouble(required_token="good") as d:
        async with ConsulRegistry(_opts(d, token="good")) as reg:
            assert isinstance(reg, Registry)
            await reg.register(make_instance("orderd", 1))
        async with ConsulRegistry(_opts(d)) as anonymous:  # token=None: anonymous
            with pytest.raises(RegistryError, match="HTTP 403: Permission denied"):
                await anonymous.register(make_instance("orderd", 2))
        # each register() first looks its id up (GET /v1/agent/service/<id>), then PUTs
        assert [r.token for r in d.requests] == ["good", "good", None, None]


# -- event loops: asyncio.run() again, a loop per thread -----------------------------------
@pytest.fixture
def double_thread() -> Iterator[ConsulDouble]:
    """A Consul double served by a loop in a thread of its own, living across the test's
    event loops."""
    thread = LoopThread()

    async def start() -> ConsulDouble:
        double = ConsulDouble()
        await double.start()
        return double

    double = thread.run(start())
    try:
        yield double
    finally:
        thread.run(double.close())
        thread.close()


async def _first_set(reg: ConsulRegistry, service: str) -> list[str]:
    """The ids of the first set a new watch of ``service`` yields."""
    watch = cast(AsyncGenerator[frozenset[Instance], None], reg.watch(service))
    try:
        return sorted(x.instance_id for x in await watch.__anext__())
    finally:
        await watch.aclose()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_works_in_a_later_asyncio_run(double_thread: ConsulDouble, host: str) -> None:
    """A registry used in one ``asyncio.run()`` works in the next (a script with two
    phases, pytest-asyncio's loop per test with a registry built once): register,
    watch and close work, and an instance registered again there is kept alive by a
    keeper of the new loop. Its py-consul/aiohttp client (and the CloseRace event) stayed
    bound to the first, closed loop: register() raised a bare ``RuntimeError: Event loop
    is closed`` (not RegistryError) and so did watch() (documented never to raise for
    agent errors); and register() of an id whose keeper died with the first loop took it
    as kept alive already. By host name too: the lookup threads serve every loop and end
    at close()."""
    service = unique_service()
    reg = ConsulRegistry(ConsulOptions(addr=f"{host}:{double_thread.port}", **FAST))
    one, two = make_instance(service, 1), make_instance(service, 2)

    async def phase(*instances: Instance) -> list[str]:
        async with asyncio.timeout(8):
            for inst in instances:
                await reg.register(inst)
            return await _first_set(reg, service)

    async def kept_alive() -> str | None:
        def status() -> str | None:
            check = double_thread.service_check(one.instance_id)
            return None if check is None else check.status

        # only a keeper of this loop passes it: three passes (a TTL's worth) come through,
        # or, with none, it goes critical one TTL after register()
        passes = double_thread.service_passes[one.instance_id]
        await until(lambda: double_thread.service_passes[one.instance_id] >= passes + 3
                    or status() != "passing", timeout_s=8.0,
                    what="three passes or a lapsed check")
        return status()

    async def close() -> None:
        async with asyncio.timeout(8):
            await reg.close()

    try:
        assert run_loop(phase(one)) == [one.instance_id]
        assert run_loop(phase(two)) == [one.instance_id, two.instance_id]
        assert run_loop(phase(one)) == [one.instance_id, two.instance_id]
        # the same loop that registered it again keeps it alive
        assert run_loop(_then(phase(one), kept_alive())) == "passing"
    finally:
        run_loop(close())
    threads = list(reg._dns.pool._threads)
    assert bool(threads) == (host == "localhost"), threads  # IP addresses: no lookup
    run_loop(until(lambda: not any(t.is_alive() for t in threads),
                   what="the lookup threads to end after close()"))


_FORK_SCRIPT = lookup_after_fork_script("""
    from meshkit.discovery._consul import ConsulOptions, ConsulRegistry

    reg = ConsulRegistry(ConsulOptions(addr=f"localhost:{sys.argv[2]}",
                                       request_timeout_s=2.0))
    closed = ConsulRegistry(ConsulOptions(addr=f"localhost:{sys.argv[2]}",
                                          request_timeout_s=2.0))
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_look_the_agent_up(double_thread: ConsulDouble) -> None:
    """A registry built and used in a parent process (a readiness check of the agent,
    say) and then used in a child made by ``os.fork()`` (a pre-fork worker model;
    multiprocessing's fork start method) reaches the agent by host name there, as it
    does from one asyncio.run() to the next. The lookup pool (a ThreadPoolExecutor) was
    inherited: its threads do not exist in the child, but its idle semaphore said one was
    idle, so submit() started none and every lookup of the agent's name waited for good
    (each request timed out, register() failed, TTL checks went critical). Now the child
    has a pool of its own (``os.register_at_fork``); a registry closed before the fork
    stays closed in the child; the parent's pool serves on. In a subprocess: the test's
    own process has threads a fork would copy."""
    lines, out = forked(_FORK_SCRIPT, str(double_thread.port), timeout_s=40)
    check_lookup_after_fork(lines, out, "the agent's name")


_WORKERS_JITTER = workers_jitter_script("""
    import random
    from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
    from tests.support.loops import LoopThread

    given = sys.argv[3] == "given"
    reg = ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{sys.argv[2]}",
                                       request_timeout_s=2.0),
                         rng=random.Random(7) if given else None)
    master = LoopThread()  # a pre-fork master that used the registry, then forks workers
    master.run(reg.services())

    async def leave():
        await reg.close()
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("rng", ["default", "given"])
def test_workers_forked_from_one_registry_draw_different_backoff_jitter(
        double_thread: ConsulDouble, rng: str) -> None:
    """A registry built with the default ``rng`` (a ``random.Random()`` seeded once, at
    construction) and used by a pre-fork master: every worker forked from it inherited
    the generator's state, so all of them drew the same "random" backoff delays, and
    after an agent's restart every worker's heartbeat and watch retries fired in
    lock-step: the thundering herd full jitter exists to break up (CPython reseeds its
    own module-level generator in a forked child for this reason, ``Lib/random.py``).
    Now a forked child reseeds a generator the registry made itself (the registry's
    ``os.register_at_fork`` hook). ``given``: a generator the caller passed is the
    caller's and is left alone (a test's seeded one draws the same in every worker),
    which also shows the comparison can see equal draws (found by a review of
    542f7d1)."""
    lines, out = forked(_WORKERS_JITTER, str(double_thread.port), rng)
    check_workers_jitter(lines, out, rng)


_FORK_WHILE_LOCKED = textwrap.dedent("""
    import asyncio, os, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
    from meshkit.discovery._types import Instance
    from meshkit.errors import RegistryError

    held = sys.argv[3] == "held"
    reg = ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{sys.argv[2]}",
                                       request_timeout_s=1.0))
    taken = threading.Event()

    def another_loop_thread():
        # stands for another thread of the parent inside _get_client's critical section
        # (a loop of its own adding its client) at the moment of the fork
        with reg._clients_lock:
            taken.set()
            time.sleep(3)

    if held:
        threading.Thread(target=another_loop_thread, daemon=True).start()
        taken.wait(5)
    pid = os.fork()
    if pid == 0:
        def watchdog():
            time.sleep(8)
            print("child: hung (the child's event loop thread is blocked)", flush=True)
            os._exit(0)

        threading.Thread(target=watchdog, daemon=True).start()

        async def child():
            try:
                await asyncio.wait_for(reg.register(Instance(
                    service="svc", instance_id="svc-1", host="127.0.0.1", port=1)), 5)
                return "ok"
            except RegistryError:
                return "RegistryError"  # the agent is down: answered, not hung
            except BaseException as exc:
                return type(exc).__name__

        print("child:", asyncio.run(child()), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    print("parent: ok", flush=True)
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("mode", ["held", "control"])
def test_a_registry_forked_while_another_thread_holds_its_lock_works_in_the_child(
        mode: str) -> None:
    """A registry whose ``_clients_lock`` (a ``threading.Lock`` taken by ``_get_client``
    as a loop adds its client) another thread of the parent held at ``os.fork()``: the
    child inherited it held by a thread that does not exist there, and blocked for good
    on the first request of its own loop, inside the event loop's thread ("hung": not
    an await, so no ``wait_for`` could end it, nor a SIGTERM handler run), though the
    class docstring promises a registry used before a fork works in the child. The
    window is short (a dict comprehension), shown here by a thread holding the lock
    across the fork. Now the child gets a new lock (``os.register_at_fork``, as the etcd
    registry's child does). ``control``: the lock is free; the agent is down, so the
    child's register() answers ``RegistryError`` (found by a review of fbfaa0b)."""
    lines, out = forked(_FORK_WHILE_LOCKED, str(_free_port()), mode, timeout_s=40)
    assert lines.get("parent") == "ok", out
    assert lines.get("child") == "RegistryError", (
        f"the forked child's register() with the agent down: {lines.get('child')!r} "
        f"(expected a RegistryError: the lock was held by a parent's thread at the fork)")


_CONNECTIONS_AFTER_CLOSE = connections_after_close_script("""
    from meshkit.discovery._consul import ConsulOptions, ConsulRegistry

    def registry(port):  # heartbeats every ttl_s / 3 (0.25 s); the watch a long poll
        return ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{port}", ttl_s=0.75, wait_s=30,
                                            request_timeout_s=2.0))
""")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc/net/tcp")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("mode", ["fork", "control"])
def test_a_masters_connections_end_at_its_close_while_a_forked_worker_lives(
        double_thread: ConsulDouble, mode: str) -> None:
    """A pre-fork master registered and watched, forked a worker (which never touches the
    registry), then closed its registry: its connections to the agent stayed ESTABLISHED
    for as long as the worker lived, its long poll among them. The worker's copies of
    their sockets (in the parent's clients the child kept) held them open, so the
    master's close sent no FIN; so would every connection the master recycles later,
    until every worker forked while it was open exited (an agent limits connections per
    client address: ``limits.http_max_conns_per_client``). Now the child drops its
    copies of those descriptors at the fork (``/dev/null`` ``dup2``-ed over them: see
    :func:`~meshkit.discovery._resolver.drop_inherited_sockets`), as the etcd registry's
    child does. ``control``: no fork, the connections close."""
    lines, out = forked(_CONNECTIONS_AFTER_CLOSE, str(double_thread.port), mode,
                        unique_service())
    check_connections_after_close(lines, out, "agent")


_PARENT_AFTER_FORK = parent_after_fork_script("""
    from meshkit.discovery import _consul
    from meshkit.discovery._consul import ConsulOptions, ConsulRegistry

    def registry(port):
        # a long poll the agent never answers ends after wait_s * 17/16 + request_timeout_s
        # (36 s): not before the bound the script waits for
        return ConsulRegistry(ConsulOptions(addr=f"127.0.0.1:{port}", wait_s=30,
                                            request_timeout_s=4.0))

    def let_go(reg):  # the parent's clients
        reg._clients = {}
        getattr(_consul, "_inherited", []).clear()
""")


@pytest.mark.timeout(90)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("worker", ["live", "collect"])
def test_a_forked_worker_leaves_its_masters_watch_and_requests_undisturbed(
        double_thread: ConsulDouble, worker: str) -> None:
    """A pre-fork master watching a service and holding a pooled connection forks a
    worker, then registers two instances: each register() answers and the master's
    watch lists each at once. ``live``: the worker lives on meanwhile (its copies of the
    master's socket descriptors were replaced with ``/dev/null`` at the fork, which
    leaves the master's sockets, and their registrations with the epoll instance parent
    and child share, as they were). ``collect``: the worker collects the parent's
    clients it inherited, as an interpreter's exit may: their connectors close their
    transports through the child's copy of the parent's event loop, whose
    ``epoll_ctl(EPOLL_CTL_DEL)`` on that shared instance removed the master's own
    registrations of those sockets, so the master's long poll and its next request on
    the pooled connection got no answer. Now those descriptors name ``/dev/null`` in the
    child by then, so the call fails there, harmlessly."""
    lines, out = forked(_PARENT_AFTER_FORK, str(double_thread.port), worker,
                        unique_service(), timeout_s=80)
    # at once when undisturbed; a silenced long poll ends after 36 s
    check_master_undisturbed(lines, out)

async def _then(first: Awaitable[object], second: Awaitable[_T]) -> _T:
    await first
    return await second


@pytest.mark.timeout(40)
def test_used_from_two_running_loops_and_closed_from_one(
        double_thread: ConsulDouble) -> None:
    """One registry used by two loops running at once (servers in two threads): each
    registers and watches with a client of its own loop, and close() in one ends the
    other's watch and keeper in that loop (both iterators finish, nothing raises)."""
    service = unique_service()
    reg = ConsulRegistry(ConsulOptions(addr=double_thread.addr, **FAST))
    other = LoopThread()
    try:
        one, two = make_instance(service, 1), make_instance(service, 2)
        other.run(reg.register(one))
        sets: list[list[str]] = []

        async def watch_until_closed() -> None:
            async for found in reg.watch(service):
                sets.append(sorted(x.instance_id for x in found))

        watching = asyncio.run_coroutine_threadsafe(watch_until_closed(), other.loop)

        async def register_watch_close() -> list[str]:
            async with asyncio.timeout(8):
                await reg.register(two)
                first = await _first_set(reg, service)
                await until(lambda: [one.instance_id, two.instance_id] in sets,
                            timeout_s=5, what="the other loop's watch sees both")
                await reg.close()
                return first

        assert run_loop(register_watch_close()) == [one.instance_id, two.instance_id]
        watching.result(8)  # ended by close(), in its own loop
        keepers = other.run(_tasks_named("meshkit-consul-keeper-"))
        assert keepers == []
    finally:
        other.close()


async def _tasks_named(prefix: str) -> list[str]:
    await asyncio.sleep(0.1)  # a cancel sent from another thread lands
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefix)]


@pytest.mark.timeout(60)
def test_client_of_an_ended_run_is_closed_not_left_to_gc(
        double_thread: ConsulDouble, caplog: pytest.LogCaptureFixture) -> None:
    """The client a registry made in an ``asyncio.run()`` is closed when that run ends,
    closed or not (a script with phases, pytest-asyncio's loop per test); close() in
    another loop closes those of loops still running, in theirs. One of an ended loop was
    dropped unclosed (at the next loop's first request; close() in a later run skipped
    it): its connections stayed open until the garbage collector logged ``ERROR asyncio:
    Unclosed client session`` and ``Unclosed connector`` for each earlier run."""
    import gc
    import logging

    service = unique_service()
    reg = ConsulRegistry(ConsulOptions(addr=double_thread.addr, **FAST))
    other = LoopThread()

    async def register(n: int) -> None:
        async with asyncio.timeout(8):
            await reg.register(make_instance(service, n))

    async def close() -> None:
        async with asyncio.timeout(8):
            await reg.close()

    gc.collect()  # what earlier tests left (a loop closed with its tasks pending leaks its
    caplog.clear()  # session or client by design): not this test's to report
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            run_loop(register(1))
            run_loop(register(2))
            other.run(register(3))  # a loop still running when close() comes
            run_loop(close())
            assert other.run(_tasks_named("meshkit-consul-client")) == []
            gc.collect()
        unclosed = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
        assert unclosed == []
    finally:
        other.close()


async def _serve_in_background(registry: Any, service: str) -> None:
    """A program whose ``asyncio.run()`` main starts ``serve()`` as a task and returns:
    asyncio.run() then cancels the tasks left, and a cancelled ``serve()`` drains
    (README: "A cancelled serve() ... drain[s] the same way"), deregistering first."""
    started = asyncio.Event()
    asyncio.get_running_loop().create_task(meshkit.serve(
        service, [add_echo("e1")], registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="e1", drain_delay_s=0.0,
                                     grace_s=1.0, admin=None),
        on_started=lambda _server: started.set()))
    async with asyncio.timeout(10):
        await started.wait()


@pytest.mark.timeout(60)
def test_a_serve_task_cancelled_at_the_end_of_its_run_still_deregisters(
        double_thread: ConsulDouble, caplog: pytest.LogCaptureFixture) -> None:
    """0a97d97 gave each loop's py-consul client to a task (meshkit-consul-client) that
    closed it as soon as it was cancelled, relying on asyncio.run() cancelling the tasks
    left at its end. A serve() task left is cancelled in that same sweep and drains: its
    deregister found the client closed and the service stayed registered with the agent
    (its TTL check turning critical, reaped after deregister_critical_after_s). Now the
    client is closed once the tasks cancelled with it have ended."""
    import logging

    service = unique_service()
    reg = ConsulRegistry(ConsulOptions(addr=double_thread.addr, ttl_s=5.0,
                                       deregister_critical_after_s=60.0,
                                       request_timeout_s=1.0))
    with caplog.at_level(logging.WARNING):
        run_loop(_serve_in_background(reg, service))
    failed = [r.getMessage() for r in caplog.records if "deregister failed" in r.getMessage()]
    assert failed == []
    left = [s.id for s in list(double_thread.services.values()) if s.name == service]
    assert left == [], f"still registered with the agent after the serve() task drained: {left}"


async def test_an_agent_outage_is_logged_once_with_reminders_and_its_end(
        double: ConsulDouble, make_registry: Any) -> None:
    """A client watches a service and a server keeps its instance alive, and the Consul
    agent answers HTTP 500 ("No cluster leader") for a while, then comes back.

    Before: the watch logged "consul watch failed; keeping the last known endpoints" at
    every failed retry (one per backoff: ~240 an hour per watched service at the default
    backoff, here dozens in a fraction of a second), ignoring that the status tracker
    said it was neither the start of the outage nor a reminder; and when the agent
    answered again nothing said so (neither for the watch's reads nor for the
    heartbeat's writes: the outage's length was thrown away).

    Now, as the local and etcd registries do (README "Discovery"): one warning when the
    watch's reads start failing, reminders while it lasts (the tracker's, at most every
    60 s; 0.2 s here), one for the heartbeat, and "consul readable again" / "consul
    writable again" at info with the outage's length."""
    from meshkit.discovery._types import StatusTracker

    sleep = FastSleep()
    reg = make_registry(sleep=sleep)
    a = make_instance("orderd", 1)
    await reg.register(a)
    watcher = Collector(reg, "orderd")
    assert await watcher.next() == {a}
    with capture_logs() as logs:
        double.set_down(True)
        await until(lambda: reg.status().read_errors >= 20 and reg.status().write_errors >= 3,
                    what="many failed watch queries and heartbeats")
        double.set_down(False)
        await until(lambda: reg.status().readable is True and reg.status().writable is True,
                    what="reads and writes working again")
    events = [(e["log_level"], e["event"]) for e in logs]
    watch = [e for e in logs if e["event"].startswith("consul watch failed")]
    assert len(watch) == 1 and watch[0]["log_level"] == "warning", events
    beats = [e for e in logs if e["event"].startswith("consul heartbeat failed")]
    assert len(beats) == 1, events
    (read_back,) = [e for e in logs if e["event"] == "consul readable again"]
    (write_back,) = [e for e in logs if e["event"] == "consul writable again"]
    for back in (read_back, write_back):
        assert back["log_level"] == "info" and back["outage_s"] > 0, back
        assert back["agent"] == reg.options.base_url

    # a long outage: reminders, at most one per remind_every_s of the tracker
    reg._tracker = StatusTracker("consul", remind_every_s=0.2)
    with capture_logs() as logs:
        double.set_down(True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await until(lambda: reg.status().read_errors >= 10, what="failing again")
        await asyncio.sleep(0.7)
        failed_for = loop.time() - started
        double.set_down(False)
        await until(lambda: reg.status().readable is True, what="readable again")
    watch = [e for e in logs if e["event"].startswith("consul watch")]
    assert 2 <= len(watch) <= 1 + failed_for / 0.2 + 1, [e["event"] for e in watch]
    assert all("failing_for_s" in e for e in watch[1:]), watch
    assert [e["event"] for e in logs].count("consul readable again") == 1
    await watcher.stop()
