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
from fractions import Fraction

from meshkit._config import check_instance, check_number, check_seconds
from meshkit.errors import ConfigError

__all__ = ["BudgetOptions", "RetryBudget"]

_floor = math.floor


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

    __slots__ = ("_bucket_s", "_clock", "_cur", "_floor", "_fresh", "_i", "_ratio",
                 "_requests", "_retries", "_start", "_unit", "denied", "options")

    _N = 10

    def __init__(self, options: BudgetOptions | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_instance("options", options, BudgetOptions)
        if not callable(clock):
            raise ConfigError(f"clock must be a function returning seconds, got {clock!r}")
        self.options = options or BudgetOptions()
        self._clock = clock
        self._bucket_s = self.options.ttl_s / self._N
        # exact arithmetic in integer units of 1/_unit retry (as Finagle's and grpc-go's
        # budgets count in scaled integers): in floats 0.29 * 100 is 28.999999999999996,
        # and the budget granted 28 of the 29 retries it promises. Each value is taken as
        # the fraction nearest to it with a denominator up to 10**9 (the decimal the user
        # wrote: 0.29 is 29/100, 1 / 3 is 1/3)
        opts = self.options
        ratio = _fraction(opts.retry_ratio)
        floor = _fraction(opts.min_retries_per_s) * _fraction(opts.ttl_s)
        self._unit = unit = math.lcm(ratio.denominator, floor.denominator)
        self._ratio = ratio.numerator * (unit // ratio.denominator)
        self._floor = floor.numerator * (unit // floor.denominator)
        self._requests = [0] * self._N
        self._retries = [0] * self._N
        self._start = math.floor(clock() / self._bucket_s)
        self._cur = self._start
        self._i = self._cur % self._N  # the current bucket's index (of _cur, kept with it)
        # the current bucket's requests not yet in _requests (a plain counter: one
        # attribute increment per call), added to it when the bucket changes (_advance)
        self._fresh = 0
        self.denied = 0

    def _advance(self) -> int:
        now = _floor(self._clock() / self._bucket_s)
        if now != self._cur:
            self._requests[self._i] += self._fresh  # (the bucket they were counted in)
            self._fresh = 0
            steps = min(now - self._cur, self._N)
            for k in range(1, steps + 1):
                i = (self._cur + k) % self._N
                self._requests[i] = 0
                self._retries[i] = 0
            self._cur = now
            self._i = now % self._N
        return self._i

    def record_request(self) -> None:
        """Count one logical call (a deposit of ``retry_ratio`` retries)."""
        if _floor(self._clock() / self._bucket_s) != self._cur:  # another bucket now
            self._advance()
        self._fresh += 1  # the current bucket's (see _advance)

    def _units(self) -> int:
        """:meth:`balance` in units of ``1 / _unit`` retry (exact)."""
        self._advance()
        return (self._floor + self._ratio * (sum(self._requests) + self._fresh)
                - self._unit * sum(self._retries))

    def balance(self) -> float:
        """Retries still allowed in the current window (may be fractional, or negative
        when requests that paid for retries have left the window before them)."""
        return self._units() / self._unit

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget allows it; ``False`` (and counted) otherwise."""
        if self._units() >= self._unit:
            self._retries[self._i] += 1
            return True
        self.denied += 1
        return False

    def retries_in_window(self) -> int:
        """Retries spent in the current window."""
        self._advance()
        return sum(self._retries)


def _fraction(value: float) -> Fraction:
    """``value`` (finite, >= 0) as the fraction nearest to it with a denominator up to
    10**9: the decimal a user writes (``0.29``: 29/100), not the binary float's."""
    return Fraction(value).limit_denominator(10**9)
