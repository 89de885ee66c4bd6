"""A Redis refusal's grpc-retry-pushback-ms is the wait to the millisecond where Redis
tells it (the fixed window's PTTL, the sliding window counter's PTTLs).

Redis measures both windows in milliseconds (durations: no replica's clock involved),
yet the pushback was ``retry-after`` x 1000, the wait rounded up to whole seconds: a
retrying gRPC client waited up to a second longer than the window, and one whose
deadline ended between the real wait and that second was told ``-1`` (do not retry) and
failed ``RESOURCE_EXHAUSTED`` though its retry would have been admitted (as 5595ac7
found for ``memory://``).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from meshkit.resilience._ratelimit_policy import sliding_window_wait_s
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.limited_echo import limited_echo
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.resilience.test_ratelimit_bounds import _Attempts, _retrying_channel
from tests.support.echo import method
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

METHOD = "/p.S/M"
REDIS = f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}"


@pytest.fixture(autouse=True)
def _redis() -> None:
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")


def _limiter(rule: str, strategy: str) -> StorageLimiter:
    return StorageLimiter(RateLimitOptions(
        default_rule=rule, strategy=strategy,  # type: ignore[arg-type]
        storage_uri=REDIS, key_prefix=f"pr-{uuid.uuid4().hex}", storage_timeout_s=5))


async def test_a_fixed_window_pushback_is_its_pttl() -> None:
    """Refused 0.6 s into "1 per 2 seconds", the pushback is the key's PTTL (about
    1,400 ms, read right after: never shorter, longer by no more than the time between),
    not 2,000."""
    limiter = _limiter("1 per 2 seconds", "fixed-window")
    try:
        assert await limiter.check(METHOD, "a") is None
        await asyncio.sleep(0.6)
        started = time.monotonic()
        refused = await limiter.check(METHOD, "a")
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        item = limiter._table.lookup(METHOD).items[0]  # type: ignore[union-attr]
        bridge = limiter._storage.bridge
        pttl = int(await bridge.get_connection().pttl(
            bridge.prefixed_key(item.key_for(limiter._prefix, METHOD, "a"))))
        between_ms = (time.monotonic() - started) * 1000
        assert refused.retry_after_s == 2
        assert refused.pushback_ms is not None, refused
        assert pttl <= refused.pushback_ms <= pttl + between_ms + 2, (refused, pttl)
    finally:
        await limiter.aclose()


async def test_a_sliding_window_pushback_is_its_wait_to_the_millisecond() -> None:
    """Refused in a "1 per 10 seconds" window, the pushback is the weighted wait computed
    from the window's PTTLs read right after (never shorter, longer by no more than the
    time between), not the whole seconds of retry-after."""
    limiter = _limiter("1 per 10 seconds", "sliding-window-counter")
    try:
        for caller in ("a", "b"):  # a second caller if the first crossed a window's edge
            assert await limiter.check(METHOD, caller) is None
            started = time.monotonic()
            refused = await limiter.check(METHOD, caller)
            if refused is None:  # the edge: its hit then weighs < 1 (retried once)
                continue
            window = await limiter._window(limiter._table.lookup(METHOD).items[0],  # type: ignore[union-attr]
                                           METHOD, caller)
            between_ms = (time.monotonic() - started) * 1000
            wait_ms = sliding_window_wait_s(
                amount=1, window_s=10, previous_count=window[0],
                previous_expires_in_s=window[1], current_count=window[2],
                current_expires_in_s=window[3]) * 1000
            assert refused.pushback_ms is not None, refused
            assert wait_ms <= refused.pushback_ms <= wait_ms + between_ms + 2, \
                (refused, wait_ms)
            assert (refused.retry_after_s - 1) * 1000 < refused.pushback_ms  # type: ignore[operator]
            return
        raise AssertionError("never refused")
    finally:
        await limiter.aclose()


async def test_a_deadline_between_the_wait_and_retry_after_still_retries_on_redis() -> None:
    """A grpc client retrying RESOURCE_EXHAUSTED whose deadline (0.9 s) ends after the
    real wait (about 0.7 s of a 1/second window, refused 0.3 s in) but before retry-after's
    1 s is told the wait, retries and is admitted: answered -1 it ended
    RESOURCE_EXHAUSTED after one attempt."""
    attempts = _Attempts()
    options = RateLimitOptions(default_rule="1/second", strategy="fixed-window",
                               storage_uri=REDIS, key_prefix=f"pr-{uuid.uuid4().hex}",
                               storage_timeout_s=5, key=attempts)
    async with (limited_echo(options) as port,
                _retrying_channel(port, max_attempts=3) as channel):
        unary = channel.unary_unary(method("Unary"))
        assert await unary(b"1", timeout=30) == b"e1|1"
        await asyncio.sleep(0.3)
        assert await unary(b"2", timeout=0.9) == b"e1|2"
    assert len(attempts.at) == 3, attempts.at
