"""The client span's ``meshkit.rate_limited`` marks a rate limiter's refusal only.

The client marked every ``RESOURCE_EXHAUSTED`` answer rate-limited: a handler's own quota
answer, a message over a size limit, a server's call-slot refusal, so a query for
rate-limited calls counted them all, while the server's side marks only its limiter's
refusals (``rejected_by_rate_limit``). Now a client marks an answer that carries the
limiter's pushback trailers (``retry-after`` / ``grpc-retry-pushback-ms``), unary and
streaming alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.trace import SpanKind

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RateLimitOptions
from tests.observability.conftest import Tracing
from tests.support.wait import until

S = "hunt.Quota"


def _add(_servicer: Any, server: Any) -> None:
    async def quota(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "monthly quota used up")
        raise AssertionError("not reached")

    async def quota_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"one"
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "monthly quota used up")

    async def limited(request: bytes, context: Any) -> bytes:
        return request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(S, {
        "Quota": grpc.unary_unary_rpc_method_handler(quota),
        "QuotaStream": grpc.unary_stream_rpc_method_handler(quota_stream),
        "Limited": grpc.unary_unary_rpc_method_handler(limited),
        "LimitedStream": grpc.unary_stream_rpc_method_handler(quota_stream)}),))


async def test_only_a_limiters_refusal_marks_the_client_span(
        registry: LocalRegistry, tracing: Tracing) -> None:
    srv = meshkit.MeshServer("quota", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="q1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=None,
                                 rate_limit=RateLimitOptions(
                                     rules={f"/{S}/Limited": "1/minute",
                                            f"/{S}/LimitedStream": "1/minute"},
                                     strategy="fixed-window")))
    await srv.start()
    ch = meshkit.dial("quota", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=TelemetryOptions(tracer_provider=tracing.provider,
                                                  metrics=False, access_log=False)))
    try:
        await ch.wait_for_endpoints(1)
        for name in ("Quota", "QuotaStream", "Limited", "Limited", "LimitedStream",
                     "LimitedStream"):
            try:
                if name.endswith("Stream"):
                    async for _ in ch.unary_stream(f"/{S}/{name}")(b"x", timeout=5):
                        pass
                else:
                    await ch.unary_unary(f"/{S}/{name}")(b"x", timeout=5)
            except grpc.aio.AioRpcError as e:
                assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (name, e)
            else:
                assert name == "Limited", name
        await until(lambda: sum(s.kind is SpanKind.CLIENT for s in tracing.spans()) == 6,
                    what="6 client spans")
    finally:
        await ch.close()
        await srv.drain()
    marked = sorted((s.name, bool(s.attributes.get("meshkit.rate_limited")))
                    for s in tracing.spans() if s.kind is SpanKind.CLIENT)
    assert marked == [(f"{S}/Limited", False), (f"{S}/Limited", True),
                      (f"{S}/LimitedStream", False), (f"{S}/LimitedStream", True),
                      (f"{S}/Quota", False),
                      (f"{S}/QuotaStream", False)], marked


pytestmark = pytest.mark.timeout(60)
