"""A server's pushback that is not in its grammar means "do not retry".

gRFC A6 ("Pushback"): ``grpc-retry-pushback-ms`` "is to be an ASCII encoded signed 32-bit
integer [...]. If the value for pushback is negative or unparseble, then it will be seen
as the server asking the client not to retry at all." ``retry-after`` (RFC 9110 section
10.2.3) is ``delay-seconds`` (digits; meshkit takes a decimal fraction too) or an
HTTP-date; meshkit's own docstring says anything else means do not retry. Python's
``int()`` and ``float()`` read far more: ``"1_000"``, ``"+5"``, Unicode digits, and for
``float`` ``"inf"``, ``"1e3"``, 400 nines (``inf``). (grpc core reads
``grpc-retry-pushback-ms`` itself, before meshkit sees it: what it cannot parse reaches
the application as ``-9223372036854775808``, so only ``retry-after`` was read loosely.)
A ``retry-after: inf`` under
``max_pushback_s=math.inf`` ("honour any pushback") held the call for ever; ``"1_0"``
was read as ten seconds' wait, ``"+1"`` as one.

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
from tests.resilience.pushback import FAST, call_push, pushback_servers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def served(registry: LocalRegistry) -> AsyncIterator[list[str]]:
    """Two pushback servers (service ``pushback``); the requests they served."""
    async with pushback_servers(registry, "pushback") as got:
        yield got


def any_pushback(hedge_delay_s: float | None = None) -> RetryPolicy:
    """A policy honouring any pushback, however long."""
    return RetryPolicy(idempotent=True, max_attempts=3, backoff=FAST, max_pushback_s=math.inf,
                       hedge_delay_s=hedge_delay_s)


@pytest.mark.parametrize("request_", [
    "retry-after=inf",
    "retry-after=Infinity",
    "retry-after=" + "9" * 400,  # float() reads it as inf
    "retry-after=nan",
    "retry-after=1e400",
])
@pytest.mark.parametrize("hedged", [False, True], ids=["retried", "hedged"])
async def test_an_infinite_retry_after_is_no_wait_for_ever(
        registry: LocalRegistry, served: list[str], request_: str, hedged: bool) -> None:
    """A call without a deadline whose policy honours any pushback ends at once with the
    server's UNAVAILABLE when the pushback is no number of seconds, instead of waiting
    for ever (retried: asleep in the backoff; hedged: no next hedge ever due)."""
    policy = any_pushback(hedge_delay_s=30.0 if hedged else None)
    err, took = await call_push(registry, "pushback", policy, request_, timeout_s=None)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_]
    assert took < 15.0


@pytest.mark.parametrize("request_", [
    # grpc core parses this key itself and hands on what it cannot read as INT64_MIN
    # (negative: do not retry); "+100" or " 100" it reads as 100, and so must meshkit
    "grpc-retry-pushback-ms=1_000",
    "grpc-retry-pushback-ms=1e2",
    "retry-after=1_0",
    "retry-after=1e1",
    "retry-after=+1",
])
async def test_a_pushback_outside_its_grammar_means_do_not_retry(
        registry: LocalRegistry, served: list[str], request_: str) -> None:
    err, _ = await call_push(registry, "pushback", any_pushback(), request_, timeout_s=None)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_]


@pytest.mark.parametrize(("request_", "wait_s"), [
    ("grpc-retry-pushback-ms=300", 0.3),
    ("grpc-retry-pushback-ms=0", 0.0),
    ("grpc-retry-pushback-ms=2147483647", None),  # the largest: past max_pushback_s
    ("retry-after=0.3", 0.3),
    ("retry-after=1", 1.0),
])
async def test_a_pushback_in_its_grammar_is_waited_out(
        registry: LocalRegistry, served: list[str], request_: str,
        wait_s: float | None) -> None:
    policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)  # 10 s at most
    err, took = await call_push(registry, "pushback", policy, request_, timeout_s=10.0)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    if wait_s is None:  # too long for the policy: not retried
        assert served == [request_]
    else:
        assert served == [request_, request_]
        assert took >= wait_s
