"""``/debug/mesh`` and ``/debug/dashboard.json`` answer while ``/metrics`` scrapes wait on
a collector of the application's (one reading a database, a remote service, a lock held
elsewhere). Their JSON was encoded in the same two render threads the scrapes collect
in: two slow scrapes (a pair of Prometheus replicas) and the debug view of the mesh and
the dashboard stopped answering until a collector returned, the moment one looks at
them. They now have a thread of their own; ``/metrics`` is still rendered off the
loop in its two."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily

from meshkit.observability import AdminOptions, AdminServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


class _Slow:
    """A collector that waits (at most 30 s) until released, then reports one gauge."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.waiting += 1
        self.release.wait(30)
        yield GaugeMetricFamily("hunt42_slow", "a slow collector's gauge", value=1)


async def test_debug_views_answer_while_two_scrapes_wait_on_a_collector() -> None:
    registry = CollectorRegistry()
    slow = _Slow()
    registry.register(slow)
    admin = AdminServer(AdminOptions(registry=registry, require_server=False))
    await admin.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40)) as http:

            async def get(path: str) -> tuple[int, str]:
                async with http.get(admin.url + path) as resp:
                    return resp.status, await resp.text()

            scrapes = [asyncio.ensure_future(get("/metrics")) for _ in range(2)]
            try:
                await until(lambda: slow.waiting == 2, timeout_s=10,
                            what="the two scrapes to reach the collector")
                for path in ("/debug/mesh", "/debug/dashboard.json"):
                    status, body = await asyncio.wait_for(get(path), 8)
                    assert status == 200 and body.startswith("{"), (path, status)
                assert not any(s.done() for s in scrapes)  # still waiting on the collector
            finally:
                slow.release.set()
                answers = await asyncio.wait_for(
                    asyncio.gather(*scrapes, return_exceptions=True), 20)
            for answer in answers:
                assert not isinstance(answer, BaseException), answer
                status, body = answer
                assert status == 200 and "hunt42_slow 1.0" in body
    finally:
        slow.release.set()
        await admin.stop()
