"""A scrape of ``/metrics`` or a read of ``/debug/mesh`` in a process with many channels to
large services holds the event loop for one channel's snapshot at a time, not for all.

Both read every live channel's ``stats()`` on the loop (the pool and balancer are the
loop's); ``/metrics`` also built every sample and did the collector's bookkeeping there,
all in one callback. Measured with 20 real channels of 1,000 endpoints each (a ticker
every 5 ms beside it, curl scraping): a scrape held the loop about 1,000 ms,
``/debug/mesh`` 220-640 ms; every call in flight waited that long. Now the snapshots are
taken one channel per turn of the loop (the loop serves its calls between two of them)
and the samples are built in the admin server's render thread: 280-310 ms and 30-55 ms,
what is left of the former a full garbage collection (generation 2, 200-430 ms over that
heap) that the scrape's allocations set off, not the scrape's code on the loop.

Counted, not timed: fake channels (a typed snapshot of 2,000 endpoints each) record the
loop turn their ``stats()`` ran in, and the collector's per-object reading records its
thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from meshkit._stats import ChannelStats, EndpointStats, RetrySnapshot
from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability._live import track
from meshkit.observability._metrics import MeshCollector

pytestmark = pytest.mark.timeout(60)

_CHANNELS = 4
_ENDPOINTS = 2000


class _Turns:
    """Counts the turns of the running loop (a task that yields once a turn)."""

    def __init__(self) -> None:
        self.n = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.n += 1
            await asyncio.sleep(0)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class _BigChannel:
    """A live channel to a service of ``_ENDPOINTS`` endpoints, as the readers see it:
    ``stats()`` answers a typed snapshot and records the loop turn it was read in."""

    live = True
    registry = None

    def __init__(self, service: str, turns: _Turns) -> None:
        self.service = service
        self.turns = turns
        self.read_at: list[tuple[int, int]] = []  # (thread, turn)
        self._stats = ChannelStats(
            service=service, state="READY", balancer="P2C", ejections=0, watch_errors=0,
            endpoints=tuple(EndpointStats(
                instance_id=f"{service}-{i:04d}", address=f"10.0.{i // 250}.{i % 250}:50051",
                state="READY", present=True, ejected=False, calls=10 * i, failures=i,
                in_flight=1, rtt_ms=1.5, load_ms=3.0, pending=1) for i in range(_ENDPOINTS)),
            retry=RetrySnapshot(calls=1, retries=0, hedges=0, budget_exhausted=0,
                                gave_up_deadline=0, budget_left=10.0, budget="budget"),
            policies={"timeout_s": 1.0})

    def stats(self) -> ChannelStats:
        self.read_at.append((threading.get_ident(), self.turns.n))
        return self._stats


@pytest.fixture
async def setup() -> AsyncIterator[tuple[AdminServer, list[_BigChannel], _Turns]]:
    turns = _Turns()
    channels = [_BigChannel(f"svc{i}", turns) for i in range(_CHANNELS)]
    for ch in channels:
        track(ch, kind="channel")
    registry = CollectorRegistry()
    registry.register(MeshCollector())
    admin = AdminServer(AdminOptions(registry=registry, require_server=False))
    await admin.start()
    turns.start()
    try:
        yield admin, channels, turns
    finally:
        await turns.stop()
        await admin.stop()
        for ch in channels:
            ch.live = False


def _turns_read_in(channels: list[_BigChannel]) -> list[int]:
    """The loop turn of each channel's latest read (all on the loop's thread)."""
    loop_thread = threading.get_ident()
    turns = []
    for ch in channels:
        thread, turn = ch.read_at[-1]
        assert thread == loop_thread, f"{ch.service} read off its event loop"
        turns.append(turn)
    return turns


async def test_a_scrape_reads_one_channel_per_loop_turn_and_builds_samples_off_it(
        setup: tuple[AdminServer, list[_BigChannel], _Turns],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """During a ``/metrics`` scrape each channel's snapshot is taken on the loop in a turn
    of its own, and the samples are built from them in another thread; the scrape holds
    every channel's series."""
    admin, channels, _turns = setup
    loop_thread = threading.get_ident()
    built_in: set[int] = set()
    real_read = MeshCollector._read

    def read(self: MeshCollector, obj: Any, *args: Any) -> None:
        if isinstance(obj, _BigChannel):
            built_in.add(threading.get_ident())
        real_read(self, obj, *args)

    monkeypatch.setattr(MeshCollector, "_read", read)
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
                http.get(admin.url + "/metrics") as resp):
        assert resp.status == 200
        text = await resp.text()
    for ch in channels:
        last = _ENDPOINTS - 1
        assert (f'meshkit_client_endpoint_calls_total{{instance_id="{ch.service}-{last:04d}",'
                f'target="{ch.service}"}} {10.0 * last}') in text
    turns = _turns_read_in(channels)
    assert len(set(turns)) == _CHANNELS, f"channels read in loop turns {turns}"
    assert built_in and loop_thread not in built_in, "samples built on the event loop"


async def test_debug_mesh_reads_one_channel_per_loop_turn(
        setup: tuple[AdminServer, list[_BigChannel], _Turns]) -> None:
    """``/debug/mesh`` takes each channel's snapshot on the loop in a turn of its own, and
    answers every channel."""
    admin, channels, _turns = setup
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
                http.get(admin.url + "/debug/mesh") as resp):
        assert resp.status == 200
        doc = await resp.json()
    services = {c["service"] for c in doc["channels"]}
    assert {ch.service for ch in channels} <= services
    turns = _turns_read_in(channels)
    assert len(set(turns)) == _CHANNELS, f"channels read in loop turns {turns}"
