"""``TelemetryOptions(attempt_spans=True)`` in a process where
opentelemetry-instrumentation-grpc's aio client instrumentor is active
(``opentelemetry-instrument``): the instrumentor makes the CLIENT spans and meshkit's
logical interceptor stands aside, so its attempt interceptor never makes a span; yet
:func:`attempt_interceptors` still returned it and ``dial()`` installed it, a grpc.aio
interceptor (an extra task per attempt) doing nothing. Now it is left out there."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions, attempt_interceptors
from tests.observability.conftest import Tracing
from tests.support.echo import add_echo, method
from tests.support.wait import until


async def test_one_client_span_per_attempt_under_the_instrumentor(
        registry: LocalRegistry, tracing: Tracing) -> None:
    """No attempt interceptor is installed, and a call still has exactly one CLIENT span
    (the instrumentor's)."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

    telemetry = TelemetryOptions(tracer_provider=tracing.provider, attempt_spans=True,
                                 metrics=False, access_log=False)
    inst = GrpcAioInstrumentorClient()
    inst.instrument(tracer_provider=tracing.provider)
    srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0,
                                                          telemetry=None))
    try:
        assert attempt_interceptors(telemetry) == ()
        await srv.start()
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, telemetry=telemetry)) as ch:
            assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
        await until(lambda: any(s.kind is SpanKind.CLIENT for s in tracing.spans()),
                    what="a client span")
    finally:
        inst.uninstrument()
        await srv.drain()
    clients = [s for s in tracing.spans() if s.kind is SpanKind.CLIENT]
    assert len(clients) == 1, [(s.name, s.instrumentation_scope) for s in clients]
