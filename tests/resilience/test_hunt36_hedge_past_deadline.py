"""A hedged call whose attempt fails after the call's deadline sends no more attempts.

What was wrong: when an attempt of a hedged call failed with a retryable status (or a
nack) after the call's deadline had passed, the hedging loop sent the next attempt at
once all the same: an attempt started after the deadline (which the channel fails
``DEADLINE_EXCEEDED`` at once, hiding the status of the attempt that did run), a
retry-budget token spent and a hedge counted for it. The unary retry path gives up
there with the last attempt's status and counts ``gave_up_deadline``; so does a hedged
call now.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import RetryInterceptor, RetryOptions, RetryPolicy

pytestmark = pytest.mark.timeout(10)


async def test_no_hedge_is_sent_after_the_deadline() -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, hedge_delay_s=30.0, max_attempts=3)))
    sent: list[float | None] = []

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        sent.append(details.time_remaining_s())
        if len(sent) == 1:  # outlives the call's deadline, then fails retryably
            await asyncio.sleep((details.time_remaining_s() or 0) + 0.03)
        raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                          details="replica gone")

    details = ClientCallDetails(service="s", method="/p.S/Get", kind=CallKind.UNARY_UNARY,
                                timeout_s=0.05, metadata=None)
    with pytest.raises(AioRpcError) as caught:
        await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5)
    assert caught.value.details() == "replica gone"
    assert len(sent) == 1, f"attempts started with {sent[1:]} s left"
    assert retry.stats.hedges == 0
    assert retry.stats.gave_up_deadline == 1
    assert retry.budget.retries_in_window() == 0
