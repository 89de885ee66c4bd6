"""The admin server (or a prometheus-client HTTP server's thread) lists the process's
channels while another thread's event loop dials and closes channels of its own.
Before, listing them iterated the weak set a channel is added to when it is built, and
an add from that other thread meanwhile raised ``RuntimeError: Set changed size during
iteration``: ``/debug/mesh`` and ``/metrics`` answered 500 now and then, and so did
``/readyz`` for servers started that way (a Kubernetes readiness probe failing for a
process that is fine)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import meshkit
from meshkit.discovery import Instance, RegistryStatus
from meshkit.observability import AdminOptions, AdminServer, live_channel_stats, rpc_metrics
from tests.support.loops import LoopThread


class _Empty:
    """A registry double that knows no endpoint (a channel dialed with it connects to
    nothing)."""

    async def register(self, instance: Instance) -> None:
        return None

    async def deregister(self, instance: Instance) -> None:
        return None

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        yield frozenset()
        await asyncio.Event().wait()

    def status(self) -> RegistryStatus:
        return RegistryStatus(kind="double", readable=True, writable=True)

    async def close(self) -> None:
        return None


@pytest.fixture
def thread_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


async def test_routes_answer_while_another_loop_dials_and_closes_channels(
        thread_loop: LoopThread) -> None:
    """Every scrape of a registry from a plain thread (``generate_latest``, as
    prometheus-client's own HTTP server makes it), ``live_channel_stats()`` there, and
    every ``/debug/mesh``, ``/readyz`` and ``/metrics`` answer succeeds while this loop
    keeps 400 channels and another thread's loop dials and closes more (the
    interpreter switching threads often, as a loaded box does)."""
    stop = threading.Event()
    opts = meshkit.DialOptions(insecure=True, telemetry=None)

    async def churn() -> None:
        while not stop.is_set():
            batch = [meshkit.dial("churn", registry=_Empty(), options=opts)
                     for _ in range(20)]
            await asyncio.gather(*(ch.close() for ch in batch))

    kept = [meshkit.dial(f"kept{i}", registry=_Empty(), options=opts) for i in range(400)]
    churning = asyncio.run_coroutine_threadsafe(churn(), thread_loop.loop)
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    await admin.start()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    statuses: dict[str, list[int]] = {"/debug/mesh": [], "/readyz": [], "/metrics": []}
    registry = CollectorRegistry()
    rpc_metrics(registry)  # with the collector reading the live channels and servers

    def scrape_for(seconds: float) -> dict[str, int]:
        failed: dict[str, int] = {}
        end = loop.time() + seconds
        while loop.time() < end:
            for read in (lambda: generate_latest(registry), live_channel_stats):
                try:
                    read()
                except RuntimeError as exc:
                    failed[str(exc)] = failed.get(str(exc), 0) + 1
        return failed

    loop = asyncio.get_running_loop()
    try:
        failed = await asyncio.to_thread(scrape_for, 3.0)
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                for path, got in statuses.items():
                    async with http.get(admin.url + path) as resp:
                        await resp.read()
                        got.append(resp.status)
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        await admin.stop()
        await asyncio.wrap_future(churning)
        await asyncio.gather(*(ch.close() for ch in kept))
    assert not failed
    assert {path: sorted(set(got)) for path, got in statuses.items()} == {
        "/debug/mesh": [200], "/readyz": [200], "/metrics": [200]}
