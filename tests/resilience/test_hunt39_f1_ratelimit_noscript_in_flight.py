"""A ``NOSCRIPT`` reply no longer fails the other hits in flight on the connection.

The hits of all callers share one Redis connection (coredis multiplexes them). coredis
dropped that connection on any error reply, ``NOSCRIPT`` included: what every hit gets
once the script cache is empty (a Redis just started or restarted, ``SCRIPT FLUSH``, a
failover to a server that never ran the script). The first caller's ``NOSCRIPT`` then
failed every other caller's hit still waiting on that connection ("connection lost"):
storage failures, ``UNAVAILABLE`` under ``on_storage_error="deny"``, the breaker opened,
with Redis up and answering (staggered callers after ``SCRIPT FLUSH``: 33 of 600 hits).
A ``NOSCRIPT`` reply leaves the connection in step (the reply was read whole), so it is
kept; the script is loaded and the hit sent again as before.

A private plain-TCP Redis behind a proxy that, once armed, passes the server's replies
on one line at a time (the loop running on between two): the first caller's
``NOSCRIPT`` is read while the second caller's answer is still on its way.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.support.ports import free_port
from tests.support.scripted_proxy import ScriptedProxy
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def private_redis() -> Iterator[int]:
    """A Redis of this test's own (its script cache empty); its port."""
    server = shutil.which("redis-server")
    if server is None:
        skip_or_fail("no redis-server binary")
        return
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "PONG" not in subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                           capture_output=True, text=True,
                                           check=False).stdout:
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis not up in 10 s"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _LineByLine(ScriptedProxy):
    """A TCP proxy to ``upstream``; after :meth:`arm`, what the server sends is passed
    on one line (``\\r\\n``) at a time, 0.1 s apart."""

    def __init__(self, upstream: int) -> None:
        super().__init__(upstream)
        self._armed = False

    def arm(self) -> None:
        self._armed = True

    async def _handle(self, creader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [cwriter, swriter]
        for pump in (self._pump(creader, swriter, split=False),
                     self._pump(sreader, cwriter, split=True)):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    split: bool) -> None:
        while data := await reader.read(65536):
            if not (split and self._armed):
                writer.write(data)
                await writer.drain()
                continue
            for line in data.splitlines(keepends=True):
                writer.write(line)
                await writer.drain()
                await asyncio.sleep(0.1)  # the client reads this line before the next
        writer.close()


async def test_a_noscript_reply_does_not_fail_the_hits_in_flight(private_redis: int) -> None:
    async with _LineByLine(private_redis) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="5/minute", on_storage_error="deny", storage_timeout_s=5.0,
            storage_uri=f"async+redis://127.0.0.1:{proxy.port}"))
        try:
            assert await limiter._storage.check()  # connected (PING), no script loaded
            proxy.arm()
            got = await asyncio.gather(*[limiter.check("/a.B/C", caller)
                                         for caller in ("one", "two")])
            assert got == [None, None], (got, limiter.storage_errors)
            assert limiter.storage_errors == 0
        finally:
            await limiter.aclose()
