"""A server stream retried before its first response (``RetryingStreamCall``) whose backoff
ran past the call's deadline is not opened again.

The retry policy grants a retry only when its delay ends before the deadline, but a
loaded event loop wakes a sleeper late. What was wrong: the retrying stream opened its
next attempt whatever time was left once it woke, and the channel failed that attempt
``DEADLINE_EXCEEDED`` "deadline exceeded" at once, so the caller lost the status and
details of the attempt that ran, and ``gave_up_deadline`` counted nothing (the unary path
and a stream's opening were fixed the same way in ``f11c5cd`` / ``e0cb2cd``).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import Backoff, RetryInterceptor, RetryOptions, RetryPolicy

pytestmark = pytest.mark.timeout(10)


class _Longest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class _FailingAttempt:
    """An attempt (the part of a grpc.aio unary-stream call the retrying stream uses)
    whose first read fails ``UNAVAILABLE``."""

    def __init__(self, block_s: float) -> None:
        self._block_s = block_s

    async def read(self) -> Any:
        if self._block_s:  # the loop is busy past the deadline while the call backs off
            asyncio.get_running_loop().call_soon(time.sleep, self._block_s)
        raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                          details="replica gone")

    def cancel(self) -> bool:
        return False

    def done(self) -> bool:
        return True


@pytest.mark.parametrize("woken_late", [True, False], ids=["late", "in-time"])
async def test_a_retrying_stream_is_not_reopened_past_its_deadline(woken_late: bool) -> None:
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
        return _FailingAttempt(0.4 if woken_late and len(sent) == 1 else 0.0)

    details = ClientCallDetails(service="s", method="/p.S/List", kind=CallKind.UNARY_STREAM,
                                timeout_s=1.5 if not woken_late else 0.3, metadata=None)
    call = await retry.intercept_stream(details, b"", proceed)
    with pytest.raises(AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.UNAVAILABLE, "replica gone")
    if woken_late:
        assert len(sent) == 1, f"attempts opened with {sent[1:]} s left"
        assert retry.stats.gave_up_deadline == 1
    else:  # the control: in time, every attempt is made
        assert len(sent) == 3, sent
        assert retry.stats.gave_up_deadline == 0
