"""Hedging against gRFC A6: a zero hedging delay, and the losing hedges' cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import RoundRobin
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, BudgetOptions, RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.balancing import Prefer
from tests.support.echo import SERVICE, method
from tests.support.wait import until

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


def _slow_or_fast(instance_id: str, events: list[str]) -> tuple[Any, None]:
    """The echo service's ``Unary`` on ``instance_id``: ``slow`` waits 30 s and notes
    ``"cancelled"`` when its call is cancelled; ``fast`` answers at once."""

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if instance_id == "slow":
            events.append("started")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
        return instance_id.encode() + b"|" + request

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),))

    return add, None


async def test_the_losing_hedge_is_cancelled_on_its_server(registry: LocalRegistry) -> None:
    """When a hedge wins, the attempt still in flight is cancelled: its server's handler
    is cancelled (the call ends ``CANCELLED`` there) rather than left to run."""
    events: list[str] = []
    servers = []
    for iid in ("slow", "fast"):
        srv = meshkit.MeshServer("echo", [_slow_or_fast(iid, events)], registry=registry,
                                 options=meshkit.ServeOptions(insecure=True, instance_id=iid,
                                                              admin=None, drain_delay_s=0.0,
                                                              grace_s=0.5))
        await srv.start()
        servers.append(srv)
    policy = RetryPolicy(idempotent=True, hedge_delay_s=0.05, max_attempts=2)
    try:
        async with meshkit.dial("echo", registry=registry, options=opts(
                policy, balancer=lambda: Prefer("slow"))) as ch:
            await ch.wait_for_endpoints(2)
            # the answer does not wait for the losing attempt: well before the deadline
            # (which would end it on its server as well)
            answer = await asyncio.wait_for(
                ch.unary_unary(method("Unary"))(b"h", timeout=10), 3)
            assert answer == b"fast|h"
            await until(lambda: "cancelled" in events, timeout_s=5, what="the slow hedge cancelled")
    finally:
        for srv in servers:
            await srv.drain()
    assert events == ["started", "cancelled"]


async def test_zero_hedging_delay_fans_out_no_further_than_the_retry_budget(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """With hedge_delay_s=0 every hedge still spends a retry-budget token: a budget of one
    retry sends two attempts of max_attempts=4, and counts the refused hedge."""
    served: dict[str, list[str]] = {name: [] for name in ("a", "b", "c", "d")}
    for name, log in served.items():
        await echo_servers(name, delay_s=0.3, served=log)
    policy = RetryPolicy(idempotent=True, hedge_delay_s=0, max_attempts=4, backoff=FAST)
    options = meshkit.DialOptions(insecure=True, outlier=None, balancer=RoundRobin,
                                  retry=RetryOptions(default=policy, budget=BudgetOptions(
                                      retry_ratio=0.0, min_retries_per_s=0.1, ttl_s=10)))
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(4)
        answer = await asyncio.wait_for(ch.unary_unary(method("Unary"))(b"z", timeout=5), 4)
        assert ch.retry is not None
        assert (ch.retry.stats.hedges, ch.retry.stats.budget_exhausted) == (1, 1)
    assert answer.endswith(b"|z")
    assert sorted(len(log) for log in served.values()) == [0, 0, 1, 1]
