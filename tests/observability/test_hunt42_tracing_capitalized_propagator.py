"""A propagator whose header name has capitals (AWS X-Ray's ``X-Amzn-Trace-Id``, as
``OTEL_PROPAGATORS=xray`` installs it; HTTP header names are case-insensitive, so
propagators name them as HTTP writes them) works over gRPC, whose metadata keys are
lower-case, as opentelemetry-instrumentation-grpc's own setter lower-cases them.

Before, meshkit's metadata setter wrote the key as given: every traced call of a
``dial()`` channel failed ``INTERNAL`` ("metadata key 'X-Amzn-Trace-Id': a key is
lower-case"), not one reached its server; and its getter compared keys exactly, so a
server never read the header (which arrives lower-case, HTTP/2) and started a new trace
for every call. The propagator here is a small one of that format (the real
opentelemetry-propagator-aws-xray behaved the same, checked by hand)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions, extract_context, server_interceptors

pytestmark = pytest.mark.timeout(30)

HEADER = "X-Amzn-Trace-Id"
_VALUE = re.compile(r"Root=1-([0-9a-f]{8})-([0-9a-f]{24});Parent=([0-9a-f]{16});Sampled=([01])")


class XRayLike(TextMapPropagator):
    """AWS X-Ray's header format, under its capitalised name."""

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        values = getter.get(carrier, HEADER)
        found = _VALUE.fullmatch(values[0]) if values else None
        if found is None:
            return context if context is not None else Context()
        sc = SpanContext(int(found[1] + found[2], 16), int(found[3], 16), is_remote=True,
                         trace_flags=TraceFlags(int(found[4])))
        return trace.set_span_in_context(NonRecordingSpan(sc), context)

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        sc = trace.get_current_span(context).get_span_context()
        if sc.is_valid:
            tid = f"{sc.trace_id:032x}"
            setter.set(carrier, HEADER, f"Root=1-{tid[:8]}-{tid[8:]};Parent="
                                        f"{sc.span_id:016x};Sampled={int(sc.trace_flags.sampled)}")

    @property
    def fields(self) -> set[str]:
        return {HEADER}


@pytest.fixture
def xray() -> Iterator[None]:
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(XRayLike())
    yield
    propagate.set_global_textmap(default)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Any, list[Any], int, Any]]:
    """A grpc.aio server with meshkit's telemetry recording what it received, its port,
    a ``dial()`` channel to it, the spans exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    opts = TelemetryOptions(tracer_provider=provider, metrics=False, access_log=False)
    seen: list[Any] = []

    async def answer(request: bytes, context: Any) -> bytes:
        seen.append(list(context.invocation_metadata()))
        return request

    server = grpc.aio.server(interceptors=server_interceptors("xray-svc", opts))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "p.S", {"Do": grpc.unary_unary_rpc_method_handler(answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    registry = LocalRegistry(LocalOptions(path=tmp_path, ttl_s=15.0))
    await registry.register(Instance(service="xray-svc", instance_id="x1",
                                     host="127.0.0.1", port=port))
    channel = meshkit.dial("xray-svc", registry=registry,
                           options=meshkit.DialOptions(insecure=True, telemetry=opts))
    try:
        await channel.wait_for_endpoints(1)
        yield channel, seen, port, (exporter, provider)
    finally:
        await channel.close()
        await server.stop(None)
        await registry.close()
        provider.shutdown()


async def test_a_traced_call_sends_the_header_lower_case(
        xray: None, served: tuple[Any, list[Any], int, Any]) -> None:
    channel, seen, _, (exporter, provider) = served
    with provider.get_tracer("t").start_as_current_span("root") as root:
        await channel.unary_unary("/p.S/Do")(b"x", timeout=5)
    sent = [v for k, v in seen[0] if k == HEADER.lower()]
    assert len(sent) == 1 and _VALUE.fullmatch(sent[0])
    server_span = next(s for s in exporter.get_finished_spans()
                       if s.kind is trace.SpanKind.SERVER)
    assert server_span.context.trace_id == root.get_span_context().trace_id


async def test_a_server_reads_the_header(
        xray: None, served: tuple[Any, list[Any], int, Any]) -> None:
    _, _, port, (exporter, _) = served
    value = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as raw:
        await raw.unary_unary("/p.S/Do")(b"x", timeout=5,
                                         metadata=[(HEADER.lower(), value)])
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == 0x5759E988BD862E3FE1BE46A994272793
    assert span.parent is not None and span.parent.span_id == 0x53995C3F42CD8AD8


def test_extract_context_reads_a_lower_case_key(xray: None) -> None:
    value = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
    sc = trace.get_current_span(extract_context([(HEADER.lower(), value)])).get_span_context()
    assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == (
        0x5759E988BD862E3FE1BE46A994272793, 0x53995C3F42CD8AD8, False)
