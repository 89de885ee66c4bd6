"""The retry budget counts the current bucket's requests in a plain counter, added to
the bucket's slot when the bucket changes (one attribute increment per call, not a list
slot's): its answers are those of the bucket-slot algorithm it replaces, step for step,
whatever the clock does (small steps, bucket edges, jumps past the window, a clock that
goes back), for every ratio and floor."""

from __future__ import annotations

import math
import random

import pytest

from meshkit.resilience import BudgetOptions, RetryBudget
from meshkit.resilience._budget import _fraction


class Clock:
    """Seconds moved by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Reference:
    """The algorithm before the counter: each request added to its bucket's slot."""

    _N = 10

    def __init__(self, options: BudgetOptions, clock: Clock) -> None:
        self._clock = clock
        self._bucket_s = options.ttl_s / self._N
        ratio = _fraction(options.retry_ratio)
        floor = _fraction(options.min_retries_per_s) * _fraction(options.ttl_s)
        self._unit = unit = math.lcm(ratio.denominator, floor.denominator)
        self._ratio = ratio.numerator * (unit // ratio.denominator)
        self._floor = floor.numerator * (unit // floor.denominator)
        self._requests = [0] * self._N
        self._retries = [0] * self._N
        self._cur = math.floor(clock() / self._bucket_s)
        self._i = self._cur % self._N
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
            self._i = now % self._N
        return self._i

    def record_request(self) -> None:
        if math.floor(self._clock() / self._bucket_s) == self._cur:
            self._requests[self._i] += 1
        else:
            self._requests[self._advance()] += 1

    def _units(self) -> int:
        self._advance()
        return self._floor + self._ratio * sum(self._requests) - self._unit * sum(self._retries)

    def balance(self) -> float:
        return self._units() / self._unit

    def try_withdraw(self) -> bool:
        if self._units() >= self._unit:
            self._retries[self._i] += 1
            return True
        self.denied += 1
        return False

    def retries_in_window(self) -> int:
        self._advance()
        return sum(self._retries)


@pytest.mark.parametrize("seed", range(6))
def test_the_budget_answers_as_the_bucket_slot_algorithm(seed: int) -> None:
    rnd = random.Random(seed)
    options = BudgetOptions(
        retry_ratio=rnd.choice([0.0, 0.1, 0.29, 1 / 3, 1.0]),
        min_retries_per_s=rnd.choice([0.0, 0.5, 10.0]),
        ttl_s=rnd.choice([0.001, 1.0, 10.0]),
    )
    clock = Clock(rnd.uniform(0.0, 1e6))
    ref_clock = Clock(clock.t)
    got, want = RetryBudget(options, clock=clock), Reference(options, ref_clock)
    width = options.ttl_s / 10
    for _ in range(3000):
        step = rnd.choice(
            [0.0, 0.0, width / 7, width, width * 3, options.ttl_s * 2, -width / 2, -width * 4]
        )
        clock.t = ref_clock.t = max(0.0, clock.t + step)
        op = rnd.random()
        if op < 0.55:
            got.record_request()
            want.record_request()
        elif op < 0.8:
            assert got.try_withdraw() == want.try_withdraw()
        elif op < 0.9:
            assert got.balance() == want.balance()
        else:
            assert got.retries_in_window() == want.retries_in_window()
        assert got.denied == want.denied
    assert got.balance() == want.balance()
