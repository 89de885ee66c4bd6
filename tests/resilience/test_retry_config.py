"""Retry parts of the wrong kind are refused when built, the bad value quoted.

What was wrong: ``Backoff(rng=None)`` (``None`` read as "the default", as other meshkit
fields take it) was accepted, and the first retry of a call under it raised
``AttributeError: 'NoneType' object has no attribute 'uniform'`` to the caller in place
of the call's gRPC status; ``RetryInterceptor(budget=BudgetOptions())`` (options where a
``RetryBudget`` belongs) was accepted and failed every call (``record_request``), and
``RetryInterceptor(RetryPolicy())`` / ``RetryBudget(RetryOptions())`` raised a bare
``AttributeError`` naming neither the argument nor the value.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience import (
    Backoff,
    BudgetOptions,
    RetryBudget,
    RetryInterceptor,
    RetryOptions,
    RetryPolicy,
)


@pytest.mark.parametrize("rng", [None, 7, "seed", random.random])
def test_a_backoff_rng_without_uniform_is_refused(rng: object) -> None:
    with pytest.raises(ConfigError, match="rng") as info:
        Backoff(rng=rng)  # type: ignore[arg-type]
    assert repr(rng) in str(info.value)


class _Uniform:
    """A random source of another library's shape: only ``uniform(a, b)``."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


@pytest.mark.parametrize("rng", [random.Random(1), random, _Uniform()])
def test_any_random_source_with_uniform_is_taken(rng: object) -> None:
    delay = Backoff(rng=rng).delay_s(3)  # type: ignore[arg-type]
    assert 0.0 <= delay <= 0.1


@pytest.mark.parametrize(("build", "name", "value"), [
    (lambda v: RetryInterceptor(budget=v), "budget", BudgetOptions()),
    (RetryInterceptor, "options", RetryPolicy()),
    (RetryBudget, "options", RetryOptions()),
    (lambda v: RetryBudget(clock=v), "clock", 1.0),
])
def test_retry_parts_of_the_wrong_kind_are_refused(build: Callable[[object], object],
                                                    name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        build(value)
    assert repr(value) in str(info.value)


def test_the_right_kinds_and_none_are_taken() -> None:
    budget = RetryBudget(BudgetOptions(), clock=lambda: 5.0)
    assert RetryInterceptor(RetryOptions(), budget=budget).budget is budget
    assert RetryInterceptor(None, budget=None).options == RetryOptions()
    assert RetryBudget(None).options == BudgetOptions()


@pytest.mark.parametrize("hedge_delay_s", [0.0, 0.05])
def test_hedging_with_one_attempt_is_refused(hedge_delay_s: float) -> None:
    """``hedge_delay_s`` with ``max_attempts=1`` was accepted and hedged nothing (one
    attempt in all: no hedge is ever sent); gRFC A6 refuses a ``hedgingPolicy`` whose
    ``maxAttempts`` is not above 1."""
    with pytest.raises(ConfigError, match="max_attempts") as info:
        RetryPolicy(idempotent=True, hedge_delay_s=hedge_delay_s, max_attempts=1)
    assert "1" in str(info.value)
    assert RetryPolicy(idempotent=True, hedge_delay_s=hedge_delay_s,
                       max_attempts=2).max_attempts == 2
    assert RetryPolicy(max_attempts=1).hedge_delay_s is None  # retries off: as before
