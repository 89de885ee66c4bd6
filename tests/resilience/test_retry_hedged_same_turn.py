"""A hedged call whose answer and another attempt's fatal status arrive together answers.

Attempts of a hedged call run side by side; when one answers and another fails with a
fatal status (a code outside ``retryable_codes``) in the same event-loop turn (the
hedging loop's ``asyncio.wait`` hands it both at once), the call has a valid answer in
hand. What was wrong: the loop went through the finished attempts in the set's order, so
the fatal status ended the call (and the answer was dropped) whenever its task came
first, at random from one call to the next. A response that arrived is the call's
answer (gRFC A6: the first response commits the call; which of two that came in one turn
was first is no longer known).
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


@pytest.mark.parametrize("answering", [0, 1], ids=["first-answers", "hedge-answers"])
async def test_an_answer_beside_a_fatal_status_is_the_calls(answering: int) -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, hedge_delay_s=0.0, max_attempts=2)))
    outcomes: list[str] = []
    for _ in range(20):  # the set's order differs from call to call
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent: list[int] = []

        async def proceed(details: ClientCallDetails, request: Any,
                          release: asyncio.Future[None] = release,
                          sent: list[int] = sent) -> Any:
            n = len(sent)
            sent.append(n)
            if len(sent) == 2:  # both in flight: both end in the next turn
                asyncio.get_running_loop().call_soon(release.set_result, None)
            await release
            if n == answering:
                return b"answer"
            raise AioRpcError(grpc.StatusCode.INTERNAL, Metadata(), Metadata(),
                              details="replica broken")

        details = ClientCallDetails(service="s", method="/p.S/Get",
                                    kind=CallKind.UNARY_UNARY, timeout_s=5.0, metadata=None)
        try:
            got = await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5)
        except AioRpcError as exc:
            outcomes.append(str(exc.code()))
        else:
            outcomes.append(got.decode())
        assert len(sent) == 2
    assert outcomes == ["answer"] * 20
