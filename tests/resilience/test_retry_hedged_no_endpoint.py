"""A hedged call that finds no endpoint waits a backoff before its next attempt.

gRFC A6 hedging sends the next attempt at once after a non-fatal failure: a server's
answer, from an endpoint, while others may answer. An attempt that found no endpoint
to send to (``NoEndpointsError``: every endpoint failing, e.g. the one instance of a
service restarting) is no such answer: a pick made at once finds nothing either.

What was wrong: a hedged call made in such a moment sent all its attempts back to back,
each failing at once, and ended ``UNAVAILABLE`` "all 1 endpoints are failing" within a
few milliseconds (12 attempts: 11 hedges granted, 11 retry-budget tokens, in under 50
ms), where the same policy without ``hedge_delay_s`` waits out its backoff and reaches
the instance that comes up (test_retry_unsent_codes.py): hedging, meant to cut tail
latency, failed calls that plain retries carried through.

Real MeshServers on loopback, a real MeshChannel; the service's first instance is
registered at a port nothing listens on, and a real one starts once the call's first
attempt has failed.
"""

from __future__ import annotations

import asyncio

import pytest

import meshkit
from meshkit.balancer import EndpointState
from meshkit.discovery import Instance, LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from tests.resilience.test_retry_unsent_codes import _dead_port, _Longest
from tests.support.echo import add_echo, method
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def test_a_hedged_call_made_while_every_endpoint_fails_waits_for_one(
        registry: LocalRegistry) -> None:
    policy = RetryPolicy(idempotent=True, max_attempts=50, hedge_delay_s=0.5,
                         backoff=Backoff(base_delay_s=0.1, max_delay_s=0.1, rng=_Longest()))
    await registry.register(Instance(service="nohedge", instance_id="gone",
                                     host="127.0.0.1", port=_dead_port()))
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    server = meshkit.MeshServer("nohedge", [add_echo("up")], registry=registry,
                                options=meshkit.ServeOptions(
                                    insecure=True, instance_id="up", drain_delay_s=0.0,
                                    grace_s=0.5))
    try:
        async with meshkit.dial("nohedge", registry=registry, options=options) as ch:
            await until(lambda: [ep.state for ep in ch.endpoints()] == [EndpointState.FAILING],
                        timeout_s=10, what="the dead instance read FAILING")
            call = asyncio.ensure_future(ch.unary_unary(method("Unary"))(b"x", timeout=10))
            retry = ch.retry
            assert retry is not None
            await until(lambda: retry.stats.hedges > 0 or call.done(),
                        what="the first attempt's failure")  # it found no endpoint
            assert not call.done(), call.exception()
            assert retry.stats.hedges < 49  # a backoff (0.1 s) apart, not all at once
            await server.start()
            assert await asyncio.wait_for(call, 15) == b"up|x"
            assert retry.stats.hedges < 49
    finally:
        await server.drain()
