"""A call's wait for an endpoint is no part of its method's typical latency.

The retry layer does not send a retry (or a hedge) when the time left is shorter than the
method's typical latency, an EWMA of its answered attempts. It timed an attempt from
before the channel picked an endpoint, so an attempt that waited for one (a
``wait_for_ready`` call made while the service's replicas were still starting, a
dependency registering late) taught it that wait as the method's latency: after one such
call, answered in 1.2 s though the method answers in milliseconds, the next calls that
failed ``UNAVAILABLE`` under a 1 s deadline were not retried (``gave_up_deadline``) until
enough answers had worn the estimate down. Real grpc.aio servers on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.support.echo import SERVICE, method, raw_server

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)


def _flaky(calls: list[str]) -> grpc.GenericRpcHandler:
    """``Get``: answers at once, but fails ``UNAVAILABLE`` for a request ``b"fail-once"``
    the first time it sees it (a replica shedding one attempt)."""

    async def get(request: bytes, context: Any) -> bytes:
        calls.append(request.decode())
        if request.startswith(b"fail-once") and calls.count(request.decode()) == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "shed")
        return b"ok"

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(get)})


@pytest.mark.parametrize("hedged", [False, True], ids=["retry", "hedge"])
async def test_a_wait_for_an_endpoint_does_not_stop_later_retries(
        registry: LocalRegistry, hedged: bool) -> None:
    calls: list[str] = []
    policy = RetryPolicy(idempotent=True, max_attempts=3, backoff=FAST,
                         hedge_delay_s=5.0 if hedged else None)
    opts = meshkit.DialOptions(insecure=True, outlier=None,
                               retry=RetryOptions(default=policy))
    async with raw_server(_flaky(calls)) as (_, port), \
            meshkit.dial("svc", registry=registry, options=opts) as ch:
        get = ch.unary_unary(method("Get"))

        async def register_late() -> None:
            await asyncio.sleep(1.2)  # the replica registers 1.2 s after the call starts
            await registry.register(Instance(service="svc", instance_id="a",
                                             host="127.0.0.1", port=port))

        late = asyncio.ensure_future(register_late())
        assert await get(b"first", timeout=10, wait_for_ready=True) == b"ok"
        await late
        assert ch.retry is not None
        gave_up = ch.retry.stats.gave_up_deadline
        # the method answers in milliseconds: a retry fits in a 1 s deadline
        for i in range(3):
            assert await get(f"fail-once-{i}".encode(), timeout=1.0) == b"ok"
        assert ch.retry.stats.gave_up_deadline == gave_up
        assert calls[1:] == [f"fail-once-{i}" for i in range(3) for _ in (0, 1)]
