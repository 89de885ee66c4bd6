"""One hit slower than ``storage_timeout_s`` no longer fails the other hits in flight.

Every caller's hits share one Redis connection. A hit that takes longer than
``storage_timeout_s`` is cancelled (a storage failure), and coredis dropped the
connection on a command cancelled before its reply, failing every other hit still
waiting on it at once ("connection lost"), those sent a moment before included: a Redis
stalled 0.7 s under a 0.5 s timeout (a fork for a snapshot, another client's slow
command) failed 25 of 25 staggered hits, where the 14 sent in its last 0.5 s would
have been answered in time; storage failures, ``UNAVAILABLE`` under ``deny``, the
breaker opened. The reply of a cancelled command is still read (and dropped) in its
turn, so the connection is in step: it is kept while it answers, and dropped (the next
hit reconnects) only when it has answered nothing for as long again as the timed-out
hit waited: a server gone without a word (a host down, a partition) still loses its
connection.

A private Redis behind a proxy that holds back the server's replies on demand.
"""

from __future__ import annotations

import asyncio

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_hunt39_f1_ratelimit_noscript_in_flight import private_redis
from tests.support.scripted_proxy import ScriptedProxy

pytestmark = pytest.mark.timeout(60)

__all__ = ["private_redis"]  # the fixture, imported for the tests below

METHOD = "/a.B/C"
TIMEOUT_S = 2.0


class _Holding(ScriptedProxy):
    """A TCP proxy to ``upstream`` whose server-to-client bytes are held back while
    :attr:`held` holds the connection's index (0 for the first accepted)."""

    def __init__(self, upstream: int) -> None:
        super().__init__(upstream)
        self.accepted = 0
        self.held: set[int] = set()
        self._changed = asyncio.Event()

    def release(self, index: int) -> None:
        self.held.discard(index)
        self._changed.set()

    async def _handle(self, creader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter) -> None:
        index = self.accepted
        self.accepted += 1
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [cwriter, swriter]
        for pump in (self._pump(None, creader, swriter), self._pump(index, sreader, cwriter)):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)

    async def _pump(self, index: int | None, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            while index in self.held:
                self._changed.clear()
                await self._changed.wait()
            writer.write(data)
            await writer.drain()
        writer.close()


def _limiter(port: int) -> StorageLimiter:
    return StorageLimiter(RateLimitOptions(
        default_rule="5/minute", on_storage_error="deny", storage_timeout_s=TIMEOUT_S,
        breaker_failures=100, storage_uri=f"async+redis://127.0.0.1:{port}"))


async def test_a_timed_out_hit_does_not_fail_the_hits_in_flight(private_redis: int) -> None:
    async with _Holding(private_redis) as proxy:
        limiter = _limiter(proxy.port)
        try:
            assert await limiter.check(METHOD, "warm") is None  # connected, script loaded
            proxy.held.add(0)  # Redis stalls (its replies held back)
            early = asyncio.ensure_future(limiter.check(METHOD, "early"))
            await asyncio.sleep(TIMEOUT_S / 2)
            late = asyncio.ensure_future(limiter.check(METHOD, "late"))
            timed_out = await early  # after TIMEOUT_S; late has about TIMEOUT_S / 2 left
            proxy.release(0)  # the stall ends: both replies come
            assert timed_out is not None and timed_out.code.name == "UNAVAILABLE", timed_out
            got = await late
            assert got is None, (got, limiter.storage_errors)
            assert limiter.storage_errors == 1  # the early hit, once
            assert await limiter.check(METHOD, "after") is None
            assert proxy.accepted == 1  # the connection kept
        finally:
            await limiter.aclose()


async def test_a_connection_that_answers_nothing_is_still_dropped(private_redis: int) -> None:
    async with _Holding(private_redis) as proxy:
        limiter = _limiter(proxy.port)
        try:
            assert await limiter.check(METHOD, "warm") is None
            proxy.held.add(0)  # the first connection never answers again
            first = await limiter.check(METHOD, "first")
            assert first is not None and first.code.name == "UNAVAILABLE", first
            # silent for as long again: dropped; a later hit reconnects and is answered
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10 * TIMEOUT_S
            while (got := await limiter.check(METHOD, "later")) is not None:
                assert loop.time() < deadline, (got, proxy.accepted)
                await asyncio.sleep(0.2)
            assert proxy.accepted == 2, proxy.accepted
        finally:
            await limiter.aclose()
