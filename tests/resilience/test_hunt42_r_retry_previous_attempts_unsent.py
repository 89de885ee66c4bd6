"""A retried unary call's ``meshkit-previous-rpc-attempts`` counts the attempts sent.

gRFC A6's previous-attempts count (``grpc-previous-rpc-attempts``, sent by meshkit as
``meshkit-previous-rpc-attempts``) tells a server how many attempts of the call went
before this one. The unary retry path counts only attempts that were sent: one that found
no endpoint (``NoEndpointsError``) or whose sub-channel could not connect
(``ConnectFailedError``: the request never left) is not, and the first attempt to be sent
carries no header at all. 7714babb moved the count's setup to the first failure and the
header to before the next attempt; the hedged path had a test of this
(test_hunt36_hedge_previous_attempts_unsent.py), the retry path none: the header sent as
"0" after unsent attempts, or the unsent attempts counted, passed every retry test.
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

_SENT_FAILED = "sent, failed"
_NO_ENDPOINT = "no endpoint"
_NOT_CONNECTED = "not connected"


def _fail(how: str) -> BaseException:
    if how == _NO_ENDPOINT:
        return NoEndpointsError("s")
    if how == _NOT_CONNECTED:
        return ConnectFailedError("failed to connect to all addresses; last error: x")
    return AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), details=how)


@pytest.mark.parametrize(("failures", "expected"), [
    ((_NO_ENDPOINT, _NOT_CONNECTED, _SENT_FAILED), [None, None, None, "1"]),
    ((_SENT_FAILED, _NO_ENDPOINT, _SENT_FAILED), [None, "1", "1", "2"]),
    ((_SENT_FAILED, _SENT_FAILED, _NOT_CONNECTED), [None, "1", "2", "2"]),
    ((_NOT_CONNECTED,), [None, None]),
], ids=["unsent-first", "unsent-between", "unsent-last", "unsent-only"])
async def test_a_retry_counts_the_attempts_sent_before_it(
        failures: tuple[str, ...], expected: list[str | None]) -> None:
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, max_attempts=len(failures) + 1,
        backoff=Backoff(base_delay_s=0.0, max_delay_s=0.0))))
    seen: list[Any] = []
    others: list[list[tuple[str, Any]]] = []

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        seen.append(next((v for k, v in details.metadata if k == PREVIOUS_ATTEMPTS), None))
        others.append([kv for kv in details.metadata if kv[0] != PREVIOUS_ATTEMPTS])
        if len(seen) <= len(failures):
            raise _fail(failures[len(seen) - 1])
        return b"answer"

    details = ClientCallDetails(service="s", method="/p.S/Get", kind=CallKind.UNARY_UNARY,
                                timeout_s=5.0, metadata=[("x-user", "u1")])
    assert await asyncio.wait_for(retry.intercept_unary(details, b"", proceed), 5) \
        == b"answer"
    assert seen == expected
    assert others == [[("x-user", "u1")]] * len(expected)  # the caller's own, each time
