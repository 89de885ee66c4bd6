"""Lean spans: SDK spans only for sampled traces, trace context carried either way, the
configured sampler deciding, and no second set of spans under the grpc instrumentor."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from meshkit.observability import TelemetryOptions
from meshkit.observability._tracing import parse_traceparent
from tests.observability.conftest import FRONT, ChainFactory, Tracing
from tests.support.wait import until


@pytest.fixture
def access() -> Iterator[io.StringIO]:
    """structlog configured to render JSON into a buffer (the access log goes there)."""
    buf = io.StringIO()
    structlog.configure(processors=[structlog.processors.add_log_level,
                                    structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(buf),
                        cache_logger_on_first_use=False)
    yield buf
    structlog.reset_defaults()


def rpc_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [d for d in map(json.loads, buf.getvalue().splitlines()) if d.get("event") == "rpc"]


def provider_with(sampler: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_unsampled_trace_records_nothing_but_still_propagates(
        chain: ChainFactory, telemetry: TelemetryOptions, access: io.StringIO) -> None:
    """With a sampler that drops every trace no span is exported, yet client -> front ->
    echo keep one trace id (traceparent travels with the sampled flag cleared), every
    hop with its own span id in the access log."""
    provider, exporter = provider_with(ParentBased(ALWAYS_OFF))
    opts = dataclasses.replace(telemetry, tracer_provider=provider)
    c = await chain(telemetry_opts=opts)
    assert await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5) == b"e1|hi"
    await until(lambda: len(rpc_lines(access)) >= 4, what="4 access lines")
    lines = rpc_lines(access)
    assert len({ln["trace_id"] for ln in lines}) == 1
    assert len({ln["span_id"] for ln in lines}) == 4
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


async def test_ratio_sampler_decides_on_the_propagated_trace_id(
        chain: ChainFactory, telemetry: TelemetryOptions, access: io.StringIO) -> None:
    """Under ParentBased(TraceIdRatioBased(0.5)) a root call is exported exactly when the
    ratio rule keeps the trace id that travelled (so the rate is the configured one, not
    drawn twice), and the server follows the caller's decision."""
    provider, exporter = provider_with(ParentBased(TraceIdRatioBased(0.5)))
    rule = TraceIdRatioBased(0.5)
    opts = dataclasses.replace(telemetry, tracer_provider=provider)
    c = await chain(telemetry_opts=opts)
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    for _ in range(40):
        await relay(b"x", timeout=5)
    await until(lambda: len(rpc_lines(access)) >= 160, what="160 access lines")
    clients = [ln for ln in rpc_lines(access)
               if ln["side"] == "client" and ln["target"] == "front"]
    kept = {ln["trace_id"] for ln in clients
            if int(ln["trace_id"], 16) & TraceIdRatioBased.TRACE_ID_LIMIT < rule.bound}
    assert 0 < len(kept) < 40
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == kept
    # every hop of a kept trace is exported: client, front server, front client, echo server
    assert len(spans) == 4 * len(kept)
    assert {format(s.context.span_id, "016x") for s in spans} <= {
        ln["span_id"] for ln in rpc_lines(access)}
    provider.shutdown()


async def test_without_an_sdk_provider_the_callers_trace_is_continued(
        chain: ChainFactory, telemetry: TelemetryOptions, access: io.StringIO) -> None:
    """With the API's no-op provider a call made under a caller's span context carries
    that trace id through both hops (sampled flag passed through); a call without one
    carries no trace context at all."""
    opts = dataclasses.replace(telemetry, tracer_provider=trace.NoOpTracerProvider())
    c = await chain(telemetry_opts=opts)
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    await relay(b"a", timeout=5)
    await until(lambda: len(rpc_lines(access)) >= 4, what="4 access lines")
    assert not [ln for ln in rpc_lines(access) if "trace_id" in ln]
    caller = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True,
                         TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(caller)))
    try:
        await relay(b"b", timeout=5)
    finally:
        otel_context.detach(token)
    await until(lambda: len(rpc_lines(access)) >= 8, what="8 access lines")
    traced = [ln for ln in rpc_lines(access) if "trace_id" in ln]
    assert len(traced) == 4
    assert {ln["trace_id"] for ln in traced} == {"0af7651916cd43dd8448eb211c80319c"}


class _AlwaysHeader(TextMapPropagator):
    """A propagator that writes ``x-always: 1`` on every call, context or not."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = default_setter) -> None:
        setter.set(carrier, "x-always", "1")

    def extract(self, carrier: Any, context: Any = None, getter: Any = default_getter) -> Any:
        return context if context is not None else otel_context.Context()

    @property
    def fields(self) -> set[str]:
        return {"x-always"}


async def test_without_an_sdk_what_the_caller_carries_still_travels(
        chain: ChainFactory, telemetry: TelemetryOptions, access: io.StringIO) -> None:
    """With no SDK provider and no span, a client skips its trace-context steps only while
    there is nothing to carry: baggage in the caller's context still reaches the server
    (the default W3C propagators write it), and a global propagator other than that pair
    is asked on every call (here one that always writes a header)."""
    from opentelemetry import baggage, propagate
    from opentelemetry.propagators.composite import CompositePropagator

    opts = dataclasses.replace(telemetry, tracer_provider=trace.NoOpTracerProvider())
    c = await chain(telemetry_opts=opts)
    relay = c.client.unary_unary(f"/{FRONT}/Relay")

    def received() -> dict[str, str]:  # what the front server got on the latest call
        lines = [json.loads(ln) for ln in access.getvalue().splitlines()]
        last = [ln for ln in lines if ln.get("event") == "relaying"][-1]
        return {k: v for k, v in last["metadata"] if k in ("baggage", "x-always",
                                                             "traceparent")}

    await relay(b"a", timeout=5)
    assert received() == {}
    token = otel_context.attach(baggage.set_baggage("tenant", "t-42"))
    try:
        await relay(b"b", timeout=5)
    finally:
        otel_context.detach(token)
    assert received() == {"baggage": "tenant=t-42"}
    default = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([default, _AlwaysHeader()]))
    try:
        await relay(b"c", timeout=5)
    finally:
        propagate.set_global_textmap(default)
    assert received() == {"x-always": "1"}
    await relay(b"d", timeout=5)
    assert received() == {}


def test_traceparent_fast_parse_follows_w3c() -> None:
    """The hot-path reader takes a version-00 traceparent, ignores invalid ones (all-zero
    ids, bad hex), and leaves tracestate/baggage/other versions to the propagator."""
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sc = parse_traceparent((("traceparent", tp),))
    assert isinstance(sc, SpanContext)
    assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled, sc.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, True)
    assert parse_traceparent(()) is None
    assert parse_traceparent((("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01"),)
                             ) is None
    assert parse_traceparent((("traceparent", tp.replace("a", "g")),)) is None
    assert parse_traceparent((("traceparent", tp), ("tracestate", "a=b"))) is False
    assert parse_traceparent((("traceparent", tp), ("baggage", "k=v"))) is False
    assert parse_traceparent((("traceparent", "01" + tp[2:] + "-extra"),)) is False
    # flags beyond the four W3C level-2 ones are kept as sent
    other = parse_traceparent((("traceparent", tp[:-2] + "f3"),))
    assert other and int(other.trace_flags) == 0xF3 and other.trace_flags.sampled


def test_traceparent_fast_parse_agrees_with_the_sdk_propagator() -> None:
    """Every version-00 ``traceparent`` of 55 characters, valid or not, reads as the API's
    own W3C propagator reads it: the same ids and flags, or no parent at all (upper-case
    hex, a character outside hex in any field, a wrong separator, all-zero ids)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    variants = {tp, tp.upper().replace("X", "x"), "00-" + "0" * 32 + tp[35:],
                tp[:36] + "0" * 16 + tp[52:], tp[:-2] + "00", tp[:-2] + "ff"}
    for i in range(3, 55):
        for c in "gA-_ .0f":
            variants.add(tp[:i] + c + tp[i + 1:])
    reference = TraceContextTextMapPropagator()
    for value in sorted(variants):
        assert len(value) == 55 and value.startswith("00-")
        ours = parse_traceparent((("traceparent", value),))
        theirs = trace.get_current_span(
            reference.extract({"traceparent": value})).get_span_context()
        if not theirs.is_valid:
            assert ours is None, value
            continue
        assert isinstance(ours, SpanContext), value
        assert (ours.trace_id, ours.span_id, int(ours.trace_flags), ours.is_remote) == (
            theirs.trace_id, theirs.span_id, int(theirs.trace_flags), True), value


def test_another_global_propagator_reads_the_headers() -> None:
    """Under a global propagator other than the default W3C pair, the fast reader leaves
    every header to it (``False``), and takes them again once the pair is back."""
    from opentelemetry import propagate
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tp = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)
    default = propagate.get_global_textmap()
    assert isinstance(parse_traceparent(tp), SpanContext)
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    try:
        assert parse_traceparent(tp) is False
    finally:
        propagate.set_global_textmap(default)
    assert isinstance(parse_traceparent(tp), SpanContext)


async def test_no_second_set_of_spans_under_the_grpc_instrumentor(
        chain: ChainFactory, tracing: Tracing, telemetry: TelemetryOptions) -> None:
    """With opentelemetry-instrumentation-grpc's aio instrumentors active (as under
    opentelemetry-instrument), the spans are theirs only: meshkit adds none."""
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )

    server_inst, client_inst = GrpcAioInstrumentorServer(), GrpcAioInstrumentorClient()
    server_inst.instrument(tracer_provider=tracing.provider)
    client_inst.instrument(tracer_provider=tracing.provider)
    try:
        c = await chain()
        assert await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5) == b"e1|hi"
        await until(lambda: len([s for s in tracing.spans() if s.kind is SpanKind.SERVER])
                    >= 2, what="2 instrumentor server spans")
    finally:
        server_inst.uninstrument()
        client_inst.uninstrument()
    names = {s.name for s in tracing.spans()}
    assert f"/{FRONT}/Relay" in names  # the instrumentor's naming
    assert not [n for n in names if not n.startswith("/")]  # meshkit's has no leading /


async def test_another_api_implementation_makes_every_span_itself(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """A tracer provider that is not the SDK's (another OpenTelemetry API implementation)
    is asked for every span, as before lean spans: meshkit does not decide for it."""
    made: list[str] = []

    class Counting(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            inner = trace.NoOpTracer()

            class Tracer(trace.NoOpTracer):
                def start_span(self, name: str, *a: Any, **kw: Any) -> trace.Span:
                    made.append(name)
                    return inner.start_span(name, *a, **kw)

            return Tracer()

    opts = dataclasses.replace(telemetry, tracer_provider=Counting())
    c = await chain(telemetry_opts=opts)
    assert await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5) == b"e1|hi"
    assert sorted(made) == sorted([f"{FRONT}/Relay"] * 2 + ["meshkit.test.Echo/Unary"] * 2)
