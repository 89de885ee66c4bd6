"""A Redis limiter used on a new event loop counts at once there.

The Redis driver's connections belong to the event loop they were opened on. A limiter
used under one loop and then under another without ``aclose()`` in between (a second
``asyncio.run()``, a server restarted in a new thread's loop, pytest-asyncio's loop per
test with a limiter built once) sent its first hit on the new loop down a connection of
the old one: no answer ever came, so it waited ``storage_timeout_s`` out and was a
storage failure (measured: ``UNAVAILABLE`` after 1.0 s under ``deny``, once per new
loop; unlimited under ``allow``; a step to an open breaker). The limiter now lets go of
the old loop's connections when it is first used on another loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, Rejection, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter"])
def test_each_new_loop_counts_at_once(strategy: str) -> None:
    """Three loops in turn, the first two closed without aclose(): every check admitted
    well within storage_timeout_s (5 s), the breaker never counting a failure."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/minute", strategy=strategy,  # type: ignore[arg-type]
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=f"nl-{uuid.uuid4().hex}", storage_timeout_s=5.0, on_storage_error="deny"))

    check_each_new_loop_counts_at_once(limiter, bound_s=2.5)


def check_each_new_loop_counts_at_once(limiter: StorageLimiter, bound_s: float) -> None:
    """Use ``limiter`` on three event loops in turn, the first two closed without
    ``aclose()``: two checks on each are admitted within ``bound_s`` seconds (under the
    limiter's ``storage_timeout_s``, which a hit down an old loop's connection waits
    out), and its breaker never counts a failure; the limiter is closed at the end."""

    async def use() -> list[Rejection | None]:
        return [await limiter.check(METHOD, "k") for _ in range(2)]

    taken = []
    try:
        for _ in range(3):
            loop = asyncio.new_event_loop()
            try:
                started = time.monotonic()
                assert loop.run_until_complete(use()) == [None, None]
                taken.append(time.monotonic() - started)
            finally:
                loop.close()
        assert max(taken) < bound_s, taken
        assert not limiter.breaker.dirty and limiter.breaker.opened == 0
    finally:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(limiter.aclose())
        finally:
            loop.close()
