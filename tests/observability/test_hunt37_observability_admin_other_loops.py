"""The admin server (and the public ``live_*_stats()`` readers) read a channel or server
that belongs to another thread's event loop on that loop. Before, they called its
``stats()`` from their own thread while its loop changed it: with endpoints coming and
going, a snapshot raised ``dictionary changed size during iteration`` or ``KeyError``
now and then, and the channel was missing from ``/debug/mesh`` and the dashboard (a
server's raise made ``/readyz`` answer 503)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.channel import MeshChannel
from meshkit.discovery import Instance, RegistryStatus
from meshkit.observability import AdminOptions, AdminServer, live_channel_stats
from meshkit.server import MeshServer
from tests.support.echo import add_echo
from tests.support.loops import LoopThread
from tests.support.wait import until


class _Registry:
    """A registry double: ``watch()`` yields ``sets`` endpoint sets, one per loop turn
    (``churn``), or one set and then nothing."""

    def __init__(self, *, churn: bool) -> None:
        self.churn = churn

    async def register(self, instance: Instance) -> None:
        return None

    async def deregister(self, instance: Instance) -> None:
        return None

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        n = 0
        while True:
            base = (n % 50) * 40
            yield frozenset(Instance(service=service, instance_id=f"i{base + k}",
                                     host="127.0.0.1", port=1000 + base + k)
                            for k in range(40))
            n += 1
            if not self.churn:
                await asyncio.Event().wait()
            await asyncio.sleep(0)

    def status(self) -> RegistryStatus:
        return RegistryStatus(kind="double", readable=True, writable=True)

    async def close(self) -> None:
        return None


@pytest.fixture
def thread_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body = await (resp.json() if "json" in resp.headers["Content-Type"]
                      else resp.text())
        return resp.status, body


async def test_the_admin_server_reads_another_loops_channel_and_server_on_that_loop(
        thread_loop: LoopThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/debug/mesh``, ``/readyz``, the dashboard's JSON and ``/metrics`` of an admin
    server on this loop call ``stats()`` of a channel and a server started on another
    thread's loop in that thread, and list them."""
    where: dict[str, set[int]] = {"channel": set(), "server": set()}
    channel_stats, server_stats = MeshChannel.stats, MeshServer.stats

    def on_channel(self: MeshChannel) -> Any:
        if self.service == "elsewhere":
            where["channel"].add(threading.get_ident())
        return channel_stats(self)

    def on_server(self: MeshServer) -> Any:
        if self.service == "elsewhere":
            where["server"].add(threading.get_ident())
        return server_stats(self)

    monkeypatch.setattr(MeshChannel, "stats", on_channel)
    monkeypatch.setattr(MeshServer, "stats", on_server)

    async def start() -> tuple[MeshChannel, MeshServer, int]:
        srv = meshkit.MeshServer("elsewhere", [add_echo("e1")],
                                 registry=_Registry(churn=False),
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id="t1", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=None))
        await srv.start()
        ch = meshkit.dial("elsewhere", registry=_Registry(churn=False),
                          options=meshkit.DialOptions(insecure=True, telemetry=None))
        try:
            # known (none listens: not READY)
            await until(lambda: len(ch.stats().endpoints) >= 40, what="endpoints")
        except BaseException:
            await stop(ch, srv)
            raise
        return ch, srv, threading.get_ident()

    async def stop(ch: MeshChannel, srv: MeshServer) -> None:
        await ch.close()
        await srv.drain()

    ch, srv, thread = thread_loop.run(start())
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    await admin.start()
    try:
        status, mesh = await _get(admin.url + "/debug/mesh")
        assert status == 200
        assert [c["service"] for c in mesh["channels"]].count("elsewhere") == 1
        assert [s["service"] for s in mesh["servers"]].count("elsewhere") == 1
        status, ready = await _get(admin.url + "/readyz?service=elsewhere")
        assert status == 200, ready
        status, feed = await _get(admin.url + "/debug/dashboard.json")
        assert status == 200
        assert "elsewhere" in [c["service"] for c in feed["channels"]]
        status, text = await _get(admin.url + "/metrics")
        assert status == 200
        assert 'meshkit_client_endpoints{state="' in text
        assert 'target="elsewhere"} 40.0' in text
        assert where == {"channel": {thread}, "server": {thread}}, (where, thread)
    finally:
        await admin.stop()
        thread_loop.run(stop(ch, srv))


async def test_a_channel_whose_endpoints_churn_on_another_loop_is_always_listed(
        thread_loop: LoopThread) -> None:
    """A channel on another thread's loop whose endpoint set changes every loop turn is
    in every ``live_channel_stats()`` read from a plain thread and every ``/debug/mesh``
    answer (the interpreter switching threads often, as a loaded box does)."""
    async def start() -> MeshChannel:
        ch = meshkit.dial("churning", registry=_Registry(churn=True),
                          options=meshkit.DialOptions(insecure=True, telemetry=None,
                                                      drain_timeout_s=0.0))
        await until(lambda: bool(ch.stats().endpoints), what="endpoints")
        return ch

    async def close(ch: MeshChannel) -> None:
        await ch.close()
        await asyncio.sleep(0.2)  # the sub-channels of endpoints that left close

    ch = thread_loop.run(start())
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    await admin.start()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        def read_for(seconds: float) -> tuple[int, int]:
            reads = missing = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                reads += 1
                if "churning" not in [s.service for s in live_channel_stats()]:
                    missing += 1
            return reads, missing

        reads, missing = await asyncio.to_thread(read_for, 2.0)
        assert reads > 20
        assert missing == 0, f"missing from {missing} of {reads} reads"
        http_missing = 0
        for _ in range(30):
            status, mesh = await _get(admin.url + "/debug/mesh")
            assert status == 200
            if "churning" not in [c["service"] for c in mesh["channels"]]:
                http_missing += 1
        assert http_missing == 0
    finally:
        sys.setswitchinterval(switch)
        await admin.stop()
        thread_loop.run(close(ch))
