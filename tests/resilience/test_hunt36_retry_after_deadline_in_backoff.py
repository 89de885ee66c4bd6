"""A retry whose backoff ran past the call's deadline is not started.

The retry policy grants a retry only when its delay ends before the deadline, but a
loaded event loop wakes a sleeper late. What was wrong: the unary retry loop started the
next attempt whatever time was left once it woke, so a call whose backoff overran its
deadline started an attempt after it, which the channel fails ``DEADLINE_EXCEEDED``
"deadline exceeded" at once: the caller lost the status of the attempt that ran (its
``UNAVAILABLE`` and details), and nothing counted ``gave_up_deadline``. The loop now
checks the time left when it wakes and ends the call with the last attempt's error.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from meshkit.errors import NoEndpointsError
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import Backoff, RetryInterceptor, RetryOptions, RetryPolicy

pytestmark = pytest.mark.timeout(10)


class _Longest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


async def test_an_attempt_is_not_started_when_the_backoff_overran_the_deadline() -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, max_attempts=3,
        backoff=Backoff(base_delay_s=0.05, max_delay_s=0.05, rng=_Longest()))))
    sent: list[float | None] = []

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        remaining = details.time_remaining_s()
        sent.append(remaining)
        if remaining is not None and remaining <= 0:  # as the channel answers it
            raise AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, Metadata(), Metadata(),
                              details="deadline exceeded")
        if len(sent) == 1:  # the loop is busy past the deadline while the call backs off
            asyncio.get_running_loop().call_soon(time.sleep, 0.4)
        raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                          details="replica gone")

    details = ClientCallDetails(service="s", method="/p.S/Get", kind=CallKind.UNARY_UNARY,
                                timeout_s=0.3, metadata=None)
    with pytest.raises(AioRpcError) as caught:
        await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.UNAVAILABLE, "replica gone")
    assert len(sent) == 1, f"attempts started with {sent[1:]} s left"
    assert retry.stats.gave_up_deadline == 1


@pytest.mark.parametrize("kind", [CallKind.UNARY_STREAM, CallKind.STREAM_STREAM])
async def test_a_stream_is_not_opened_when_the_backoff_overran_the_deadline(
        kind: CallKind) -> None:
    """The same for a stream waiting out a moment without endpoints: it ends with its
    ``UNAVAILABLE`` (no endpoint), not an attempt's ``DEADLINE_EXCEEDED``."""
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, max_attempts=3,
        backoff=Backoff(base_delay_s=0.05, max_delay_s=0.05, rng=_Longest()))))
    sent: list[float | None] = []

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        remaining = details.time_remaining_s()
        sent.append(remaining)
        if remaining is not None and remaining <= 0:  # as the channel answers it
            raise AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, Metadata(), Metadata(),
                              details="deadline exceeded")
        asyncio.get_running_loop().call_soon(time.sleep, 0.4)
        raise NoEndpointsError("s")

    details = ClientCallDetails(service="s", method="/p.S/Get", kind=kind,
                                timeout_s=0.3, metadata=None)
    with pytest.raises(NoEndpointsError):
        await asyncio.wait_for(retry.intercept_stream(details, b"", proceed), 5)
    assert len(sent) == 1, f"attempts started with {sent[1:]} s left"
    assert retry.stats.gave_up_deadline == 1
