"""The memory:// sweep gives the event loop back between bounded steps.

The sweep that gives expired counts back (once a second) walked every key in one loop
callback: with the default ``max_keys`` (100,000 callers) the server's event loop was
held 233 ms at each sweep with the moving window (limits' walk bisects and slices every
caller's list of hits) and 20-26 ms with the fixed and sliding windows, so every call
the server was handling waited that long once a second (measured with
``SweepThrottledMemoryStorage._sweep`` on this box). Now one callback looks at no more
than :data:`~meshkit.resilience.ratelimit._SWEEP_STEP_KEYS` keys, the next step
scheduled after it (``loop.call_soon``), and the callers whose windows ended are still
all given back (and forgotten by the limiter) once the steps are done.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.resilience import ratelimit
from meshkit.resilience.ratelimit import (
    _SWEEP_STEP_KEYS,
    RateLimitOptions,
    StorageLimiter,
    Strategy,
)
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = "/p.S/M"


def _held(storage: Any) -> int:
    return len(storage.storage) + len(storage.events)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_sweep_of_many_callers_runs_in_bounded_steps(
        strategy: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 x _SWEEP_STEP_KEYS callers whose windows ended: the first sweep callback gives
    back no more than one step's keys, the others follow in later callbacks until none
    is left, and the limiter then tracks only the caller still counted."""
    now = [ratelimit._MEMORY_CLOCK.time()]
    monkeypatch.setattr(ratelimit._MEMORY_CLOCK, "time", lambda: now[0])
    limiter = StorageLimiter(RateLimitOptions(default_rule="5/minute", strategy=strategy))
    storage: Any = limiter._storage
    storage.sweep_interval_s = 3600.0  # no sweep but the one this test starts
    check = limiter.checker(METHOD)
    assert check is not None
    callers = 3 * _SWEEP_STEP_KEYS
    try:
        for i in range(callers):
            assert check(f"x-user=flood-{i}") is None
        before = _held(storage)
        assert before >= callers
        now[0] += 2 * 3600  # every window over, a sliding window's previous one too
        assert check("steady") is None  # counted: its key stays
        storage._next_sweep_s = 0.0
        assert check("steady") is None  # a sweep due: scheduled on this loop
        assert storage._sweep_handle is not None
        storage._sweep_handle.cancel()
        storage._sweep()  # one step, as the loop runs it
        assert before - _held(storage) <= _SWEEP_STEP_KEYS, (before, _held(storage))
        await until(lambda: _held(storage) <= 2, timeout_s=5, what="the sweep's later steps")
        await until(lambda: len(limiter._lru) == 1, timeout_s=5, what="callers forgotten")
        assert limiter.keys_evicted == 0
        for _ in range(3):
            assert check("steady") is None
        assert check("steady") is not None  # its 5 of 5/minute: counted throughout
    finally:
        await limiter.aclose()
