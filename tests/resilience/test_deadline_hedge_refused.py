"""A hedge a server refuses for too short a deadline does not end the hedged call.

``DeadlineOptions(min_remaining_s=...)`` has a meshkit server refuse a call with less time
left than that, ``DEADLINE_EXCEEDED`` with the ``meshkit-deadline-refused`` trailer,
before any of it runs. A hedge is sent ``hedge_delay_s`` after the attempt before it, so
it has that much less time left: on such servers the hedges of a call whose time is short
are refused while its first attempt, admitted, still runs.

What was wrong: the hedging loop took the refusal for a fatal status (``DEADLINE_EXCEEDED``
is no retryable code), ended the call with it and cancelled the first attempt, which would
have answered within the deadline: a call that needed 0.9 s of its 1.5 s failed
``DEADLINE_EXCEEDED`` at 0.6 s, when its hedge went out. Such a refusal says nothing of
the call (none of it ran) but that no later attempt can be admitted either: no more
hedges, and the attempts in flight are waited for.

Real MeshServers on loopback with deadline admission, a real MeshChannel; ``Prefer("a")``
sends the first attempt to ``a``.
"""

from __future__ import annotations

import time

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import DeadlineOptions, RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.balancing import Prefer
from tests.support.echo import method

pytestmark = pytest.mark.timeout(60)


async def test_a_refused_hedge_leaves_the_first_attempt_to_answer(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    admission = DeadlineOptions(min_remaining_s=1.0)
    await echo_servers("a", deadline=admission)
    await echo_servers("b", deadline=admission)
    policy = RetryPolicy(idempotent=True, max_attempts=3, hedge_delay_s=0.6)
    options = meshkit.DialOptions(insecure=True, outlier=None, balancer=lambda: Prefer("a"),
                                  retry=RetryOptions(default=policy))
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        t0 = time.monotonic()
        # admitted with 1.5 s left; the hedge at 0.6 s has < 1.0 s left: refused
        assert await ch.unary_unary(method("Sleep"))(b"900", timeout=1.5) == b"a"
        assert time.monotonic() - t0 >= 0.9
        assert ch.retry is not None and ch.retry.stats.hedges == 1  # and no more after it
        calls = {ep.instance.instance_id: ep.calls for ep in ch.endpoints()}
    assert calls == {"a": 1, "b": 1}


async def test_a_call_whose_every_attempt_is_refused_ends_with_the_refusal(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    admission = DeadlineOptions(min_remaining_s=2.0)
    await echo_servers("a", deadline=admission)
    # the refusal has 0.5 s to come back before a hedge is due (a loaded box's round
    # trip); a loop that kept hedging after it sends one at 0.5 s, refused too
    policy = RetryPolicy(idempotent=True, max_attempts=3, hedge_delay_s=0.5)
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Sleep"))(b"0", timeout=1.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details() == "deadline exceeded before the handler ran"
        assert ch.retry is not None and ch.retry.stats.hedges == 0


async def test_a_refused_attempt_is_not_retried_even_where_deadline_exceeded_is(
        registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """A policy that retries ``DEADLINE_EXCEEDED`` (a downstream's timeout: a common
    setting) sent a call the servers' admission refused again, and again, each attempt
    with less time left, so each refused: 3 round trips and 2 retry-budget tokens for the
    answer the first one gave. The refusal is final."""
    admission = DeadlineOptions(min_remaining_s=0.5)
    await echo_servers("a", deadline=admission)
    await echo_servers("b", deadline=admission)
    policy = RetryPolicy(idempotent=True, max_attempts=3, retryable_codes={
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    async with meshkit.dial("echo", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary(method("Sleep"))(b"0", timeout=0.3)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details() == "deadline exceeded before the handler ran"
        assert ch.retry is not None and ch.retry.stats.retries == 0
        assert sum(ep.calls for ep in ch.endpoints()) == 1
