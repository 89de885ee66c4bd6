"""A caller that goes away while its Redis hit is in flight costs no other caller anything.

A call cancelled by its client (a cancel, its deadline, the losing attempt of a hedged
call) cancels its rate-limit check, and with it the Redis command in flight. coredis
multiplexes every command on one connection, and a command cancelled before its reply
leaves that connection out of step, so it drops the connection: every other caller's
hit in flight on it failed with "connection lost", a storage failure each, refused
``UNAVAILABLE`` under ``deny`` (admitted unlimited under ``allow``), and three of them
opened the breaker for every caller (measured on the local Redis: 18 of 980 concurrent
hits refused over 20 rounds of 50 with one cancelled each, the breaker opened). The hit
of a cancelled call now finishes on its own (its reply read, within
``storage_timeout_s``), while the cancelled call ends at once.
"""

from __future__ import annotations

import asyncio
import gc
import uuid

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, LatencyProxy, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"


async def test_a_cancelled_check_fails_no_other_callers_hit() -> None:
    """10 checks in flight on a Redis 0.2 s away, one cancelled: it ends cancelled at
    once (before its hit's answer), the 9 others are admitted, the storage never
    failed (no outage, breaker closed), and the cancelled one's hit still counted (the
    server ran it)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    async with LatencyProxy(SHARED_REDIS_PORT) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="1/minute", strategy="fixed-window",
            storage_uri=f"async+redis://127.0.0.1:{proxy.port}",
            key_prefix=f"ch-{uuid.uuid4().hex}", storage_timeout_s=5,
            on_storage_error="deny"))
        try:
            assert await limiter.check(METHOD, "warm") is None  # connected
            proxy.delay_s = 0.2
            checks = [asyncio.create_task(limiter.check(METHOD, f"k{i}")) for i in range(10)]
            await asyncio.sleep(0.05)  # every hit sent, none answered
            checks[0].cancel()
            await asyncio.wait_for(asyncio.wait([checks[0]]), timeout=0.15)
            assert checks[0].cancelled()
            results = await asyncio.wait_for(asyncio.gather(*checks[1:]), timeout=10)
            assert results == [None] * 9, results
            assert limiter.breaker.opened == 0 and limiter._outage.down_since is None
            proxy.delay_s = 0.0
            refused = await limiter.check(METHOD, "k0")  # its one call of 1/minute counted
            assert refused is not None and refused.retry_after_s is not None, refused
        finally:
            await limiter.aclose()
    gc.collect()
    assert unretrieved == [], unretrieved
