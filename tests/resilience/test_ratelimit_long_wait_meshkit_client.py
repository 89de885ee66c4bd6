"""A meshkit client that honours any pushback gives up on a refusal it cannot outwait.

10f656e: a rate-limit refusal whose wait is past gRFC A6's signed 32-bit
``grpc-retry-pushback-ms`` (``"1/month"``) says ``-1`` (do not retry) while
``retry-after`` still gives the whole seconds (2,592,000). The two disagree; meshkit's
own client must take A6's ``-1`` (grpc core hands ``grpc-retry-pushback-ms`` on first of
the trailers, whatever order the server set them in) and not wait a month on
``retry-after``, even with ``max_pushback_s=math.inf`` ("honour any pushback") and no
deadline. Real MeshServer with a real rate limit, real MeshChannel on loopback.
"""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, RateLimitOptions, RetryOptions, RetryPolicy
from tests.support.echo import add_echo, method

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("hedged", [False, True], ids=["retried", "hedged"])
async def test_a_month_long_refusal_is_not_waited_out(registry: LocalRegistry,
                                                      hedged: bool) -> None:
    limits = RateLimitOptions(rules={method("Unary"): "1/month"}, strategy="fixed-window")
    srv = meshkit.MeshServer("monthly", [add_echo("m")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, rate_limit=limits,
                                                          drain_delay_s=0))
    await srv.start()
    try:
        policy = RetryPolicy(
            idempotent=True, max_attempts=3, max_pushback_s=math.inf,
            hedge_delay_s=30.0 if hedged else None,
            backoff=Backoff(base_delay_s=0.001, max_delay_s=0.002),
            retryable_codes=frozenset({grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.RESOURCE_EXHAUSTED}))
        options = meshkit.DialOptions(insecure=True, outlier=None,
                                      retry=RetryOptions(default=policy))
        async with meshkit.dial("monthly", registry=registry, options=options) as ch:
            unary = ch.unary_unary(method("Unary"))
            assert await unary(b"1", timeout=10) == b"m|1"
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                # no deadline: bounded here, the fault would be a call held for a month
                await asyncio.wait_for(unary(b"2"), 15.0)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(info.value.trailing_metadata() or ())
            assert trailers.get("grpc-retry-pushback-ms") == "-1", trailers
            assert int(trailers["retry-after"]) > 2**31 // 1000, trailers
            assert time.monotonic() - t0 < 10.0
            assert ch.retry is not None and ch.retry.stats.retries == 0
    finally:
        await srv.drain()
