"""Retry budget: retries may be at most a ratio of recent requests plus a floor.

Finagle's ``RetryBudget`` and Linkerd's ``retryBudget`` (defaults: ``retry_ratio`` 0.2,
``min_retries_per_s`` 10, ``ttl_s`` 10): over the last ``ttl_s`` seconds, allowed retries
are ``min_retries_per_s * ttl_s + retry_ratio * requests``. A sick service therefore sees
at most ~20 % more load from retries, not a multiple of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshkit._config import check_instance, check_number, check_seconds
from meshkit.errors import ConfigError

__all__ = ["BudgetOptions", "RetryBudget"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetOptions:
    """Parameters of a :class:`RetryBudget` (Finagle/Linkerd defaults).

    Args:
        retry_ratio: retries allowed per request, 0..1 (default 0.2).
        min_retries_per_s: retries always allowed per second, >= 0 (default 10).
        ttl_s: window over which requests and retries are counted, seconds, at least
            0.001 (default 10); counted in 10 buckets of ``ttl_s / 10``.

    Raises:
        ConfigError: a value out of range (quoted).
    """

    retry_ratio: float = 0.2
    min_retries_per_s: float = 10.0
    ttl_s: float = 10.0

    def __post_init__(self) -> None:
        check_number("retry_ratio", self.retry_ratio, high=1.0)
        check_number("min_retries_per_s", self.min_retries_per_s)
        check_seconds(self, ("ttl_s",))
        # the window's buckets are ttl_s / 10 wide and the clock is divided by that: a
        # sub-millisecond window would overflow the division (1e-310) or divide by zero
        check_number("ttl_s", self.ttl_s, low=0.001)


class RetryBudget:
    """Counts requests and retries in a sliding window of 10 buckets over ``ttl_s``.

    Call :meth:`record_request` once per logical call and :meth:`try_withdraw` before each
    retry or hedge; it returns ``False`` when the budget is spent. Not thread-safe (one
    event loop).

    Args:
        options: :class:`BudgetOptions` (default ``BudgetOptions()``).
        clock: monotonic seconds (default ``time.monotonic``).

    Raises:
        ConfigError: ``options`` is no :class:`BudgetOptions`, or ``clock`` is not
            callable (quoted).
    """

    __slots__ = ("_bucket_s", "_clock", "_cur", "_floor", "_ratio", "_requests", "_retries",
                 "_start", "denied", "options")

    _N = 10

    def __init__(self, options: BudgetOptions | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_instance("options", options, BudgetOptions)
        if not callable(clock):
            raise ConfigError(f"clock must be a function returning seconds, got {clock!r}")
        self.options = options or BudgetOptions()
        self._clock = clock
        self._bucket_s = self.options.ttl_s / self._N
        self._ratio = self.options.retry_ratio
        self._floor = self.options.min_retries_per_s * self.options.ttl_s
        self._requests = [0] * self._N
        self._retries = [0] * self._N
        self._start = math.floor(clock() / self._bucket_s)
        self._cur = self._start
        self.denied = 0

    def _advance(self) -> int:
        now = math.floor(self._clock() / self._bucket_s)
        if now != self._cur:
            steps = min(now - self._cur, self._N)
            for k in range(1, steps + 1):
                i = (self._cur + k) % self._N
                self._requests[i] = 0
                self._retries[i] = 0
            self._cur = now
        return now % self._N

    def record_request(self) -> None:
        """Count one logical call (a deposit of ``retry_ratio`` retries)."""
        if math.floor(self._clock() / self._bucket_s) == self._cur:  # the current bucket
            self._requests[self._cur % self._N] += 1
        else:
            self._requests[self._advance()] += 1

    def balance(self) -> float:
        """Retries still allowed in the current window (may be fractional)."""
        self._advance()
        return self._floor + self._ratio * sum(self._requests) - sum(self._retries)

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget allows it; ``False`` (and counted) otherwise."""
        if self.balance() >= 1:
            self._retries[self._cur % self._N] += 1
            return True
        self.denied += 1
        return False

    def retries_in_window(self) -> int:
        """Retries spent in the current window."""
        self._advance()
        return sum(self._retries)
