"""A ``memory://`` sliding-window hit runs in one frame of meshkit's
(``_acquire_sliding_window_entry``) instead of ``limits``' six methods: the same answers and
the same counters, expiries and locks as ``limits``' own method, on meshkit's clock; a
``limits`` whose code differs keeps its own method."""

from __future__ import annotations

import math
import random
import sys
from types import FrameType
from typing import Any

import pytest
from limits.storage import MemoryStorage

from meshkit.resilience import RateLimitOptions, ratelimit
from meshkit.resilience.ratelimit import (
    _MEMORY_CLOCK,
    StorageLimiter,
    SweepThrottledMemoryStorage,
    _rebound_to_clock,
)

SEEDS = (1, 2, 3, 4, 5, 6)


def _state(storage: SweepThrottledMemoryStorage) -> tuple[Any, ...]:
    """The counters, their expiries and the keys holding a lock."""
    return (dict(storage.storage), dict(storage.expirations), sorted(storage.locks))


def _quiet_storage() -> SweepThrottledMemoryStorage:
    """A storage whose expiry sweeps never run (they delete counters on their own time):
    limits' first timer (started when it is built) cancelled, none scheduled later."""
    storage = SweepThrottledMemoryStorage("memory://")
    storage.close()
    storage._next_sweep_s = math.inf
    return storage


def test_the_installed_limits_gets_the_one_frame_hit() -> None:
    """limits 5.8 (the pinned release) is the code the one-frame hit follows."""
    assert ratelimit.ONE_FRAME_SLIDING_WINDOW
    assert (
        SweepThrottledMemoryStorage.acquire_sliding_window_entry
        is ratelimit._acquire_sliding_window_entry
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_hits_answer_and_count_as_limits_own_method(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 random hits (keys, limits, windows, amounts, clock steps, some on a window's
    edge) through the one-frame hit and through limits' own method on meshkit's clock:
    the same answer to each, the same counters, expiries and locks after each."""
    rng = random.Random(seed)
    now = [1.7e9 + rng.random()]
    monkeypatch.setattr(_MEMORY_CLOCK, "time", lambda: now[0])
    limits_own = _rebound_to_clock(MemoryStorage, _MEMORY_CLOCK)["acquire_sliding_window_entry"]
    ours, theirs = _quiet_storage(), _quiet_storage()
    refused = 0
    for step in range(3000):
        key = rng.choice(("a", "b", "c/d"))
        limit = rng.choice((1, 2, 5, 10))
        expiry = rng.choice((1, 2, 60))
        amount = rng.choice((1, 1, 1, 2, 3, 11))
        roll = rng.random()
        if roll < 0.05:
            now[0] = math.ceil(now[0] / expiry) * expiry  # on a window's edge
        elif roll < 0.6:
            now[0] += rng.choice((0.0, 0.001, 0.1, 0.4, 1.3, 2.5))
        got = ours.acquire_sliding_window_entry(key, limit, expiry, amount)
        want = limits_own(theirs, key, limit, expiry, amount)
        assert got is want, (seed, step)
        assert _state(ours) == _state(theirs), (seed, step)
        refused += not got
    assert 300 < refused < 2700  # both answers were exercised


def test_a_sliding_window_check_enters_no_limits_frame() -> None:
    """A known caller's admitted one-limit sliding-window check runs no frame of limits'
    code (it ran six: acquire_sliding_window_entry, sliding_window_keys,
    _get_sliding_window_info, get twice, incr); the limit still holds."""
    check = StorageLimiter(RateLimitOptions(default_rule="4/minute")).checker("/s.A/M")
    assert check is not None
    # the first hit ran the storage's first sweep (no loop: at once), which forgot the
    # caller's storage key as it had no count yet; the second made and kept it
    assert [check("alice"), check("alice")] == [None, None]
    entered: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and "limits" in frame.f_code.co_filename.split("/")[-3:-1]:
            entered.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        admitted = check("alice")
    finally:
        sys.setprofile(None)
    assert admitted is None and entered == []
    assert check("alice") is None and check("alice") is not None


def test_a_limits_of_other_code_keeps_its_own_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-frame hit is taken only where limits' methods have the shape it follows,
    and only on meshkit's clock."""
    assert ratelimit._sliding_window_code_known()
    changed = dict(ratelimit._SLIDING_WINDOW_CODE)
    names, _, local_names = changed["get"]
    changed["get"] = (names, (1, None), local_names)  # e.g. a constant changed
    monkeypatch.setattr(ratelimit, "_SLIDING_WINDOW_CODE", changed)
    assert not ratelimit._sliding_window_code_known()
    monkeypatch.undo()
    monkeypatch.setattr(ratelimit, "_MEMORY_CLOCK_ERROR", "TypeError: another clock")
    assert not ratelimit._sliding_window_code_known()
