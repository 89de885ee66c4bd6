"""Rate-limit rules whose window cannot be what they say: a window of zero units, which
``limits`` reads as one unit ("1/0 seconds" became "1 per 1 second"), and a window longer
than a storage can keep, which Redis refuses on every call (so every call fails open, and
a fixed window's count may be left without a TTL). Both are refused when the options are
built, quoting the rule; windows a storage can keep stay accepted."""

from __future__ import annotations

import uuid

import grpc
import pytest

from meshkit.errors import ConfigError
from meshkit.resilience._ratelimit_policy import MAX_RULE_WINDOW_S, parse_rule
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter, Strategy
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/p.S/M"


@pytest.mark.parametrize("rule", [
    "1/0 seconds",
    "1/0second",
    "10 per 0 minute",
    "5 per 00 hours",
    "10/second;5 per 0 minute",
])
@pytest.mark.parametrize("where", ["default_rule", "rules"])
def test_a_window_of_zero_units_is_refused_quoting_the_rule(rule: str, where: str) -> None:
    """"1/0 seconds" names no window: refused (``limits`` alone reads the missing
    number as one unit, and so it read the 0, limiting "1 per 1 second" silently)."""
    with pytest.raises(ConfigError) as info:
        if where == "default_rule":
            RateLimitOptions(default_rule=rule)
        else:
            RateLimitOptions(rules={METHOD: rule})
    assert repr(rule) in str(info.value), str(info.value)
    assert "0" in str(info.value)


@pytest.mark.parametrize("rule", [
    f"1/{MAX_RULE_WINDOW_S + 1} seconds",
    "1/1000000 years",
    "1/300000000 years",
])
def test_a_window_longer_than_a_storage_keeps_is_refused_quoting_the_rule(rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(default_rule=rule)
    assert repr(rule) in str(info.value), str(info.value)


@pytest.mark.parametrize(("rule", "windows"), [
    ("1/1 second", (1,)),
    ("10 per 2 minutes", (120,)),
    ("100/second;1000 per hour", (1, 3600)),
    ("10 per minute", (60,)),
    ("1/day", (86_400,)),
    (f"1/{MAX_RULE_WINDOW_S} seconds", (MAX_RULE_WINDOW_S,)),
])
def test_rules_with_a_window_are_kept_as_written(rule: str, windows: tuple[int, ...]) -> None:
    items = parse_rule(rule, where="default_rule")
    assert tuple(item.get_expiry() for item in items) == windows
    RateLimitOptions(default_rule=rule)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_longest_window_accepted_limits_on_redis(strategy: Strategy) -> None:
    """The bound is one Redis keeps: a rule of the longest window accepted admits one call
    and refuses the next (RESOURCE_EXHAUSTED), rather than failing on Redis every call."""
    from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping

    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule=f"1/{MAX_RULE_WINDOW_S} seconds", strategy=strategy,
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=f"h8-{uuid.uuid4().hex}", on_storage_error="deny"))
    try:
        assert await limiter.check(METHOD, "a") is None
        refused = await limiter.check(METHOD, "a")
        assert refused is not None
        assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    finally:
        await limiter.aclose()
