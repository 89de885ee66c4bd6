"""A rule that names the same limit twice is refused, not counted twice.

``default_rule="4/minute;4/minute"`` (or ``"10/second;10 per second"``, as a rule put
together from two config sources reads) was taken, and both parts counted every call
under one storage key: a caller got 2 calls a minute, not 4 (every strategy, memory and
Redis). It is now a ConfigError at construction naming the limit; distinct limits
(``"4/minute;4/hour"``, ``"4/minute;2/minute"``) are taken and each enforced.
"""

from __future__ import annotations

import asyncio

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter


@pytest.mark.parametrize("rule", ["4/minute;4/minute", "10/second;10 per second",
                                  "1/hour;5/minute;1 per 1 hour", "3/2 seconds|3 per 2 second"])
def test_the_same_limit_twice_is_refused(rule: str) -> None:
    """Refused as default_rule and in rules, the rule quoted."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule=rule)
    assert repr(rule) in str(caught.value) and "twice" in str(caught.value)
    with pytest.raises(ConfigError):
        RateLimitOptions(rules={"/a.B/C": rule})


@pytest.mark.parametrize(("rule", "admitted"), [("4/minute;4/hour", 4),
                                                ("4/minute;2/minute", 2)])
def test_distinct_limits_are_each_enforced(rule: str, admitted: int) -> None:
    """Each part counts once: the stricter governs."""
    limiter = StorageLimiter(RateLimitOptions(default_rule=rule))

    async def run() -> int:
        try:
            return sum([await limiter.check("/a.B/C", "k") is None for _ in range(6)])
        finally:
            await limiter.aclose()

    assert asyncio.run(run()) == admitted
