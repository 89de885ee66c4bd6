"""``/debug/mesh`` and ``/debug/dashboard.json`` do not stall the event loop: the live
dashboard polls ``/debug/dashboard.json`` every second, and both answers were turned into
dicts (``dataclasses.asdict`` of every endpoint) and JSON on the loop the process's gRPC
server and channels run on. For a channel to a 2,000-endpoint service that held the loop
~35-45 ms per request on a 2-core box, once a second while someone watched the dashboard:
every call in flight waited that long (what ``/metrics`` already avoids by rendering in
the admin server's own threads). The snapshots are still taken on the loop (``stats()``
reads state only the loop may touch); the conversion and encoding now run in the admin
server's render threads."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client import CollectorRegistry

from meshkit._stats import ChannelStats, EndpointStats, RetrySnapshot, json_safe
from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability._live import track

_ENDPOINTS = 2000


class _BigChannel:
    """A live channel to a service of ``_ENDPOINTS`` endpoints as ``/debug/mesh`` sees it:
    the typed snapshot ``MeshChannel.stats()`` answers, and the threads that asked."""

    live = True

    def __init__(self, n: int) -> None:
        self.read_in: set[int] = set()
        self._stats = ChannelStats(
            service="orderd", state="READY", balancer="P2C", ejections=0, watch_errors=0,
            endpoints=tuple(EndpointStats(
                instance_id=f"orderd-{i:04d}", address=f"10.0.{i // 250}.{i % 250}:50051",
                state="READY", present=True, ejected=False, calls=10 * i, failures=i,
                in_flight=1, rtt_ms=1.5, load_ms=3.0, pending=1) for i in range(n)),
            retry=RetrySnapshot(calls=1, retries=0, hedges=0, budget_exhausted=0,
                                gave_up_deadline=0, budget_left=10.0, budget="budget"),
            policies={"timeout_s": float("inf")})

    def stats(self) -> ChannelStats:
        self.read_in.add(threading.get_ident())
        return self._stats


async def _largest_loop_gap_s(request: Callable[[], Awaitable[None]]) -> float:
    """The longest this loop went without running a 1 ms ticker while ``request()`` ran."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.get_running_loop().create_task(ticker())
    try:
        await asyncio.sleep(0.02)
        await asyncio.wait_for(request(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return max(gaps)


def _strict_json(text: str) -> object:
    """``text`` parsed as RFC 8259 JSON: ``Infinity``/``NaN`` refused (as ``JSON.parse``)."""

    def refuse(token: str) -> float:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


async def test_debug_json_of_a_2000_endpoint_channel_does_not_stall_the_event_loop() -> None:
    """Each of ``/debug/mesh`` and ``/debug/dashboard.json`` holds the loop less than half
    of what converting and encoding the same snapshot takes on it (measured here and now,
    best of 3; the largest gap best of 5 requests, so a loaded machine slows both alike),
    answers the whole snapshot as strict JSON, and reads the channel on the loop."""
    big = _BigChannel(_ENDPOINTS)
    track(big, kind="channel")
    loop_thread = threading.get_ident()
    blocking_s = []
    for _ in range(3):  # what the loop waited for one answer before
        t0 = time.perf_counter()
        json.dumps(json_safe({"channels": [big.stats().as_dict()]}), default=repr)
        blocking_s.append(time.perf_counter() - t0)
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    try:
        await admin.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for path in ("/debug/mesh", "/debug/dashboard.json"):
                bodies: list[str] = []

                async def get(path: str = path, bodies: list[str] = bodies) -> None:
                    async with http.get(admin.url + path) as resp:
                        assert resp.status == 200, resp.status
                        assert resp.content_type == "application/json"
                        bodies.append(await resp.text())

                gaps_s = [await _largest_loop_gap_s(get) for _ in range(5)]
                doc = _strict_json(bodies[-1])
                assert isinstance(doc, dict)
                channel = next(c for c in doc["channels"] if c["service"] == "orderd")
                assert len(channel["endpoints"]) == _ENDPOINTS
                assert channel["endpoints"][-1]["instance_id"] == f"orderd-{_ENDPOINTS - 1}"
                assert channel["policies"]["timeout_s"] is None  # inf: no JSON token
                assert min(gaps_s) < min(blocking_s) / 2, (
                    f"{path} held the event loop {min(gaps_s) * 1000:.0f} ms (largest gap, "
                    f"best of {[round(g * 1000) for g in gaps_s]} ms) where converting and "
                    f"encoding the snapshot on it takes {min(blocking_s) * 1000:.0f} ms")
        assert big.read_in == {loop_thread}, big.read_in
    finally:
        big.live = False
        await admin.stop()


async def test_debug_json_answers_once_the_render_threads_are_gone() -> None:
    """A request that reaches ``/debug/mesh`` or ``/debug/dashboard.json`` once the render
    threads are gone (``stop()`` under way, handlers still finishing) is answered, the
    JSON made on the loop; ``/metrics`` is 503 then, as before."""
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    await admin.start()
    try:
        admin._release_render_threads()  # what stop() does while handlers may still run
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(admin.url + "/metrics") as resp:
                assert resp.status == 503, resp.status
            for path in ("/debug/mesh", "/debug/dashboard.json"):
                async with http.get(admin.url + path) as resp:
                    assert resp.status == 200, (path, resp.status)
                    doc = _strict_json(await resp.text())
                    assert isinstance(doc, dict) and "channels" in doc, doc
    finally:
        await admin.stop()
