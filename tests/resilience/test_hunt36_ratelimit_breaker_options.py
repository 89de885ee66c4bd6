"""``RateLimitOptions.breaker_open_s`` must be a finite number of seconds.

``breaker_open_s=math.inf`` was accepted: the breaker, once opened by
``breaker_failures`` storage failures in a row (a Redis restart, a failover), never
probed again, so the limiter stayed off for the process' life (every limited call let
through under ``on_storage_error="allow"``, or refused ``UNAVAILABLE`` under
``"deny"``) with Redis long back. ``breaker_max_open_s=math.inf`` (no cap on the
doubling) keeps its meaning.
"""

from __future__ import annotations

import math

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions


@pytest.mark.parametrize("open_s", [math.inf, float("nan")])
def test_an_open_time_that_never_ends_is_refused_quoting_it(open_s: float) -> None:
    with pytest.raises(ConfigError, match=f"breaker_open_s .*{open_s}"):
        RateLimitOptions(breaker_open_s=open_s, breaker_max_open_s=math.inf)


def test_no_cap_on_the_doubling_stays_accepted() -> None:
    options = RateLimitOptions(breaker_open_s=2.0, breaker_max_open_s=math.inf)
    assert options.breaker_max_open_s == math.inf
