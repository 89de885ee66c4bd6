"""A ``grpc-retry-pushback-ms`` past gRFC A6's signed 32-bit integer means do not retry.

gRFC A6 ("Pushback"): the value "is to be an ASCII encoded signed 32-bit integer [...]. If
the value for pushback is negative or unparseble, then it will be seen as the server
asking the client not to retry at all." grpc-java reads it with ``Integer.valueOf``, so a
value past 2**31 - 1 is unparseable there: do not retry (10f656e made meshkit's rate
limiter send ``-1`` instead of such a wait for this reason). grpc core hands the value on
as sent, and meshkit's client read any size with ``int()``: under ``max_pushback_s=inf``
("honour any pushback") a call without a deadline, retried or hedged, waited
2,592,000,000 ms (30 days) for the next attempt. The largest 32-bit value is still a wait.

Real MeshServers on loopback, a real MeshChannel; the server's ``Push`` method fails
``UNAVAILABLE`` with the trailer named in the request (``key=value``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy
from meshkit.resilience._retry import _pushback_s

pytestmark = pytest.mark.timeout(60)

SERVICE = "meshkit.test.PushbackInt32"
PUSH = f"/{SERVICE}/Push"
FAST = Backoff(base_delay_s=0.001, max_delay_s=0.002)


def _add(served: list[str]) -> tuple[Any, None]:
    async def push(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        served.append(request.decode())
        key, _, value = request.decode().partition("=")
        context.set_trailing_metadata(((key, value),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "pushed back")
        raise AssertionError("unreachable")

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"Push": grpc.unary_unary_rpc_method_handler(push)}),))

    return add, None


@pytest.fixture
async def served(registry: LocalRegistry) -> AsyncIterator[list[str]]:
    got: list[str] = []
    servers = []
    for name in ("i1", "i2"):
        srv = meshkit.MeshServer("pushint32", [_add(got)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=name, drain_delay_s=0.0,
                                     grace_s=1.0))
        await srv.start()
        servers.append(srv)
    yield got
    for srv in servers:
        await srv.drain()


@pytest.mark.parametrize("request_", ["grpc-retry-pushback-ms=2147483648",
                                      "grpc-retry-pushback-ms=2592000000",
                                      "grpc-retry-pushback-ms=" + "9" * 30])
@pytest.mark.parametrize("hedged", [False, True], ids=["retried", "hedged"])
async def test_a_pushback_past_32_bits_is_no_wait(
        registry: LocalRegistry, served: list[str], request_: str, hedged: bool) -> None:
    policy = RetryPolicy(idempotent=True, max_attempts=3, backoff=FAST,
                         max_pushback_s=math.inf, hedge_delay_s=30.0 if hedged else None)
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    t0 = time.monotonic()
    async with meshkit.dial("pushint32", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            call = ch.unary_unary(PUSH)
            # no deadline: bounded here, the fault is a call held for the pushback
            await asyncio.wait_for(call(request_.encode()), 10.0)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_]
    assert time.monotonic() - t0 < 10.0


def test_the_largest_32_bit_pushback_is_a_wait() -> None:
    err = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                               grpc.aio.Metadata(("grpc-retry-pushback-ms", "2147483647")))
    assert _pushback_s(err) == 2147483.647
