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

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy

pytestmark = pytest.mark.timeout(60)

SERVICE = "meshkit.test.PushbackSpaces"
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
    """Two pushback servers (service ``pushspaces``); the requests they served."""
    got: list[str] = []
    servers = []
    for name in ("s1", "s2"):
        srv = meshkit.MeshServer("pushspaces", [_add(got)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id=name, drain_delay_s=0.0,
                                     grace_s=1.0))
        await srv.start()
        servers.append(srv)
    yield got
    for srv in servers:
        await srv.drain()


@pytest.mark.parametrize(("request_", "wait_s"), [
    ("retry-after= 1", 1.0),
    ("retry-after=1 ", 1.0),
    ("retry-after=  0.3  ", 0.3),
    ("retry-after= Sun, 06 Nov 1994 08:49:37 GMT ", 0.0),  # a date past: at once
])
async def test_a_retry_after_with_spaces_is_waited_out(
        registry: LocalRegistry, served: list[str], request_: str, wait_s: float) -> None:
    policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)  # 10 s at most
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    t0 = time.monotonic()
    async with meshkit.dial("pushspaces", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            call = ch.unary_unary(PUSH)
            await asyncio.wait_for(call(request_.encode(), timeout=10.0), 15.0)
    took = time.monotonic() - t0
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_, request_]  # retried once, after the wait
    assert took >= wait_s


@pytest.mark.parametrize("request_", ["retry-after= ", "retry-after= +1", "retry-after=1 1"])
async def test_spaces_make_no_bad_value_good(
        registry: LocalRegistry, served: list[str], request_: str) -> None:
    """Only the spaces around the value go: what is left must still be in the grammar."""
    policy = RetryPolicy(idempotent=True, max_attempts=2, backoff=FAST)
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    async with meshkit.dial("pushspaces", registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            call = ch.unary_unary(PUSH)
            await asyncio.wait_for(call(request_.encode(), timeout=10.0), 15.0)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert served == [request_]  # do not retry
