"""An echo server behind a RateLimitInterceptor (the rate-limit tests' real server)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from meshkit.resilience.ratelimit import RateLimitInterceptor, RateLimitOptions
from tests.support.echo import handler


@contextlib.asynccontextmanager
async def limited_echo(options: RateLimitOptions) -> AsyncIterator[int]:
    """An echo server (``tests.support.echo``, tag ``e1``) on 127.0.0.1:0 behind a
    RateLimitInterceptor of ``options``; yields its port, then stops the server and
    closes the interceptor."""
    interceptor = RateLimitInterceptor(options)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((handler("e1"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)
        await interceptor.aclose()
