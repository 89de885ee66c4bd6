"""The retry layer's per-method latency estimate (what a retry or hedge must fit in the
time left) is kept for a bounded number of methods: a channel calling ever new method
names (a gateway forwarding its callers' names to a catch-all server, a generic client)
holds a bounded amount for them. It kept one entry per name answered, for good."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import RetryInterceptor, RetryOptions, RetryPolicy

pytestmark = pytest.mark.timeout(60)

# names this long make each one retained ~300 bytes (plus its entry): a batch of 4000
# kept for good is over 1 MB, far over the margin below
_PAD = "x" * 240


async def _ok(details: ClientCallDetails, request: Any) -> bytes:
    return b"ok"


async def _calls(retry: RetryInterceptor, start: int, n: int) -> None:
    for i in range(start, start + n):
        details = ClientCallDetails(service="gw", method=f"/meshkit.test.G{_PAD}/M{i}",
                                    kind=CallKind.UNARY_UNARY, timeout_s=5.0, metadata=None)
        assert await retry.intercept_unary(details, b"", _ok) == b"ok"


@pytest.mark.parametrize("policy", ["retries", "hedging"])
async def test_answers_of_ever_new_methods_do_not_grow_the_retry_layer(policy: str) -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(idempotent=True, hedge_delay_s=(
        0.5 if policy == "hedging" else None))))
    tracemalloc.start()  # from the first name: every name a cache holds is traced
    try:
        # past every per-method bound (the policy table's cache holds the newest 4096)
        await _calls(retry, 0, 6000)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        await _calls(retry, 6000, 4000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 300_000, f"grew {after - before} bytes over 4000 new methods"


async def test_the_latency_estimate_still_holds_back_a_retry_that_cannot_fit() -> None:
    """The bound keeps the estimate working: a method seen answering slowly gets no retry
    when the time left is shorter than its typical latency, after other methods' flood."""
    from grpc import StatusCode
    from grpc.aio import AioRpcError, Metadata

    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(idempotent=True)))
    await _calls(retry, 0, 6000)
    retry._observe("/p.S/Slow", 10.0)  # a method whose calls take 10 s
    attempts = 0

    async def unavailable(details: ClientCallDetails, request: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise AioRpcError(StatusCode.UNAVAILABLE, Metadata(), Metadata(), details="gone")

    details = ClientCallDetails(service="gw", method="/p.S/Slow", kind=CallKind.UNARY_UNARY,
                                timeout_s=2.0, metadata=None)
    with pytest.raises(AioRpcError):
        await asyncio.wait_for(retry.intercept_unary(details, b"", unavailable), 10)
    assert attempts == 1 and retry.stats.gave_up_deadline == 1
