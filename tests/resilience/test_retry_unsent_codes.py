"""An attempt that never reached a server is retried whatever the policy's codes.

The retry module's docstring: "every kind is retried when the attempt never reached a
server (no endpoint could be picked: NoEndpointsError), since nothing was sent", and a
``ConnectFailedError`` is "sent to another endpoint whatever the method's idempotency";
the README: "attempts that never reached a server" are safe to repeat.

What was wrong: both were retried only when their code, ``UNAVAILABLE``, was in the
policy's ``retryable_codes``. A policy written to retry something else (``{
RESOURCE_EXHAUSTED}``: a rate limiter's pushback) failed a call made while every endpoint
was failing (a restart) at once with ``UNAVAILABLE`` "all 1 endpoints are failing", where
the default policy waits and sends it to the instance that came up; a hedged policy took
such an attempt for a fatal status and ended the call there.

Real MeshServers on loopback, a real MeshChannel; the service's first instance is
registered at a port nothing listens on, and a real one starts once the call has failed
its first attempt.
"""

from __future__ import annotations

import asyncio
import random
import socket

import grpc
import pytest

import meshkit
from meshkit.balancer import EndpointState
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


class _Longest(random.Random):
    """Every jittered delay at its cap: the backoff's waits are known."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("hedged", [False, True], ids=["retried", "hedged"])
async def test_a_call_made_while_every_endpoint_fails_waits_for_one_whatever_the_codes(
        registry: LocalRegistry, hedged: bool) -> None:
    policy = RetryPolicy(
        idempotent=True, max_attempts=50, hedge_delay_s=0.5 if hedged else None,
        retryable_codes={grpc.StatusCode.RESOURCE_EXHAUSTED},
        backoff=Backoff(base_delay_s=0.1, max_delay_s=0.1, rng=_Longest()))
    await registry.register(Instance(service="unsent", instance_id="gone",
                                     host="127.0.0.1", port=_dead_port()))
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    server = meshkit.MeshServer("unsent", [add_echo("up")], registry=registry,
                                options=meshkit.ServeOptions(
                                    insecure=True, instance_id="up", drain_delay_s=0.0,
                                    grace_s=0.5))
    try:
        async with meshkit.dial("unsent", registry=registry, options=options) as ch:
            await until(lambda: [ep.state for ep in ch.endpoints()] == [EndpointState.FAILING],
                        timeout_s=10, what="the dead instance read FAILING")
            call = asyncio.ensure_future(ch.unary_unary(method("Unary"))(b"x", timeout=10))
            retry = ch.retry
            assert retry is not None
            await until(lambda: retry.stats.retries + retry.stats.hedges > 0 or call.done(),
                        what="the first attempt's failure")
            assert not call.done(), call.exception()  # (an error: retried no more)
            await server.start()
            assert await asyncio.wait_for(call, 15) == b"up|x"
    finally:
        await server.drain()
