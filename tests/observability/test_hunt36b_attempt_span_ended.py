"""An attempt span whose attempt raised something that is no gRPC status (grpc's
``UsageError`` "Channel is closed." when the endpoint's sub-channel was closed as the
attempt started) is ended ``UNKNOWN`` and exported; before, a unary attempt's span was
never ended, so the trace lacked the attempt (a streaming one's already was)."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.trace import StatusCode

from meshkit.observability import TelemetryOptions
from meshkit.observability._client import AttemptSpanInterceptor, _current_call
from tests.observability.conftest import Tracing


class _Call:
    """The logical call an attempt belongs to, as TelemetryClientInterceptor sets it."""

    attempts: list[object] = []
    service = "svc"
    deadline = None


async def test_a_unary_attempt_that_raises_without_a_status_ends_its_span(
        tracing: Tracing) -> None:
    channel = grpc.aio.insecure_channel(
        "127.0.0.1:1",
        interceptors=[AttemptSpanInterceptor(TelemetryOptions(
            tracer_provider=tracing.provider))])
    call = channel.unary_unary("/hunt.S/W")
    await channel.close()
    token = _current_call.set(_Call())  # type: ignore[arg-type]
    try:
        with pytest.raises(Exception, match="Channel is closed"):
            await call(b"x", timeout=1)
    finally:
        _current_call.reset(token)
    spans = tracing.spans()
    assert [(s.name, s.status.status_code) for s in spans] == [
        ("hunt.S/W", StatusCode.ERROR)], spans
