"""A rule of several limits admits as many calls whatever order its parts are written in.

A call is counted against each part of a rule in turn until one refuses it, and the parts
before that one keep its hit (a storage cannot take one back). Counted in the order the
rule was written, ``"4/minute;2/second"`` charged the minute with every call the second
refused: a burst of ten spent the minute's four at once and the caller was refused for
the rest of it after two calls, where ``"2/second;4/minute"`` admitted two a second up to
four. The parts are now counted shortest window first, so a call a longer window refuses
is charged only to windows that end sooner.

Memory storage on a clock of the test's (``_MEMORY_CLOCK``), and the real Redis on
loopback (the shared one, a key prefix of the test's own; real time, a burst then 2.1 s).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

import meshkit.resilience.ratelimit as ratelimit
from meshkit.resilience._ratelimit_policy import parse_rule
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

METHOD = "/p.S/M"
STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter"]


class ManualClock:
    """Seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 5_000_000.0

    def time(self) -> float:
        return self.now


def test_parts_are_counted_shortest_window_first() -> None:
    """Whatever order the rule is written in, its parts come shortest window first (the
    rule's text is kept as written)."""
    for text in ("4/minute;2/second", "2/second;4/minute", "4 per minute; 2 per second"):
        items = parse_rule(text, where="default_rule")
        assert [item.get_expiry() for item in items] == [1, 60], text
    items = parse_rule("1000/day;10/minute;100/hour", where="default_rule")
    assert [item.get_expiry() for item in items] == [60, 3600, 86400]


async def _bursts(limiter: StorageLimiter, advance: object) -> list[int]:
    """Two bursts of ten calls 2.1 s apart (``advance()`` moves the clock that far):
    the calls each burst admitted."""
    admitted = []
    for burst in range(2):
        if burst:
            await advance()  # type: ignore[operator]
        admitted.append(sum([await limiter.check(METHOD, "caller") is None
                             for _ in range(10)]))
    return admitted


@pytest.mark.parametrize("rule", ["4/minute;2/second", "2/second;4/minute"],
                         ids=["minute-first", "second-first"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_memory_bursts_get_two_a_second_up_to_the_minute(
        monkeypatch: pytest.MonkeyPatch, strategy: str, rule: str) -> None:
    """Two bursts of ten, 2.1 s apart (the test's clock): two admitted each, written
    either way (before: minute first, the first burst spent the minute, 2 then 0)."""
    clock = ManualClock()
    monkeypatch.setattr(ratelimit._MEMORY_CLOCK, "time", clock.time)

    async def advance() -> None:
        clock.now += 2.1

    limiter = StorageLimiter(RateLimitOptions(default_rule=rule, strategy=strategy,  # type: ignore[arg-type]
                                              key_prefix=f"h43po-{uuid.uuid4().hex}"))
    try:
        assert await _bursts(limiter, advance) == [2, 2]
        clock.now += 2.1
        # the minute's four spent: refused, however many seconds have passed
        assert await limiter.check(METHOD, "caller") is not None
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_redis_bursts_get_two_a_second_up_to_the_minute(strategy: str) -> None:
    """The same on Redis, in real time: a burst, 2.1 s, a burst; "4/minute;2/second"
    admits the minute's four over the two bursts (before: 2 then 0). The sum, not
    ``[2, 2]``: a burst the loaded box stretches over a second's end is admitted up to
    four at once in real time, the minute then spent, and that is right too."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")

    async def advance() -> None:
        await asyncio.sleep(2.1)

    limiter = StorageLimiter(RateLimitOptions(
        default_rule="4/minute;2/second", strategy=strategy,  # type: ignore[arg-type]
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=f"h43po-{uuid.uuid4().hex}", storage_timeout_s=5.0))
    try:
        admitted = await _bursts(limiter, advance)
        assert sum(admitted) == 4, admitted
    finally:
        await limiter.aclose()
