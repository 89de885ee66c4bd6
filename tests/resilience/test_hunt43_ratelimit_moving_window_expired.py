"""A moving-window refusal whose refusing hit leaves the window before its state is read
asks for no wait.

A moving-window refusal's ``retry-after`` / ``grpc-retry-pushback-ms`` come from the
window read after the hit (``get_window_stats``: the oldest hit still in the window, plus
the window). The hit and that read are two storage steps (two Redis round trips; two
reads of the memory storage's clock): when the hit that refused the call leaves the window
between them, the read shows the window with room (``remaining`` > 0), and its "oldest
hit" is the next one: the refusal said to wait until *that* one leaves ("3 per 5
seconds" with hits 1.5 s apart: 2 s; with a burst, up to a whole window), though a call
then is admitted at once. A caller retrying on its pushback arrives exactly when the
oldest hit leaves, so it meets the moment.

Real Redis on loopback (the shared one, a key prefix of the test's own) and the memory
storage; the clocks the hits are stamped with are the test's (the memory storage's
``_MEMORY_CLOCK``; for Redis, ``time`` as limits' coredis bridge and meshkit read it), so
that the oldest hit leaves the window exactly between the hit and the read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import limits.aio.storage.redis.coredis as limits_coredis
import pytest

import meshkit.resilience.ratelimit as ratelimit
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

METHOD = "/p.S/M"


class ScriptedClock:
    """Epoch seconds: ``now``, but the next reads after :meth:`arm` give ``first`` once."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._first: float | None = None
        self.reads = 0

    def arm(self, first: float, then: float) -> None:
        """The next read gives ``first`` (the hit's stamp), every later one ``then``."""
        self._first, self.now = first, then

    def time(self) -> float:
        self.reads += 1
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self.now


class _TimeModule:
    """The ``time`` module with its ``time()`` the scripted clock's."""

    def __init__(self, clock: ScriptedClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedClock]:
    """The scripted clock, as the memory storage, limits' coredis bridge and meshkit's
    rate limiter read the time of day."""
    scripted = ScriptedClock(1_000_000.0)
    monkeypatch.setattr(ratelimit._MEMORY_CLOCK, "time", scripted.time)
    monkeypatch.setattr(limits_coredis, "time", _TimeModule(scripted))
    monkeypatch.setattr(ratelimit, "time", _TimeModule(scripted))
    yield scripted


@pytest.mark.parametrize("uri", ["memory://", f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}"],
                         ids=["memory", "redis"])
async def test_a_refusal_whose_hit_left_the_window_asks_for_no_wait(
        clock: ScriptedClock, uri: str) -> None:
    """Hits at 0, 1.5 and 3 s of "3 per 5 seconds"; a call stamped 4.999 s is refused
    (the hit of 0 s is in its window), its window read at 5.001 s (that hit gone, one
    call's room): the refusal says 1 s (retry-after's least; pushback at most that), not
    the 1.5 s to the next hit's leaving, rounded up to 2; and a call at 5.001 s is
    admitted."""
    if uri != "memory://" and not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="3 per 5 seconds", strategy="moving-window", storage_uri=uri,
        key_prefix=f"h43mw-{uuid.uuid4().hex}", storage_timeout_s=5.0))
    start = clock.now
    try:
        for at in (0.0, 1.5, 3.0):
            clock.now = start + at
            assert await limiter.check(METHOD, "caller") is None, at
        clock.arm(first=start + 4.999, then=start + 5.001)
        refused = await limiter.check(METHOD, "caller")
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.retry_after_s == 1, refused
        assert refused.pushback_ms is None or refused.pushback_ms <= 1000, refused
        assert await limiter.check(METHOD, "caller") is None  # room at 5.001 s indeed
    finally:
        await limiter.aclose()
