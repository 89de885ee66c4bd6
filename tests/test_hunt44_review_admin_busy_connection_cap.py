"""The admin server's connection cap (d57b0dab) also bounds connections whose answer
the client never reads.

d57b0dab closes the oldest connection past the cap: an idle one at once, one answering
"once its answer is sent" (aiohttp's ``close()``). A client that asks for ``/metrics``
and never reads the answer keeps its connection answering for ever (the write waits on
a full socket buffer; aiohttp has no write timeout), so such connections escaped the cap
altogether: each held a socket, its send buffer (megabytes) and the rendered body, and a
client could open any number of them. One answering still past the cap after
``_EVICTED_GRACE_S`` (30 s) is now aborted.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from meshkit.observability import AdminOptions, AdminServer
from meshkit.observability import _admin as admin_module
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)


class _Big:
    """A collector whose exposition (~8 MB) is more than loopback's socket buffers hold
    for a client that does not read (its receive buffer set to 4 KiB)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("big", "a large exposition", labels=["v"])
        for i in range(8):
            g.add_metric([f"{i}" + "x" * 1_000_000], 1.0)
        yield g

    def describe(self) -> list[GaugeMetricFamily]:
        return []


async def _stuck_scrape(port: int) -> socket.socket:
    """A connection that asks for /metrics (no gzip) and never reads the answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
        sock, ("127.0.0.1", port)), 5)
    await asyncio.get_running_loop().sock_sendall(
        sock, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


async def test_an_answer_never_read_does_not_escape_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cap 2: two scrapes that never read their answers, then two idle connections:
    the stuck scrapes, oldest past the cap, are aborted after the grace (they were kept
    for ever), so the server keeps at most the cap."""
    monkeypatch.setattr(admin_module, "_MAX_CONNECTIONS", 2)
    monkeypatch.setattr(admin_module, "_EVICTED_GRACE_S", 0.5)
    registry = CollectorRegistry()
    registry.register(_Big())  # type: ignore[arg-type]
    admin = AdminServer(AdminOptions(registry=registry))
    port = await admin.start()
    socks: list[socket.socket] = []
    writers: list[asyncio.StreamWriter] = []
    try:
        server = admin._runner.server if admin._runner is not None else None
        assert server is not None
        for _ in range(2):
            socks.append(await _stuck_scrape(port))
        # both answering: rendered and blocked on a full send buffer
        await until(lambda: sum(getattr(h, "_request_in_progress", False)
                                for h in server.connections) == 2,
                    timeout_s=30, what="two scrapes answering")
        await asyncio.sleep(1.0)  # well into their writes
        for _ in range(2):
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writers.append(writer)
        await until(lambda: len(server.connections) <= 2, timeout_s=20,
                    what="the stuck scrapes past the cap aborted")
    finally:
        for s in socks:
            s.close()
        for w in writers:
            w.close()
        await asyncio.wait_for(admin.stop(), 20)
