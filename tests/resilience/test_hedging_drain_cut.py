"""A hedged call treats an attempt cut ``CANCELLED`` "CANCELLED" by a draining server that had
already refused a call of the channel over the same connection as the non-hedged path does
(d33cea1): none of it ran, so it is non-fatal and the next hedge goes out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from meshkit.balancer import Endpoint
from meshkit.interceptors import CallKind, ClientCallDetails
from meshkit.resilience import RetryOptions, RetryPolicy
from meshkit.resilience._retry import (
    DRAINING_DETAILS,
    NACK_METADATA,
    RetryInterceptor,
    forget_endpoint,
)
from tests.support.balancing import ready_endpoint

_DRAINING = (grpc.StatusCode.UNAVAILABLE, DRAINING_DETAILS, (NACK_METADATA,))
_CUT = (grpc.StatusCode.CANCELLED, "CANCELLED", ())
_HEDGED = RetryPolicy(idempotent=True, hedge_delay_s=30.0, max_attempts=3)


def _scripted(script: list[tuple[Endpoint, Any]]) -> Any:
    """An attempt function launching each attempt on the next scripted endpoint as the
    channel does (``attempts``, ``attempt_started_ns``, ``last_call``) and ending it as
    scripted (``None``: ``b"ok"``, after a loop turn)."""
    steps = iter(script)

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        ep, outcome = next(steps)
        details.last_call = None
        details.attempts.append(ep)
        details.attempt_started_ns.append(time.time_ns())
        details.last_call = object()
        await asyncio.sleep(0)
        if outcome is None:
            return b"ok"
        code, text, trailers = outcome
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(*trailers), details=text)

    return proceed


def _details(method_name: str = "/echo.Echo/Unary") -> ClientCallDetails:
    return ClientCallDetails(service="echo", method=method_name,
                             kind=CallKind.UNARY_UNARY, timeout_s=5.0, metadata=None)


@pytest.fixture
def eps() -> Any:
    """Two READY endpoints, what the retry interceptor noted of them forgotten after."""
    a, b = ready_endpoint("a"), ready_endpoint("b")
    yield a, b
    forget_endpoint(a)
    forget_endpoint(b)


async def test_a_hedge_cut_after_a_draining_refusal_sends_the_next_hedge(eps: Any) -> None:
    """A hedged attempt cut ``CANCELLED`` "CANCELLED" by an endpoint that refused an
    earlier attempt of the call as draining before it was launched is non-fatal: the
    next hedge goes at once and its answer is the call's."""
    a, b = eps
    retry = RetryInterceptor(RetryOptions(default=_HEDGED))
    proceed = _scripted([(a, _DRAINING), (a, _CUT), (b, None)])
    t0 = time.monotonic()
    assert await retry.intercept_unary(_details(), b"x", proceed) == b"ok"
    assert time.monotonic() - t0 < 10  # the 30 s hedge delay not waited out
    assert retry.stats.hedges == 2


@pytest.mark.parametrize("case", ["no refusal", "health method", "other details"])
async def test_a_hedge_cancelled_where_it_may_have_run_ends_the_call(eps: Any,
                                                                     case: str) -> None:
    """A hedged attempt ended ``CANCELLED`` stays fatal when nothing proves none of it ran
    (no draining refusal from its endpoint, a health method, or details that are not
    grpc core's)."""
    a, b = eps
    retry = RetryInterceptor(RetryOptions(default=_HEDGED))
    cut = (grpc.StatusCode.CANCELLED, "cancelled by the handler", ()) \
        if case == "other details" else _CUT
    script = [(a, cut), (b, None)] if case == "no refusal" else \
        [(a, _DRAINING), (a, cut), (b, None)]
    name = "/grpc.health.v1.Health/Check" if case == "health method" else "/echo.Echo/Unary"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await retry.intercept_unary(_details(name), b"x", _scripted(script))
    assert err.value.code() is grpc.StatusCode.CANCELLED


async def test_a_hedge_launched_before_the_refusal_was_seen_stays_fatal(eps: Any) -> None:
    """A hedge already in flight when its endpoint's draining refusal of another attempt
    arrived may have run: cut ``CANCELLED`` "CANCELLED", it ends the call."""
    a, b = eps
    retry = RetryInterceptor(RetryOptions(default=RetryPolicy(
        idempotent=True, hedge_delay_s=0, max_attempts=3)))
    gate = asyncio.Event()
    order = iter([(a, "cut"), (a, "refuse"), (b, "hang")])

    async def proceed(details: ClientCallDetails, request: Any) -> Any:
        ep, what = next(order)
        details.attempts.append(ep)
        details.attempt_started_ns.append(time.time_ns())
        details.last_call = object()
        if what == "hang":
            await asyncio.sleep(30)
        if what == "refuse":
            gate.set()
            code, text, trailers = _DRAINING
        else:
            await gate.wait()
            await asyncio.sleep(0.01)
            code, text, trailers = _CUT
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(*trailers), details=text)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(retry.intercept_unary(_details(), b"x", proceed), 10)
    assert err.value.code() is grpc.StatusCode.CANCELLED
