"""A Redis moving window's refusal tells its wait to the millisecond
(``grpc-retry-pushback-ms``): its hits' stamps are fractional seconds, so the wait is
known finer than ``retry-after``'s whole seconds."""

from __future__ import annotations

import asyncio
import time

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import (  # noqa: F401 (the fixture)
    PrivateRedis,
    private_redis,
    unique_prefix,
)


async def test_redis_moving_window_pushback_is_millisecond_exact(
        private_redis: PrivateRedis) -> None:  # noqa: F811 (the fixture)
    """Refused 0.3 s after the window's only hit, the pushback is about 9.7 s, not the
    whole 10 s ``retry-after`` x 1000 gave."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/10 seconds", strategy="moving-window",
        storage_uri=private_redis.uri, key_prefix=unique_prefix(),
        storage_timeout_s=5.0))  # a loaded box's slow round trip is no storage failure
    try:
        first = time.monotonic()
        assert await asyncio.wait_for(limiter.check("/s.A/M", "k"), 10) is None
        await asyncio.sleep(0.3)
        rejection = await asyncio.wait_for(limiter.check("/s.A/M", "k"), 10)
        elapsed_ms = (time.monotonic() - first) * 1000
        assert limiter.storage_errors == 0  # the hits were counted, not failed open
        assert rejection is not None and rejection.retry_after_s == 10, rejection
        assert rejection.pushback_ms is not None, rejection
        # the wait left: 10 s less what passed since the hit (wide margins: loaded box)
        assert rejection.pushback_ms <= 10_000 - 250, (rejection, elapsed_ms)
        assert rejection.pushback_ms >= 10_000 - elapsed_ms - 500, (rejection, elapsed_ms)
    finally:
        await asyncio.wait_for(limiter.aclose(), 10)
