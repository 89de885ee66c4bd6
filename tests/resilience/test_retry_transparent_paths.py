"""The transparent retry (214d6d0) on its paths that a busy server does not reach.

A method whose policy retries nothing still sends a call once more when its request
never left (:class:`ConnectFailedError`: the sub-channel could not connect), without the
previous-attempts header (no attempt went before it); a stream-unary call whose request
was an iterator (the first attempt spent it) is not sent again, however it was refused.
The retry interceptor is driven directly with a fake ``proceed``: what it decides does
not depend on a server, and a real connect failure on a policy without retries is what
``test_retry.py``'s stopped-endpoint test measures for the default policy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from meshkit._metadata import PREVIOUS_ATTEMPTS
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import RetryInterceptor, RetryOptions, RetryPolicy
from meshkit.resilience._retry import (
    NACK_METADATA,
    ConnectFailedError,
    _refusals,
    forget_endpoint,
)

pytestmark = pytest.mark.timeout(10)

_OFF = [RetryOptions(default=None), RetryOptions(default=RetryPolicy(max_attempts=1))]


def _nack() -> AioRpcError:
    return AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, Metadata(),
                       Metadata(NACK_METADATA), details="server busy")


class _Proceed:
    """Fails the first attempt with ``first``, answers the next; records each attempt's
    previous-attempts header."""

    def __init__(self, first: AioRpcError) -> None:
        self.first = first
        self.headers: list[str | None] = []

    async def __call__(self, details: ClientCallDetails, request: Any) -> Any:
        self.headers.append(dict(details.metadata).get(PREVIOUS_ATTEMPTS))  # type: ignore[arg-type]
        if isinstance(request, Iterator):
            list(request)  # an attempt sends (spends) the request stream
        if len(self.headers) == 1:
            raise self.first
        return b"ok"


@pytest.mark.parametrize("options", _OFF, ids=["default-none", "one-attempt"])
async def test_a_request_that_never_left_goes_once_more(options: RetryOptions) -> None:
    retry = RetryInterceptor(options)
    details = ClientCallDetails(service="s", method="/p.S/Write", kind=CallKind.UNARY_UNARY,
                                timeout_s=5.0, metadata=None)
    proceed = _Proceed(ConnectFailedError("failed to connect to all addresses; last "
                                          "error: UNAVAILABLE: ipv4:127.0.0.1:1: refused"))
    assert await retry.intercept_unary(details, b"x", proceed) == b"ok"
    assert proceed.headers == [None, None]  # nothing went before the second one
    assert retry.stats.retries == 1


@pytest.mark.parametrize("options", _OFF, ids=["default-none", "one-attempt"])
async def test_a_spent_request_stream_is_not_sent_again(options: RetryOptions) -> None:
    retry = RetryInterceptor(options)
    details = ClientCallDetails(service="s", method="/p.S/Upload",
                                kind=CallKind.STREAM_UNARY, timeout_s=5.0, metadata=None)
    proceed = _Proceed(_nack())
    with pytest.raises(AioRpcError) as info:
        await retry.intercept_unary(details, iter([b"a", b"b"]), proceed)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(proceed.headers) == 1
    assert retry.stats.retries == 0


async def test_a_request_stream_that_can_be_sent_again_is() -> None:
    retry = RetryInterceptor(RetryOptions(default=None))
    details = ClientCallDetails(service="s", method="/p.S/Upload",
                                kind=CallKind.STREAM_UNARY, timeout_s=5.0, metadata=None)
    proceed = _Proceed(_nack())
    assert await retry.intercept_unary(details, [b"a", b"b"], proceed) == b"ok"
    assert proceed.headers == [None, "1"]


async def test_no_second_attempt_once_the_deadline_passed() -> None:
    retry = RetryInterceptor(RetryOptions(default=None))
    details = ClientCallDetails(service="s", method="/p.S/Write", kind=CallKind.UNARY_UNARY,
                                timeout_s=0.0, metadata=None)
    proceed = _Proceed(_nack())
    with pytest.raises(AioRpcError):
        await retry.intercept_unary(details, b"x", proceed)
    assert len(proceed.headers) == 1
    assert retry.stats.gave_up_deadline == 1


async def test_an_attempt_a_draining_server_cut_before_it_ran_goes_once_more() -> None:
    """grpc core's ``CANCELLED`` "CANCELLED" of an attempt launched on an endpoint that
    had already refused a call of this channel as draining (``cut_before_it_ran``)."""
    endpoint = object()
    _refusals[endpoint] = [time.time_ns(), None]  # its draining refusal, seen just now
    try:
        retry = RetryInterceptor(RetryOptions(default=None))
        details = ClientCallDetails(service="s", method="/p.S/Write",
                                    kind=CallKind.UNARY_UNARY, timeout_s=5.0, metadata=None)
        cut = AioRpcError(grpc.StatusCode.CANCELLED, Metadata(), Metadata(),
                          details="CANCELLED")
        proceed = _Proceed(cut)

        async def launched(d: ClientCallDetails, request: Any) -> Any:
            d.attempts.append(endpoint)
            d.attempt_started_ns.append(time.time_ns() + 1)
            d.last_call = object()
            return await proceed(d, request)

        assert await retry.intercept_unary(details, b"x", launched) == b"ok"
        assert proceed.headers == [None, "1"]
    finally:
        forget_endpoint(endpoint)
