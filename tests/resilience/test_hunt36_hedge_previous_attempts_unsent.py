"""A hedge after attempts that never left the client does not count them as sent.

``meshkit-previous-rpc-attempts`` (gRFC A6's ``grpc-previous-rpc-attempts``) tells a
server how many attempts of the call went before this one. The unary retry path counts
only attempts that were sent: one that found no endpoint (``NoEndpointsError``) or whose
sub-channel could not connect (``ConnectFailedError``, the request never left) is not.
What was wrong: a hedged call counted every attempt it had launched, so after such
attempts the first one to reach a server said it was a retry ("1", "2") and the server's
retry counts (its access log, its metrics) were off.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from meshkit._metadata import PREVIOUS_ATTEMPTS
from meshkit.errors import NoEndpointsError
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import Backoff, RetryInterceptor, RetryOptions, RetryPolicy
from meshkit.resilience._retry import ConnectFailedError

pytestmark = pytest.mark.timeout(10)


def _header(details: ClientCallDetails) -> str | None:
    return next((v for k, v in details.metadata if k == PREVIOUS_ATTEMPTS), None)


async def test_attempts_known_unsent_are_not_counted_by_later_hedges() -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, hedge_delay_s=30.0, max_attempts=4,
        backoff=Backoff(base_delay_s=0.0, max_delay_s=0.0))))
    seen: list[str | None] = []

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        seen.append(_header(details))
        if len(seen) == 1:
            raise NoEndpointsError("s")
        if len(seen) == 2:
            raise ConnectFailedError("failed to connect to all addresses; last error: x")
        if len(seen) == 3:
            raise ConnectFailedError("failed to connect to all addresses; last error: y")
        return b"answer"

    details = ClientCallDetails(service="s", method="/p.S/Get", kind=CallKind.UNARY_UNARY,
                                timeout_s=5.0, metadata=None)
    assert await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5) \
        == b"answer"
    assert seen == [None, None, None, None]


async def test_sent_attempts_are_still_counted() -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, hedge_delay_s=30.0, max_attempts=3,
        backoff=Backoff(base_delay_s=0.0, max_delay_s=0.0))))
    seen: list[str | None] = []

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        seen.append(_header(details))
        if len(seen) == 1:
            raise NoEndpointsError("s")
        if len(seen) == 2:
            raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                              details="sent, then failed")
        return b"answer"

    details = ClientCallDetails(service="s", method="/p.S/Get", kind=CallKind.UNARY_UNARY,
                                timeout_s=5.0, metadata=None)
    assert await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5) \
        == b"answer"
    assert seen == [None, None, "1"]
