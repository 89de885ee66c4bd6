"""Hedging against gRFC A6: a zero hedging delay, and the losing hedges' cancellation."""

from __future__ import annotations

import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, BudgetOptions, RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.echo import method

FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)


def opts(policy: RetryPolicy, **kw: object) -> meshkit.DialOptions:
    """DialOptions with one retry policy for every method, no ejection."""
    kw.setdefault("outlier", None)
    return meshkit.DialOptions(insecure=True, retry=RetryOptions(
        default=policy, budget=BudgetOptions()), **kw)  # type: ignore[arg-type]


def test_zero_hedging_delay_is_accepted() -> None:
    """gRFC A6 allows hedgingDelay "0s" (every attempt sent at once); a negative delay is
    still refused, quoting it."""
    assert RetryPolicy(idempotent=True, hedge_delay_s=0, max_attempts=3).hedge_delay_s == 0
    assert RetryPolicy(idempotent=True, hedge_delay_s=0.0).hedge_delay_s == 0.0
    with pytest.raises(meshkit.ConfigError, match=r"-0\.5"):
        RetryPolicy(idempotent=True, hedge_delay_s=-0.5)


async def test_zero_hedging_delay_sends_every_attempt_at_once(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """With hedge_delay_s=0 the call's max_attempts attempts all go out at once, each to
    its own endpoint, though none has answered yet."""
    served: dict[str, list[str]] = {name: [] for name in ("a", "b", "c")}
    for name, log in served.items():
        await echo_servers(name, delay_s=0.4, served=log)
    policy = RetryPolicy(idempotent=True, hedge_delay_s=0, max_attempts=3, backoff=FAST)
    async with meshkit.dial("echo", registry=registry,
                            options=opts(policy, balancer=RoundRobin)) as ch:
        await ch.wait_for_endpoints(3)
        answer = await ch.unary_unary(method("Unary"))(b"z", timeout=5)
        assert ch.retry is not None
        assert ch.retry.stats.hedges == 2
    assert answer.endswith(b"|z")
    assert [len(log) for log in served.values()] == [1, 1, 1]
