"""Pushback servers for the retry tests: real MeshServers whose ``Push`` method fails
``UNAVAILABLE`` with the trailer named in its request (``key=value``), and a call of it
through a real MeshChannel (the grammar, range and whitespace tests of
``retry-after`` / ``grpc-retry-pushback-ms``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy

SERVICE = "meshkit.test.Pushback"
PUSH = f"/{SERVICE}/Push"
#: retries without a backoff worth waiting for: what a test times is the pushback
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


@contextlib.asynccontextmanager
async def pushback_servers(registry: LocalRegistry, service: str) -> AsyncIterator[list[str]]:
    """Two pushback servers of mesh service ``service``; yields the requests they served,
    in order."""
    got: list[str] = []
    servers = []
    try:
        for name in ("p1", "p2"):
            srv = meshkit.MeshServer(service, [_add(got)], registry=registry,
                                     options=meshkit.ServeOptions(
                                         insecure=True, instance_id=f"{service}-{name}",
                                         drain_delay_s=0.0, grace_s=1.0))
            await srv.start()
            servers.append(srv)
        yield got
    finally:
        for srv in servers:
            await srv.drain()


async def call_push(registry: LocalRegistry, service: str, policy: RetryPolicy,
                    request: str, *, timeout_s: float | None,
                    bound_s: float = 10.0) -> tuple[grpc.aio.AioRpcError, float]:
    """Call ``Push(request)`` of ``service`` under retry ``policy`` with the call's
    ``timeout_s`` (``None``: no deadline), bounded here by ``bound_s`` (the fault these
    tests guard against is a call held for ever); returns its error and the seconds it
    took, the channel's start included."""
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    t0 = time.monotonic()
    async with meshkit.dial(service, registry=registry, options=options) as ch:
        await ch.wait_for_endpoints(2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            call = ch.unary_unary(PUSH)
            await asyncio.wait_for(call(request.encode(), timeout=timeout_s), bound_s)
    return info.value, time.monotonic() - t0
