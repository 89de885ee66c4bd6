"""A Redis fixed-window counter found without a TTL gets one at its next hit.

The fixed window's count is one atomic script (``incr_expire.lua``): ``INCRBY``, and
``EXPIRE`` only when that made the counter. A counter that exists without a TTL (left by
an older meshkit, whose two-step count lost its ``EXPIRE`` when the connection dropped
between the two; a ``PERSIST``; a key restored without its TTL) therefore never got
one: its caller was refused for good, told ``retry-after: 1`` on every call. The count
now also sets the window's expiry on a counter that has none.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"


async def test_a_counter_without_a_ttl_gets_the_window_s() -> None:
    """A "5 per 2 seconds" counter at 7 with no TTL: the hit is refused (it counts) and
    leaves the counter expiring within the window (it stayed without a TTL before)."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="5 per 2 seconds", strategy="fixed-window",
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=f"ttl-{uuid.uuid4().hex}", storage_timeout_s=5))
    try:
        item = limiter._table.lookup(METHOD).items[0]  # type: ignore[union-attr]
        bridge = limiter._storage.bridge
        redis = bridge.get_connection()
        key = bridge.prefixed_key(item.key_for(limiter._prefix, METHOD, "stuck"))
        await redis.set(key, "7")  # a counter with no TTL
        assert int(await redis.pttl(key)) == -1
        refused = await limiter.check(METHOD, "stuck")
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        pttl = int(await redis.pttl(key))
        assert 0 < pttl <= 2000, pttl
        assert await limiter.check(METHOD, "fresh") is None  # a new counter: as before
        fresh = bridge.prefixed_key(item.key_for(limiter._prefix, METHOD, "fresh"))
        assert 0 < int(await redis.pttl(fresh)) <= 2000
        await asyncio.sleep(0)
    finally:
        await limiter.aclose()
