"""A hedge is not sent when the time left is shorter than the method's typical latency.

A unary retry is not sent when the time left after its delay is shorter than the
method's typical latency (an EWMA of its successful attempts): it could not answer in
time and only adds load. A hedge did not apply that check: with a hedge due after 1.0 s,
a 1.2 s deadline and calls that take 0.4 s, the hedge went out with 0.2 s left, spent a
retry-budget token and loaded a second replica (usually the moment a service is slow)
for an answer that could not come before the deadline. gRFC A6 leaves the choice of
when a hedge is worth sending to the client; meshkit now applies the same rule to hedges
as to retries. Two real grpc.aio servers on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import SERVICE, method, raw_server

pytestmark = pytest.mark.timeout(60)


def _sleeper(calls: list[int]) -> grpc.GenericRpcHandler:
    """``Sleep``: waits the request's milliseconds, then answers; counts its calls."""

    async def sleep(request: bytes, context: Any) -> bytes:
        calls.append(int(request))
        await asyncio.sleep(int(request) / 1000)
        return b"ok"

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)})


async def _probe(registry: LocalRegistry,
                 timeout_s: float) -> tuple[int, int, list[int]]:
    """Three 0.4 s calls (the typical latency), then one of 5 s under ``timeout_s`` with a
    hedge due after 1.0 s: the hedges sent for it, the hedges given up for the deadline
    (``gave_up_deadline``), and the calls each server saw."""
    calls: list[int] = []
    async with raw_server(_sleeper(calls)) as (_, p1), raw_server(_sleeper(calls)) as (_, p2):
        for name, port in (("a", p1), ("b", p2)):
            await registry.register(Instance(service="echo", instance_id=name,
                                             host="127.0.0.1", port=port))
        policy = RetryPolicy(idempotent=True, hedge_delay_s=1.0, max_attempts=2)
        opts = meshkit.DialOptions(insecure=True, outlier=None,
                                   retry=RetryOptions(default=policy))
        async with meshkit.dial("echo", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(2)
            sleep = ch.unary_unary(method("Sleep"))
            for _ in range(3):
                assert await sleep(b"400", timeout=10) == b"ok"
            assert ch.retry is not None
            before = ch.retry.stats.hedges
            gave_up = ch.retry.stats.gave_up_deadline
            calls.clear()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await sleep(b"5000", timeout=timeout_s)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            return (ch.retry.stats.hedges - before,
                    ch.retry.stats.gave_up_deadline - gave_up, list(calls))


async def test_no_hedge_that_cannot_answer_in_time(registry: LocalRegistry) -> None:
    """0.2 s left when the hedge is due, calls taking 0.4 s: no hedge (counted in
    ``gave_up_deadline``, as a retry not sent), one server call."""
    hedges, gave_up, calls = await _probe(registry, 1.2)
    assert hedges == 0 and gave_up == 1 and calls == [5000]


async def test_a_hedge_with_time_to_answer_is_still_sent(registry: LocalRegistry) -> None:
    """2 s left when the hedge is due: it is sent, to the other server."""
    hedges, gave_up, calls = await _probe(registry, 3.0)
    assert hedges == 1 and gave_up == 0 and calls == [5000, 5000]
