"""Caller keys as long as a header can carry do not lift the memory bound.

``max_keys`` (100,000 by default) bounds how many callers a ``memory://`` limiter keeps,
and the README promises that holds a flood of new keys "to about 90 MB" (750-900 bytes
per caller). A caller key is kept several times over (the LRU entry, the cached storage
key, the storage's counters and locks), so its size counts: a client choosing its own key
(``by_metadata("x-user")``: any value grpc accepts, up to its 8 KiB metadata limit) sent
8,000-character values and each caller cost about 25 KB, 100,000 of them 2.5 GB. A key
longer than 64 characters is now kept as its first 32 characters, ``#`` and a 128-bit
BLAKE2b digest of the whole (65 characters): distinct long keys stay distinct budgets,
equal ones share one.
"""

from __future__ import annotations

import tracemalloc

import grpc
import pytest

from meshkit.resilience.ratelimit import (
    RateLimitOptions,
    StorageLimiter,
    Strategy,
    by_metadata,
)
from tests.resilience.limited_echo import limited_echo as _limited_echo
from tests.support.echo import method

pytestmark = pytest.mark.timeout(60)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/p.S/M"


@pytest.mark.parametrize("rule", ["100/hour", "100/hour;1000/day"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_long_caller_keys_cost_what_short_ones_do(strategy: Strategy,
                                                        rule: str) -> None:
    limiter = StorageLimiter(RateLimitOptions(default_rule=rule, strategy=strategy,
                                              max_keys=1_000))
    check = limiter.checker(METHOD)
    assert check is not None
    parts = rule.count(";") + 1
    try:
        tracemalloc.start()
        try:
            for i in range(1_000):  # as by_metadata keys them: "<header>=<value>"
                assert check(f"x-user={i:06d}" + "a" * 8_000) is None
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        per_caller = held / 1_000
        assert per_caller < 1_500 * parts, per_caller  # 8 KB keys: 17-25 KB before
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_long_keys_stay_distinct_callers(strategy: Strategy) -> None:
    """Two keys alike in their first 8,000 characters are two callers; the same long key
    is one (memory:// and the async path a networked storage takes alike)."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/hour", strategy=strategy))
    check = limiter.checker(METHOD)
    assert check is not None
    same = "x-user=" + "a" * 8_000
    try:
        assert check(same + "1") is None
        assert check(same + "2") is None  # another caller
        refused = check(same + "1")
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await limiter.check(METHOD, same + "2") is not None
        assert await limiter.check(METHOD, same + "3") is None
    finally:
        await limiter.aclose()


async def test_a_long_header_key_limits_on_a_real_server() -> None:
    """by_metadata("x-user") with 4,000-character values on a real server: each value is
    its own budget of one call a minute, whatever it shares with another."""
    options = RateLimitOptions(default_rule="1/minute", key=by_metadata("x-user"))
    long = "u" * 4_000
    async with _limited_echo(options) as port, grpc.aio.insecure_channel(
            f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(method("Unary"))
        assert await unary(b"1", metadata=(("x-user", long + "1"),), timeout=10) == b"e1|1"
        assert await unary(b"2", metadata=(("x-user", long + "2"),), timeout=10) == b"e1|2"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"3", metadata=(("x-user", long + "1"),), timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert long not in (info.value.details() or "")  # the message names no caller
