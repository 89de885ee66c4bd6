"""A sliding-window refusal at its window's last millisecond asks for no whole window.

Redis' sliding window counter (``limits``' ``acquire_sliding_window.lua`` and
``sliding_window.lua``) keeps a window's hits in a key that lives two windows from its
start, and shifts it into the previous window once its PTTL is *below* the window: at the
millisecond its PTTL equals the window exactly the shift has not happened yet, the hit is
refused, and the window's figures read back are ``(previous 0, 0.0, current n, window)``.
The window ends then (``current_expires_in_s - window_s`` = 0) and a hit a millisecond
later is admitted, yet :func:`sliding_window_wait_s` read a TTL of exactly one window as
the time left in the window (its branch for TTLs below a window): the refusal said
``retry-after`` a whole window and ``grpc-retry-pushback-ms`` the window in milliseconds
("3/second": 1000 ms; "100/hour": an hour, past meshkit clients' ``max_pushback_s``, so
they gave up). Callers retrying on their pushback arrive at exactly that millisecond (the
pushback of a full window points at its end), so it is met about once a window.

Real Redis on loopback (the shared one, a key prefix of the test's own).
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from meshkit.resilience._ratelimit_policy import sliding_window_wait_s
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)

METHOD = "/p.S/M"


@pytest.mark.parametrize(("amount", "window_s"), [(3, 1.0), (100, 3600.0), (5, 2.0)],
                         ids=["3-per-second", "100-per-hour", "5-per-2-seconds"])
def test_a_window_at_its_last_millisecond_has_ended(amount: int, window_s: float) -> None:
    """The figures Redis answers at the boundary millisecond (the current key's PTTL is
    the window, not shifted yet; the previous window gone): the hits of the current
    window weigh fully for no more time, so the wait is none, not a whole window."""
    wait = sliding_window_wait_s(amount=amount, window_s=window_s, previous_count=0,
                                 previous_expires_in_s=0.0, current_count=amount,
                                 current_expires_in_s=window_s)
    assert wait == 0.0, wait
    # one millisecond earlier (PTTL a window and a millisecond): a millisecond left
    wait = sliding_window_wait_s(amount=amount, window_s=window_s, previous_count=0,
                                 previous_expires_in_s=0.0, current_count=amount,
                                 current_expires_in_s=window_s + 0.001)
    assert wait == pytest.approx(0.001)
    # no current key at all (Redis' PTTL -2, read as 0): nothing to wait for either
    assert sliding_window_wait_s(amount=amount, window_s=window_s, previous_count=0,
                                 previous_expires_in_s=0.0, current_count=0,
                                 current_expires_in_s=0.0) == 0.0


async def test_no_redis_refusal_asks_for_far_more_than_its_window_needs() -> None:
    """A caller checking again and again against "3/second" on Redis: no refusal whose
    pushback is half a second or more is followed by an admission within half its
    pushback of the moment the refused check was sent (Redis read the window after that
    moment, so a right pushback admits nothing sooner; a stall of the loaded box after
    Redis answered cannot make a right answer look wrong) (the
    pushback is the wait read from Redis' PTTLs, to the millisecond; before the fix the
    refusals at a window's last millisecond said 1000 ms and the next check, a
    millisecond later, was admitted). Runs over about four window ends."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="3/second", strategy="sliding-window-counter",
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=f"h43sb-{uuid.uuid4().hex}", storage_timeout_s=5.0))
    wrong: list[tuple[int, float]] = []
    refusals = 0
    try:
        # (when its check was sent, pushback ms) of a long refusal
        last: tuple[float, int] | None = None
        end = time.monotonic() + 4.5
        while time.monotonic() < end and len(wrong) < 3:
            sent = time.monotonic()
            rejection = await limiter.check(METHOD, "caller")
            now = time.monotonic()
            if rejection is None:
                if last is not None and now - last[0] < last[1] / 1000 / 2:
                    wrong.append((last[1], round(now - last[0], 4)))
                last = None
                continue
            refusals += 1
            assert rejection.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            pushback = rejection.pushback_ms
            last = (sent, pushback) if pushback is not None and pushback >= 500 else None
    finally:
        await limiter.aclose()
    assert refusals > 0
    assert wrong == [], (f"refusals said (pushback ms, then admitted after s): {wrong}")
