"""A ``retry-after`` with whitespace around its value is read as the value.

RFC 9110 section 5.5: "Field values do not include leading or trailing whitespace. When
a specific version of HTTP allows such whitespace to appear in a message, a field
parsing implementation MUST exclude such whitespace prior to evaluating the field
value." grpc core hands a trailer's value on as the server sent it (``" 1"``, ``"1 "``
reach the client with their spaces; a tab it refuses, ending the call INTERNAL).
Before 6f9363d, ``float()`` stripped the spaces and the pushback was honoured; its
grammar check then read ``" 1"`` as no delay-seconds and no HTTP-date, i.e. "do not
retry", so a server asking for a one-second wait got no retry at all.

Real MeshServers on loopback, a real MeshChannel; the server's ``Push`` method fails
``UNAVAILABLE`` with the trailer named in the request (``key=value``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryPolicy
from tests.resilience.pushback import FAST, call_push, pushback_servers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def served(registry: LocalRegistry) -> AsyncIterator[list[str]]:
    """Two pushback servers (service ``pushspaces``); the requests they served."""
    async with pushback_servers(registry, "pushspaces") as got:
        yield got


@pytest.mark.parametrize(("request_", "wait_s"), [
    ("retry-after= 1", 1.0),
    ("retry-after=1 ", 1.0),
    ("retry-after=  0.3  ", 0.3),
    ("retry-after= Sun, 06 Nov 1994 08:49:37 GMT ", 0.0),  # a date past: at once
])
async def test_a_retry_after_with_spaces_is_waited_out(
        registry: LocalRegistry, served: list[str], request_: str, wait_s: float) -> None:
    policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)  # 10 s at most
    err, took = await call_push(registry, "pushspaces", policy, request_, timeout_s=10.0,
                                bound_s=15.0)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_, request_]  # retried once, after the wait
    assert took >= wait_s


@pytest.mark.parametrize("request_", ["retry-after= ", "retry-after= +1", "retry-after=1 1"])
async def test_spaces_make_no_bad_value_good(
        registry: LocalRegistry, served: list[str], request_: str) -> None:
    """Only the spaces around the value go: what is left must still be in the grammar."""
    policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)
    err, _ = await call_push(registry, "pushspaces", policy, request_, timeout_s=10.0,
                             bound_s=15.0)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_]  # do not retry
