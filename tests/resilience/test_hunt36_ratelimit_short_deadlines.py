"""A hung Redis opens the breaker even when every caller's deadline is shorter than
``storage_timeout_s``.

A call whose deadline ends before its Redis hit answers is cancelled (grpc.aio cancels
its handler), and since 47b752c its hit finishes on its own in a task (shielded), within
``storage_timeout_s``. That hit's failure was read and dropped: not counted by the
breaker, no outage logged. So under a Redis that hangs (a partition) with callers whose
deadlines are under the timeout (100 ms deadlines, the default 0.25 s timeout), every
call waited its whole deadline on the storage and failed ``DEADLINE_EXCEEDED``: the
breaker never opened, ``on_storage_error="allow"`` never let a call through, and the
outage was never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid

import pytest
from structlog.testing import capture_logs

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, LatencyProxy, redis_ping
from tests.support.skips import skip_or_fail
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"


async def test_hits_of_calls_whose_deadline_ended_open_the_breaker() -> None:
    """Redis blackholed; three checks each cancelled 50 ms in (a deadline shorter than
    the 0.3 s storage timeout): once their hits have timed out the breaker is open and
    the outage logged, so the next call is let through at once (fail open)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="100/second", storage_uri=f"async+redis://{proxy.address}",
            key_prefix=f"sd-{uuid.uuid4().hex}", storage_timeout_s=0.3,
            breaker_failures=3, breaker_open_s=5.0, breaker_max_open_s=5.0))
        try:
            assert await limiter.check(METHOD, "warm") is None  # connected, counting
            proxy.blackhole()
            with capture_logs() as logs:
                for i in range(3):
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(limiter.check(METHOD, f"c{i}"), 0.05)
                await until(lambda: not limiter._finishing, timeout_s=5,
                            what="the cancelled calls' hits ended")
            assert limiter.breaker.is_open and limiter.breaker.opened == 1
            assert [e["event"] for e in logs] == ["rate limit storage unavailable"], logs
            t0 = time.monotonic()
            assert await limiter.check(METHOD, "next") is None  # fail open, at once
            assert time.monotonic() - t0 < 0.15
        finally:
            proxy.blackhole()  # (nothing reaches Redis while the limiter closes)
            await limiter.aclose()


async def test_a_probe_whose_deadline_ended_reopens_the_breaker_when_its_hit_fails() -> None:
    """The breaker open and due for a probe; three calls come, each cancelled 50 ms in.
    The first is the probe: its hit goes on after the call ended, and holds the probe's
    slot until it ends, so the others skip the storage at once; when it times out the
    breaker opens again (for twice as long). Before, the cancelled probe freed its slot
    at once, each next call probed and waited its deadline out, and the failed hits
    left the breaker due: every call after ``breaker_open_s`` waited on the hung Redis."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    now = [1000.0]
    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="100/second", storage_uri=f"async+redis://{proxy.address}",
            key_prefix=f"sd-{uuid.uuid4().hex}", storage_timeout_s=0.3,
            breaker_failures=1, breaker_open_s=1.0, breaker_max_open_s=8.0),
            clock=lambda: now[0])
        try:
            assert await limiter.check(METHOD, "warm") is None  # connected, counting
            proxy.blackhole()
            assert await limiter.check(METHOD, "a") is None  # timed out: opens
            assert limiter.breaker.is_open
            now[0] += 1.5  # due for a probe
            waited = []
            for i in range(3):
                t0 = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(limiter.check(METHOD, f"c{i}"), 0.05)
                waited.append(time.monotonic() - t0)
            assert max(waited[1:]) < 0.04, waited  # skipped: the probe still out
            await until(lambda: not limiter._finishing, timeout_s=5,
                        what="the cancelled probe's hit ended")
            assert not limiter.breaker.allow()  # open again, not due
            now[0] += 1.5
            assert not limiter.breaker.allow()  # for twice as long
            now[0] += 1.0
            assert limiter.breaker.allow()  # the next probe
        finally:
            proxy.blackhole()
            await limiter.aclose()


async def test_aclose_with_a_cancelled_calls_hit_out_logs_no_outage() -> None:
    """A call cancelled while its hit waits on a Redis 1 s away, then aclose() (the
    server stopped): the hit, whose connection aclose closes, is cancelled with it (at
    once: no wait for a slow storage), not taken for a storage failure ('rate limit
    storage unavailable' logged as the server stops, once such hits counted as any
    other)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    async with LatencyProxy(SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="100/second", storage_uri=f"async+redis://127.0.0.1:{proxy.port}",
            key_prefix=f"sd-{uuid.uuid4().hex}", storage_timeout_s=3.0))
        assert await limiter.check(METHOD, "warm") is None  # connected, counting
        proxy.delay_s = 1.0
        with capture_logs() as logs:
            call = asyncio.ensure_future(limiter.check(METHOD, "k"))
            await asyncio.sleep(0.05)  # its hit sent, not answered
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            assert limiter._finishing
            t0 = time.monotonic()
            await limiter.aclose()
            assert time.monotonic() - t0 < 0.6
            await until(lambda: not limiter._finishing, timeout_s=5,
                        what="the hit ended")
            await asyncio.sleep(0)  # (its done callbacks run)
        assert logs == [], logs
        assert not limiter.breaker.dirty


def test_a_probe_left_on_a_closed_loop_does_not_hold_the_breaker_shut() -> None:
    """The breaker open and due; its probe's call cancelled, its hit still out on a loop
    then closed without running it to its end (a server's thread loop stopped and
    closed): on the next loop the next due caller probes the storage. Before, the probe
    slot stayed taken by a hit that could never end, and every later call skipped the
    storage for the limiter's life (unlimited under allow, UNAVAILABLE under deny)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # connections complete in the backlog; nothing is ever read
    now = [1000.0]
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/second",
        storage_uri=f"async+redis://127.0.0.1:{hole.getsockname()[1]}",
        key_prefix=f"sd-{uuid.uuid4().hex}", storage_timeout_s=0.2,
        breaker_failures=1, breaker_open_s=1.0, breaker_max_open_s=8.0),
        clock=lambda: now[0])

    async def probe_then_cancel() -> None:
        assert await limiter.check(METHOD, "a") is None  # timed out: opens
        assert limiter.breaker.is_open
        now[0] += 1.5  # due for a probe
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(limiter.check(METHOD, "b"), 0.05)
        assert limiter._finishing  # the probe's hit, out

    async def next_caller() -> float:
        now[0] += 1.5
        t0 = time.monotonic()
        assert await limiter.check(METHOD, "c") is None
        return time.monotonic() - t0

    try:
        first = asyncio.new_event_loop()
        try:
            first.run_until_complete(probe_then_cancel())
        finally:
            first.close()  # (the hit left pending)
        second = asyncio.new_event_loop()
        try:
            took = second.run_until_complete(next_caller())
            assert took >= 0.15, took  # it probed (waited the storage timeout out)
            second.run_until_complete(limiter.aclose())
        finally:
            second.close()
    finally:
        hole.close()
