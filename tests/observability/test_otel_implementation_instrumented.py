"""``implementation="otel"`` in a process where opentelemetry-instrumentation-grpc's aio
instrumentors are active (``opentelemetry-instrument``): the instrumentors already add
their interceptor to every ``grpc.aio`` server and channel meshkit makes, so the ones
:func:`server_interceptors` / :func:`attempt_interceptors` returned came on top: two
SERVER and two CLIENT spans per call, the trace context injected twice (the inner span's
overwriting the outer's). Now they are left out on a side whose instrumentor is active."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import (
    TelemetryOptions,
    attempt_interceptors,
    client_interceptors,
    server_interceptors,
)
from tests.observability.conftest import Tracing
from tests.support.echo import add_echo, method
from tests.support.wait import until


async def test_one_span_per_side_under_the_instrumentors(
        registry: LocalRegistry, tracing: Tracing, telemetry: TelemetryOptions) -> None:
    """One SERVER and one CLIENT span per call, the server's the client's child."""
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )

    server_inst, client_inst = GrpcAioInstrumentorServer(), GrpcAioInstrumentorClient()
    server_inst.instrument(tracer_provider=tracing.provider)
    client_inst.instrument(tracer_provider=tracing.provider)
    srv = None
    try:
        srv = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, drain_delay_s=0, telemetry=None,
                                     interceptors=server_interceptors(
                                         "echo", telemetry, implementation="otel")))
        await srv.start()
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, telemetry=None,
                interceptors=client_interceptors(telemetry, implementation="otel"),
                attempt_interceptors=attempt_interceptors(telemetry,
                                                          implementation="otel"))) as ch:
            assert await ch.unary_unary(method("Unary"))(b"hi", timeout=5) == b"e1|hi"
        await until(lambda: len([s for s in tracing.spans() if s.kind is SpanKind.SERVER])
                    >= 1, what="a server span")
    finally:
        server_inst.uninstrument()
        client_inst.uninstrument()
        if srv is not None:
            await srv.drain()
    spans = [s for s in tracing.spans() if s.kind in (SpanKind.SERVER, SpanKind.CLIENT)]
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert (len(servers), len(clients)) == (1, 1), [(s.name, s.kind) for s in spans]
    assert servers[0].parent.span_id == clients[0].context.span_id
