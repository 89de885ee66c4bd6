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

import math
from collections.abc import AsyncIterator

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryPolicy
from meshkit.resilience._retry import _pushback_s
from tests.resilience.pushback import FAST, call_push, pushback_servers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def served(registry: LocalRegistry) -> AsyncIterator[list[str]]:
    """Two pushback servers (service ``pushint32``); the requests they served."""
    async with pushback_servers(registry, "pushint32") as got:
        yield got


@pytest.mark.parametrize("request_", ["grpc-retry-pushback-ms=2147483648",
                                      "grpc-retry-pushback-ms=2592000000",
                                      "grpc-retry-pushback-ms=" + "9" * 30])
@pytest.mark.parametrize("hedged", [False, True], ids=["retried", "hedged"])
async def test_a_pushback_past_32_bits_is_no_wait(
        registry: LocalRegistry, served: list[str], request_: str, hedged: bool) -> None:
    policy = RetryPolicy(idempotent=True, max_attempts=3, backoff=FAST,
                         max_pushback_s=math.inf, hedge_delay_s=30.0 if hedged else None)
    # no deadline: bounded by call_push, the fault is a call held for the pushback
    err, took = await call_push(registry, "pushint32", policy, request_, timeout_s=None)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_]
    assert took < 10.0


def test_the_largest_32_bit_pushback_is_a_wait() -> None:
    err = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                               grpc.aio.Metadata(("grpc-retry-pushback-ms", "2147483647")))
    assert _pushback_s(err) == 2147483.647
