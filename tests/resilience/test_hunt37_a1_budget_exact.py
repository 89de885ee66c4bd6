"""The retry budget allows ``min_retries_per_s * ttl_s + retry_ratio * requests`` retries
in its window. Its float arithmetic lost one at some ratios: ``retry_ratio=0.29`` over
100 requests is 28.999999999999996 in floats, so it granted 28 of the 29 retries the
configuration promises (0.57 and 0.58 too); a budget read as a percentage in a dashboard
was short by one. The counts are now kept in exact (scaled integer) arithmetic, as
Finagle's and grpc-go's budgets do. A fake clock: no I/O."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from meshkit.resilience import BudgetOptions, RetryBudget


def _granted(budget: RetryBudget) -> int:
    n = 0
    while budget.try_withdraw():
        n += 1
        assert n < 10_000
    return n


@pytest.mark.parametrize("ratio", [k / 100 for k in range(1, 101)])
@pytest.mark.parametrize("requests", [3, 7, 100, 1000])
def test_the_ratio_grants_every_retry_it_promises(ratio: float, requests: int) -> None:
    """``retry_ratio * requests`` retries, computed on the decimal the user wrote."""
    budget = RetryBudget(BudgetOptions(retry_ratio=ratio, min_retries_per_s=0),
                         clock=lambda: 0.0)
    for _ in range(requests):
        budget.record_request()
    assert _granted(budget) == math.floor(Fraction(str(ratio)) * requests)


def test_the_reported_example() -> None:
    """0.29 over 100 requests: 29 retries, the 30th refused and counted."""
    budget = RetryBudget(BudgetOptions(retry_ratio=0.29, min_retries_per_s=0),
                         clock=lambda: 0.0)
    for _ in range(100):
        budget.record_request()
    assert budget.balance() == 29
    assert _granted(budget) == 29
    assert budget.denied == 1
    assert budget.balance() == 0


@pytest.mark.parametrize(("per_s", "ttl_s"), [(0.3, 10.0), (0.7, 3.0), (1.1, 10.0),
                                              (0.3, 3.0), (2.9, 10.0), (0.58, 100.0)])
def test_the_floor_grants_what_it_promises(per_s: float, ttl_s: float) -> None:
    """``min_retries_per_s * ttl_s`` retries with no request at all."""
    budget = RetryBudget(BudgetOptions(retry_ratio=0.0, min_retries_per_s=per_s,
                                       ttl_s=ttl_s), clock=lambda: 0.0)
    assert _granted(budget) == math.floor(Fraction(str(per_s)) * Fraction(str(ttl_s)))


def test_a_third_still_grants_one_retry_in_three() -> None:
    """A ratio the user gave as a fraction (1/3) keeps what floats gave it."""
    budget = RetryBudget(BudgetOptions(retry_ratio=1 / 3, min_retries_per_s=0),
                         clock=lambda: 0.0)
    for _ in range(3):
        budget.record_request()
    assert _granted(budget) == 1


def test_the_window_still_slides() -> None:
    """Requests that leave the window take their share of retries with them."""
    now = [0.0]
    budget = RetryBudget(BudgetOptions(retry_ratio=0.29, min_retries_per_s=0, ttl_s=10),
                         clock=lambda: now[0])
    for _ in range(100):
        budget.record_request()
    now[0] = 5.0
    for _ in range(100):
        budget.record_request()
    assert _granted(budget) == 58
    now[0] = 10.5  # the first 100 requests left the window; the 58 retries stay
    assert budget.balance() == pytest.approx(29 - 58)
    assert not budget.try_withdraw()
