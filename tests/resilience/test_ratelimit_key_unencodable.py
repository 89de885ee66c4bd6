"""A caller key that is no UTF-8 (a lone surrogate) counts on Redis like any other key.

A Python ``str`` may hold a lone surrogate (``"\\ud800"``) that UTF-8 cannot encode: a JWT
whose ``sub`` is the JSON escape ``"\\ud800"`` decodes to one, and so does a key function
decoding bytes with ``surrogateescape``. The Redis driver encodes every key as UTF-8, so
such a key failed every hit with ``UnicodeEncodeError``, which the limiter took for a
storage failure: that caller was never limited (fail open; with ``deny`` refused
``UNAVAILABLE``), "rate limit storage unavailable" was logged, and three of its calls in
a row opened the breaker, so every other caller skipped the storage too (all unlimited,
or all ``UNAVAILABLE``, for ``breaker_open_s``).
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter, Strategy
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/p.S/M"


@pytest.mark.parametrize("key", ["sub:\ud800", "sub:" + "\udc80" * 100])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_key_utf8_cannot_encode_is_limited_on_redis(strategy: Strategy,
                                                           key: str) -> None:
    """Such a caller gets its two calls of "2/hour" and is then refused
    RESOURCE_EXHAUSTED; the storage never failed (breaker closed, no outage), a key
    that differs in its surrogates is another caller, and a plain caller is admitted."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="2/hour", strategy=strategy, key_prefix=f"ku-{uuid.uuid4().hex}",
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}", storage_timeout_s=5,
        on_storage_error="deny"))
    try:
        assert await limiter.check(METHOD, key) is None
        assert await limiter.check(METHOD, key) is None
        refused = await limiter.check(METHOD, key)
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED, \
            refused
        assert await limiter.check(METHOD, key.replace("\ud800", "\udfff")
                                   .replace("\udc80", "\udc81", 1)) is None
        assert await limiter.check(METHOD, "sub:ok") is None
        assert not limiter.breaker.is_open and limiter.breaker.opened == 0
        assert limiter._outage.down_since is None
    finally:
        await limiter.aclose()
