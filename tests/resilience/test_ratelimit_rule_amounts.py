"""A rule whose amount a storage cannot count to is refused when the options are built.

``"9223372036854775807/second"`` (int64's largest: "no limit, really") or
``"4611686018427387904/second"`` passed, and on Redis the moving window's script failed
on every call (its amount is a Lua double, sent back to Redis in a form ``LINDEX`` does
not read): every call a storage failure, refused ``UNAVAILABLE`` under ``deny``, and
three in a row opened the breaker for every caller (admitted unlimited under
``allow``). Amounts up to 2**53 (the integers a double holds exactly) stay accepted and
limit on the real Redis with each strategy.
"""

from __future__ import annotations

import uuid

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience._ratelimit_policy import MAX_RULE_AMOUNT
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter, Strategy
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/p.S/M"


@pytest.mark.parametrize("rule", [
    f"{2**63 - 1}/second",
    f"{2**62}/second",
    f"{MAX_RULE_AMOUNT + 1} per minute",
    f"10/second;{10**23}/hour",
])
def test_an_amount_past_what_a_storage_counts_is_refused_quoting_the_rule(rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(rules={METHOD: rule})
    assert repr(rule) in str(info.value) and "amount" in str(info.value)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_largest_amount_accepted_counts_on_redis(strategy: Strategy) -> None:
    """2**53 per second: admitted, and the storage never failed."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule=f"{MAX_RULE_AMOUNT}/second", strategy=strategy,
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=f"ra-{uuid.uuid4().hex}", storage_timeout_s=5, on_storage_error="deny"))
    try:
        assert await limiter.check(METHOD, "k") is None
        assert await limiter.check(METHOD, "k") is None
        assert limiter._outage.down_since is None
    finally:
        await limiter.aclose()
