"""An application's ``grpc.aio.ClientCallDetails`` subclass passes meshkit's attempt
interceptor with its own attributes.

A ``grpc.aio`` attempt interceptor may hand its continuation details of its own class
(a subclass of ``grpc.aio.ClientCallDetails`` carrying extra attributes: a tenant, a
route hint) for an interceptor after it to read; grpc.aio passes that object on as it
is. meshkit's :class:`~meshkit.observability.AttemptSpanInterceptor` between them
re-injects ``traceparent`` with ``client_call_details._replace(metadata=...)``, and a
namedtuple's ``_replace`` makes the copy with ``tuple.__new__``: of the same class, but
without the instance's attributes. The interceptor after it found none
(``AttributeError`` on ``details.tenant``). The copy now keeps them.
"""

from __future__ import annotations

import asyncio
import collections.abc
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions, attempt_interceptors, client_interceptors
from tests.support.echo import mesh_echo, method

pytestmark = pytest.mark.timeout(60)


class _TenantDetails(grpc.aio.ClientCallDetails):
    """An application's details class: grpc.aio's fields plus ``tenant``."""

    tenant: str


class _Tag(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Hands the continuation a :class:`_TenantDetails` with ``tenant`` set."""

    async def _run(self, continuation: Any, details: Any, request: Any) -> Any:
        mine = _TenantDetails(details.method, details.timeout, details.metadata,
                              details.credentials, details.wait_for_ready)
        mine.tenant = "t-42"
        return await continuation(mine, request)

    intercept_unary_unary = _run
    intercept_unary_stream = _run


class _Read(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Records what each attempt's details say (class, tenant, traceparent)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, bool]] = []

    async def _run(self, continuation: Any, details: Any, request: Any) -> Any:
        keys = {k for k, _ in (details.metadata or ())}
        self.seen.append((type(details).__name__, getattr(details, "tenant", None),
                          "traceparent" in keys))
        return await continuation(details, request)

    intercept_unary_unary = _run
    intercept_unary_stream = _run


async def test_a_details_subclass_keeps_its_attributes_through_the_attempt_span(
    tmp_path: Path,
) -> None:
    """Through the attempt span interceptor a unary and a server-stream attempt's
    details reach the next interceptor as the application's class, its ``tenant`` kept,
    with ``traceparent`` injected."""
    provider = TracerProvider()
    opts = TelemetryOptions(tracer_provider=provider, attempt_spans=True)
    reader = _Read()

    def registry() -> LocalRegistry:
        return LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                          poll_interval_s=0.05))

    async with mesh_echo("echo", "e1", registry(), telemetry=None):
        ch = meshkit.dial("echo", registry=registry(), options=meshkit.DialOptions(
            insecure=True, telemetry=None, interceptors=client_interceptors(opts),
            attempt_interceptors=(_Tag(), *attempt_interceptors(opts), reader),
            retry=None))
        try:
            await asyncio.wait_for(ch.wait_for_endpoints(1), 10)
            assert await ch.unary_unary(method("Unary"))(b"hi", timeout=10) == b"e1|hi"
            stream = ch.unary_stream(method("ServerStream"))(b"1", timeout=10)
            assert isinstance(stream, collections.abc.AsyncIterable)
            assert [m async for m in stream] == [b"e1|0"]
        finally:
            await ch.close()
            provider.shutdown()
    assert reader.seen == [("_TenantDetails", "t-42", True)] * 2
