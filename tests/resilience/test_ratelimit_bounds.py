"""Rate limiting: the memory:// limiter's bound on caller keys (``max_keys``, least recently
used evicted), and the gRFC A6 pushback a refusal sends, against real grpc.aio clients."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import (
    RateLimitOptions,
    StorageLimiter,
    Strategy,
)

pytestmark = pytest.mark.timeout(60)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/meshkit.test.Echo/Unary"


def entries(limiter: StorageLimiter) -> dict[str, int]:
    """How many entries the limiter's memory storage and meshkit's own per-key caches
    hold: each grows by one (or two) per distinct caller key when nothing bounds them."""
    storage: Any = limiter._storage
    caches: dict[Any, Any] = getattr(limiter, "_key_caches", {})
    return {
        "counters": len(storage.storage),
        "expirations": len(storage.expirations),
        "moving windows": len(storage.events),
        "locks": len(storage.locks),
        "tracked callers": len(getattr(limiter, "_lru", ())),
        "cached storage keys": sum(len(c) for c in caches.values()),
        "window keys": len(limiter._window_keys),
    }


@pytest.mark.parametrize("rule", ["100/hour", "100/hour;1000/day"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_distinct_caller_keys_keep_at_most_max_keys_entries(strategy: Strategy,
                                                                  rule: str) -> None:
    """3,000 callers with a key each (a client sending a new x-user per call) leave at
    most max_keys=500 callers' counts in memory:// and in meshkit's caches, per strategy."""
    limiter = StorageLimiter(RateLimitOptions(default_rule=rule, strategy=strategy,
                                              max_keys=500))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        for i in range(3_000):
            assert check(f"x-user=attacker-{i}") is None
        parts = rule.count(";") + 1
        seen = entries(limiter)
        for name, count in seen.items():  # two parts: a counter (list) each
            assert count <= 500 * parts, (name, seen)
        assert limiter.keys_evicted == 2_500
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_an_evicted_caller_starts_a_fresh_window_the_recent_ones_stay(
        strategy: Strategy) -> None:
    """With max_keys=2 the least recently used caller is forgotten (its next call is
    admitted: a fresh window), while one that called since keeps its count."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/hour", strategy=strategy,
                                              max_keys=2))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        assert check("a") is None
        assert check("b") is None
        refused = check("a")  # a: used last, over its limit
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert check("c") is None  # evicts b, the least recently used
        assert limiter.keys_evicted == 1
        assert check("a") is not None  # kept: still refused
        assert check("b") is None  # forgotten: a fresh window
        assert limiter.keys_evicted == 2  # c went for it
        assert check("a") is not None
    finally:
        await limiter.aclose()


async def test_evictions_are_logged_once_then_counted() -> None:
    """The first eviction logs a warning naming max_keys; later ones are counted in the
    limiter's keys_evicted (no line per call)."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="5/minute", max_keys=10))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        with capture_logs() as logs:
            for i in range(200):
                check(f"k{i}")
        full = [e for e in logs if e["event"] == "rate limit callers evicted"]
        assert len(full) == 1, logs
        assert full[0]["log_level"] == "warning"
        assert full[0]["max_keys"] == 10
        assert limiter.keys_evicted == 190
    finally:
        await limiter.aclose()


async def test_the_default_bound_holds_for_every_strategy() -> None:
    """The shipped default (100,000 callers) bounds a flood of 101,000 distinct keys."""
    assert RateLimitOptions().max_keys == 100_000
    for strategy in STRATEGIES:
        limiter = StorageLimiter(RateLimitOptions(default_rule="100/hour", strategy=strategy))
        check = limiter.checker(METHOD)
        assert check is not None
        try:
            for i in range(101_000):
                check(f"u{i}")
            seen = entries(limiter)
            assert max(seen.values()) <= 100_000, (strategy, seen)
            assert limiter.keys_evicted == 1_000
        finally:
            await limiter.aclose()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100", None])
def test_max_keys_must_be_a_whole_number_of_callers(bad: Any) -> None:
    """max_keys below 1, or not an int, is refused when the options are built, quoted."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(max_keys=bad)
    assert "max_keys" in str(info.value)
    assert repr(bad) in str(info.value)
