"""The budget left that a channel reports is never a negative number of retries.

A retry budget's deposits (``retry_ratio`` per request) and withdrawals (one per retry)
each leave the window with the bucket they were counted in. When retries were spent in
a later bucket than the requests that paid for them (an outage that began mid-window),
the requests' bucket expires first and the balance falls below zero until the retries'
bucket expires too. What was wrong: ``RetryInterceptor.budget_left()``, which
``ChannelStats.retry.budget_left`` and the ``meshkit_client_retry_budget_available``
gauge read ("retries the budget still allows"; the dashboard: "0 means retries are
refused"), reported that debt as -5 retries available. It is 0 now; the budget's own
:meth:`RetryBudget.balance` keeps the arithmetic (the debt still holds retries back).
"""

from __future__ import annotations

from meshkit.resilience import BudgetOptions, RetryBudget, RetryInterceptor


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_budget_left_is_zero_not_a_debt() -> None:
    clock = _Clock()
    budget = RetryBudget(BudgetOptions(retry_ratio=0.5, min_retries_per_s=0, ttl_s=10),
                         clock=clock)
    retry = RetryInterceptor(budget=budget)
    for _ in range(10):
        budget.record_request()  # 5 retries deposited at t=100
    clock.t = 105.0
    assert [budget.try_withdraw() for _ in range(6)] == [True] * 5 + [False]
    assert retry.budget_left() == 0
    clock.t = 110.5  # the requests' bucket has left the window, the retries' has not
    assert budget.balance() == -5  # the debt: retries stay refused ...
    assert not budget.try_withdraw()
    assert retry.budget_left() == 0  # ... and none is reported available
    clock.t = 115.5  # the retries' bucket has left too
    assert retry.budget_left() == 0
    budget.record_request()
    budget.record_request()
    assert retry.budget_left() == 1.0
