"""meshkit's sampled spans are SDK spans built without the SDK's generic ``start_span``
path (``_tracing.LeanSdkSpan``): what processors, exporters and handler code see must be
what the SDK's own path gives, and the SDK's path must take over where span limits could
cut attributes."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.observability.conftest import FRONT, ChainFactory
from tests.support.wait import until

APP = "meshkit.test.App"


class Recorder(SpanProcessor):
    """A processor keeping what ``on_start`` and ``on_end`` were given."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.started.append(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def provider_for(**kwargs: Any) -> tuple[TracerProvider, InMemorySpanExporter, Recorder]:
    exporter, recorder = InMemorySpanExporter(), Recorder()
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(recorder)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter, recorder


def held(span: ReadableSpan) -> list[str]:
    """The fields ``span`` holds: its instance dict's and its slots' (a lean span's, its
    provider's resource and scope class attributes of its class over them)."""
    slots = [n for cls in type(span).__mro__ for n in getattr(cls, "__slots__", ())
             if hasattr(span, n)]
    return sorted({*vars(span), *slots})


def shape(span: ReadableSpan) -> tuple[Any, ...]:
    """What an exporter reads from ``span``, without what differs between two runs (ids,
    times, ephemeral ports)."""
    attrs = {k: v for k, v in (span.attributes or {}).items() if k != "network.peer.port"}
    return (span.name, span.kind, sorted(attrs.items()), span.status.status_code,
            span.parent is None, span.context.trace_flags, span.dropped_attributes,
            [e.name for e in span.events], span.instrumentation_scope,
            dict(span.resource.attributes))


async def relay_once(chain: ChainFactory, telemetry: TelemetryOptions,
                     provider: TracerProvider, exporter: InMemorySpanExporter,
                     request: bytes = b"hi") -> list[ReadableSpan]:
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracer_provider=provider))
    assert await c.client.unary_unary(f"/{FRONT}/Relay")(request, timeout=5) == \
        b"e1|" + request
    await until(lambda: len(exporter.get_finished_spans()) >= 4, what="4 spans")
    return sorted(exporter.get_finished_spans(), key=lambda s: (s.name, s.kind.value))


@pytest.mark.parametrize("sampler", [None, ALWAYS_ON], ids=["default", "always_on"])
async def test_lean_spans_export_what_the_sdk_path_exports(
        chain: ChainFactory, telemetry: TelemetryOptions, sampler: Sampler | None) -> None:
    """The same two-hop call under the default limits (lean spans) and under limits that
    send every span through the SDK's ``start_span`` exports the same spans: names,
    kinds, attributes, status, parentage, flags, scope and resource; processors get an
    SDK ``Span`` in ``on_start`` either way."""
    lean, lean_out, lean_rec = provider_for(sampler=sampler)
    sdk, sdk_out, sdk_rec = provider_for(sampler=sampler,
                                         span_limits=SpanLimits(max_span_attributes=31))
    got_lean = await relay_once(chain, telemetry, lean, lean_out)
    got_sdk = await relay_once(chain, telemetry, sdk, sdk_out)
    assert [shape(s) for s in got_lean] == [shape(s) for s in got_sdk]
    assert {type(s).__name__ for s in lean_rec.started} == {"LeanSdkSpan"}
    assert "LeanSdkSpan" not in {type(s).__name__ for s in sdk_rec.started}
    for started in (lean_rec.started, sdk_rec.started):
        assert len(started) == 4 and all(isinstance(s, SdkSpan) for s in started)
    # one trace, each span's parent the span that made the call
    by_id = {s.context.span_id: s for s in got_lean}
    assert len({s.context.trace_id for s in got_lean}) == 1
    roots = [s for s in got_lean if s.parent is None]
    assert len(roots) == 1 and roots[0].kind is SpanKind.CLIENT
    assert all(s.parent.span_id in by_id for s in got_lean if s.parent is not None)
    assert not any(s.is_recording() for s in lean_rec.started)  # all ended
    # the ReadableSpan processors get holds the fields the SDK's holds (in slots), and
    # reads, copies and renders as the SDK's does
    assert [held(s) for s in lean_rec.ended] == [sorted(vars(s)) for s in sdk_rec.ended]
    for s in lean_rec.ended:
        assert isinstance(s, ReadableSpan) and vars(s) == {}
        again = copy.copy(s)
        assert shape(again) == shape(s) and again.context == s.context
        assert json.loads(s.to_json())["context"]["span_id"] == f"0x{s.context.span_id:016x}"
    lean.shutdown()
    sdk.shutdown()


async def test_limits_that_could_cut_attributes_use_the_sdk_path(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """A value-length limit applies to meshkit's own attributes as the SDK applies it
    (``server.address`` ``front`` cut to ``fro``)."""
    provider, exporter, recorder = provider_for(
        span_limits=SpanLimits(max_span_attribute_length=3))
    spans = await relay_once(chain, telemetry, provider, exporter)
    client = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == f"{FRONT}/Relay"]
    assert client[0].attributes is not None
    assert client[0].attributes["server.address"] == "fro"
    assert "LeanSdkSpan" not in {type(s).__name__ for s in recorder.started}
    provider.shutdown()


@pytest.fixture
async def app(registry: LocalRegistry) -> AsyncIterator[Callable[..., Any]]:
    """A server ``meshkit.test.App`` whose ``Work`` handler runs ``body(span)`` on the
    current span (the server span meshkit started), and a channel to it."""
    servers: list[meshkit.MeshServer] = []
    channels: list[meshkit.MeshChannel] = []

    async def build(telemetry: TelemetryOptions,
                    body: Callable[[Any], None]) -> meshkit.MeshChannel:
        async def work(request: bytes, context: Any) -> bytes:
            body(trace.get_current_span())
            return request

        def add(_servicer: Any, server: Any) -> None:
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                APP, {"Work": grpc.unary_unary_rpc_method_handler(work)}),))

        srv = meshkit.MeshServer("app", [(add, None)], registry=registry,
                                 options=meshkit.ServeOptions(
                                     insecure=True, instance_id="a1", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=telemetry))
        await srv.start()
        servers.append(srv)
        ch = meshkit.dial("app", registry=registry,
                          options=meshkit.DialOptions(insecure=True, telemetry=telemetry))
        channels.append(ch)
        await ch.wait_for_endpoints(1)
        return ch

    yield build
    for ch in channels:
        await ch.close()
    for srv in servers:
        await srv.drain()


async def test_handler_writes_to_the_server_span(
        app: Callable[..., Any], telemetry: TelemetryOptions) -> None:
    """What a handler writes on ``trace.get_current_span()`` (attributes, events, links,
    status, a child span) lands on the exported server span, next to meshkit's own
    attributes, and values are checked as the SDK checks them."""
    provider, exporter, _ = provider_for()
    tracer = provider.get_tracer("app")
    link_to = trace.SpanContext(0x1234, 0x5678, False)

    def body(span: Any) -> None:
        span.set_attribute("app.user", "u1")
        span.set_attributes({"app.rows": 3, "app.ids": [1, 2]})
        span.add_event("looked up", {"rows": 3})
        span.add_link(link_to, {"why": "batch"})
        span.set_status(StatusCode.OK)
        with tracer.start_as_current_span("db"):
            pass

    ch = await app(dataclasses.replace(telemetry, tracer_provider=provider), body)
    assert await ch.unary_unary(f"/{APP}/Work")(b"x", timeout=5) == b"x"
    await until(lambda: len(exporter.get_finished_spans()) >= 3, what="3 spans")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    attrs = dict(server.attributes or {})
    assert attrs["app.user"] == "u1" and attrs["app.rows"] == 3
    assert attrs["app.ids"] == (1, 2)  # cleaned as the SDK cleans values (a tuple)
    assert attrs["rpc.grpc.status_code"] == 0 and attrs["rpc.method"] == "Work"
    assert [(e.name, dict(e.attributes or {})) for e in server.events] == [
        ("looked up", {"rows": 3})]
    assert [(ln.context.span_id, dict(ln.attributes or {})) for ln in server.links] == [
        (0x5678, {"why": "batch"})]
    assert server.status.status_code is StatusCode.OK
    db = spans["db"]
    assert db.parent is not None and db.parent.span_id == server.context.span_id
    assert db.context.trace_id == server.context.trace_id
    provider.shutdown()


async def test_an_ended_span_takes_no_more_writes(
        app: Callable[..., Any], telemetry: TelemetryOptions) -> None:
    """A handler that keeps the span and writes after the call ended changes nothing
    exported (the SDK warns and ignores it)."""
    provider, exporter, _ = provider_for()
    kept: list[Any] = []
    ch = await app(dataclasses.replace(telemetry, tracer_provider=provider), kept.append)
    await ch.unary_unary(f"/{APP}/Work")(b"x", timeout=5)
    await until(lambda: len(exporter.get_finished_spans()) >= 2, what="2 spans")
    server = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)
    kept[0].set_attribute("late", 1)
    kept[0].set_attributes({"late2": 2})
    kept[0].add_event("late")
    kept[0].add_link(trace.SpanContext(1, 2, False))
    kept[0].end()
    assert "late" not in (server.attributes or {}) and "late2" not in (server.attributes or {})
    assert not server.events and not server.links
    assert len(exporter.get_finished_spans()) == 2
    provider.shutdown()


class CountingIds(IdGenerator):
    """Ids from counters, recognisable in what is exported."""

    def __init__(self) -> None:
        self.traces = itertools.count(0xA0000000000000000000000000000001)
        self.spans = itertools.count(0xB000000000000001)

    def generate_trace_id(self) -> int:
        return next(self.traces)

    def generate_span_id(self) -> int:
        return next(self.spans)

    def is_trace_id_random(self) -> bool:
        return False


async def test_the_providers_id_generator_makes_the_ids(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """A provider's own id generator (e.g. AWS X-Ray's, whose trace ids carry a time)
    makes the root trace id and every span id, as with the SDK's own path."""
    provider, exporter, _ = provider_for(id_generator=CountingIds())
    spans = await relay_once(chain, telemetry, provider, exporter)
    assert {s.context.trace_id for s in spans} == {0xA0000000000000000000000000000001}
    assert {s.context.span_id >> 60 for s in spans} == {0xB}
    assert not any(s.context.trace_flags & 0x02 for s in spans)  # ids not random
    provider.shutdown()


class Tagging(Sampler):
    """Samples every span, adding an attribute and a tracestate entry."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Any = None,
                      links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        return SamplingResult(self.decision, {**(attributes or {}), "sampler.rule": "r1"},
                              TraceState([("vendor", "x")]))

    def get_description(self) -> str:
        return "Tagging"


async def test_a_samplers_attributes_and_tracestate_are_kept(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """A sampler's result is used as the SDK uses it: its attributes on the span, its
    tracestate in the span context (and so in the traceparent that travels)."""
    provider, exporter, _ = provider_for(sampler=Tagging(Decision.RECORD_AND_SAMPLE))
    spans = await relay_once(chain, telemetry, provider, exporter)
    assert all((s.attributes or {}).get("sampler.rule") == "r1" for s in spans)
    assert all(s.context.trace_state.get("vendor") == "x" for s in spans)
    provider.shutdown()


async def test_record_only_spans_reach_processors_unsampled(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """``RECORD_ONLY``: spans are recorded and given to processors, not flagged sampled
    (so an exporting processor drops them), as in the SDK."""
    provider, exporter, recorder = provider_for(sampler=Tagging(Decision.RECORD_ONLY))
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracer_provider=provider))
    assert await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5) == b"e1|hi"
    await until(lambda: len(recorder.ended) >= 4, what="4 ended spans")
    assert not any(s.context.trace_flags.sampled for s in recorder.ended)
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


HEADERS = "meshkit.test.Headers"


async def header_sent(registry: LocalRegistry, telemetry: TelemetryOptions, name: str) -> str:
    """One call through a channel with ``telemetry`` to a server without telemetry, whose
    ``meshkit.test.Headers/Get`` answers the value of the request header ``name`` it
    received (``""`` when none)."""

    async def get(request: bytes, context: Any) -> bytes:
        return str(dict(context.invocation_metadata() or ()).get(name, "")).encode()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            HEADERS, {"Get": grpc.unary_unary_rpc_method_handler(get)}),))

    srv = meshkit.MeshServer("headers", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="h1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=None))
    await srv.start()
    try:
        async with meshkit.dial("headers", registry=registry, options=meshkit.DialOptions(
                insecure=True, telemetry=telemetry)) as ch:
            await ch.wait_for_endpoints(1)
            got = await ch.unary_unary(f"/{HEADERS}/Get")(b"", timeout=5)
    finally:
        await srv.drain()
    return bytes(got).decode()


@pytest.mark.parametrize("limits", [None, SpanLimits(max_span_attributes=31)],
                         ids=["lean", "sdk_path"])
async def test_a_dropping_samplers_tracestate_travels_as_in_the_sdk(
        registry: LocalRegistry, prom: CollectorRegistry, limits: SpanLimits | None) -> None:
    """A sampler that drops a span but returns a tracestate (``SamplingResult.trace_state``,
    "a Tracestate that will be associated with the Span through the new SpanContext":
    vendor and consistent-probability samplers put their decision data there, so later
    hops decide consistently).

    What was wrong: meshkit built the non-recording span with the parent's tracestate
    (none for a root) and threw the sampler's away, so the callee received no
    ``tracestate`` although the SDK's own ``start_span`` puts the sampler's in the
    non-recording span's context.

    Now: the sampler's tracestate is the span's, as in the SDK, and travels (``vendor=x``)."""
    provider = TracerProvider(sampler=Tagging(Decision.DROP), span_limits=limits)
    reference = provider.get_tracer("ref").start_span("ref", kind=SpanKind.CLIENT)
    assert reference.get_span_context().trace_state.to_header() == "vendor=x"  # the SDK's
    opts = TelemetryOptions(tracer_provider=provider, registry=prom)
    try:
        assert await header_sent(registry, opts, "tracestate") == "vendor=x"
    finally:
        provider.shutdown()


class Reservoir(Sampler):
    """A rate-limiting sampler (Jaeger's ``ratelimiting``, X-Ray's reservoir): samples the
    first ``budget`` spans it is asked about and drops the rest; counts the questions."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.asked = 0

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Any = None,
                      links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        self.asked += 1
        if self.budget > 0:
            self.budget -= 1
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "Reservoir"


@pytest.mark.parametrize("limits", [None, SpanLimits(max_span_attributes=31)],
                         ids=["lean", "sdk_path"])
async def test_the_sampler_decides_once_also_on_the_sdk_span_path(
        registry: LocalRegistry, prom: CollectorRegistry, limits: SpanLimits | None) -> None:
    """Under span limits that send spans through the SDK's own ``start_span`` (fewer than
    32 attributes per span here), with a sampler meshkit does not evaluate itself.

    What was wrong: meshkit asked the sampler, then called the SDK's ``start_span``,
    which asked it again, and the second answer won: a stateful sampler (rate-limiting,
    reservoir, a random one not keyed on the trace id) was consumed twice per span and
    its decision overridden (a reservoir of one said "sample" to meshkit, then "drop" to
    the SDK, and the one call that should have been traced exported nothing; a random
    50 % sampler sampled 25 %).

    Now: the sampler is asked once per span on either path; the SDK builds the span from
    that answer (one question, one exported span)."""
    sampler = Reservoir(budget=1)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    opts = TelemetryOptions(tracer_provider=provider, registry=prom,
                            complete_after_response_max_in_flight=0)
    try:
        await header_sent(registry, opts, "traceparent")
        await until(lambda: len(exporter.get_finished_spans()) >= 1 or sampler.asked > 1,
                    what="the sampled client span, or a second question")
        assert (sampler.asked, len(exporter.get_finished_spans())) == (1, 1), \
            "(questions to the sampler, exported spans) for one call"
    finally:
        provider.shutdown()


async def test_an_sdk_whose_span_has_other_fields_gets_its_own_path(
        chain: ChainFactory, telemetry: TelemetryOptions,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If the installed SDK's span sets a field a lean span does not (a newer SDK), spans
    are built by the SDK's ``start_span``, and still exported."""
    import opentelemetry.sdk.trace as sdk_trace

    original = sdk_trace.Span.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._new_field = 1

    monkeypatch.setattr(sdk_trace.Span, "__init__", init)
    provider, exporter, recorder = provider_for()
    spans = await relay_once(chain, telemetry, provider, exporter)
    assert len(spans) == 4
    assert "LeanSdkSpan" not in {type(s).__name__ for s in recorder.started}
    assert all(getattr(s, "_new_field", None) == 1 for s in recorder.started)
    provider.shutdown()


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF], ids=["always_on", "always_off"])
async def test_static_samplers_ignore_the_callers_flag(
        chain: ChainFactory, telemetry: TelemetryOptions, sampler: Sampler) -> None:
    """``ALWAYS_ON`` records every span even under a caller's unsampled trace, and
    ``ALWAYS_OFF`` none even under a sampled one, as the SDK's samplers decide; the
    caller's trace id is kept either way."""
    from opentelemetry import context as otel_context

    provider, exporter, recorder = provider_for(sampler=sampler)
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracer_provider=provider))
    flags = trace.TraceFlags(trace.TraceFlags.DEFAULT if sampler is ALWAYS_ON
                             else trace.TraceFlags.SAMPLED)
    caller = trace.SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331,
                               True, flags)
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(caller)))
    try:
        assert await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5) == b"e1|hi"
    finally:
        otel_context.detach(token)
    if sampler is ALWAYS_ON:
        await until(lambda: len(exporter.get_finished_spans()) >= 4, what="4 spans")
        assert {s.context.trace_id for s in exporter.get_finished_spans()} == {
            caller.trace_id}
    else:
        assert recorder.started == [] and exporter.get_finished_spans() == ()
    provider.shutdown()


class Ending(Recorder):
    """A :class:`Recorder` that also keeps what ``_on_ending`` was given."""

    def __init__(self) -> None:
        super().__init__()
        self.ending: list[Any] = []

    def _on_ending(self, span: Any) -> None:
        self.ending.append(span)


async def test_a_processor_added_later_gets_every_hook(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """Lean spans call the provider's processors one by one: one added after spans were
    made gets ``on_start``, ``_on_ending`` and ``on_end`` of every later span (and the
    earlier ones keep getting theirs), as with the SDK's multi-processor."""
    provider, exporter, recorder = provider_for()
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracer_provider=provider))
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    assert await relay(b"1", timeout=5) == b"e1|1"
    await until(lambda: len(recorder.ended) >= 4, what="4 ended spans")
    later = Ending()
    provider.add_span_processor(later)
    assert await relay(b"2", timeout=5) == b"e1|2"
    await until(lambda: len(later.ended) >= 4 and len(recorder.ended) >= 8,
                what="the second call's spans")
    assert len(later.started) == len(later.ending) == len(later.ended) == 4
    assert {type(s).__name__ for s in later.started} == {"LeanSdkSpan"}
    assert [s.context for s in later.ending] == [s.context for s in later.ended]
    assert len(exporter.get_finished_spans()) == 8
    provider.shutdown()


def test_only_hooks_that_do_nothing_are_skipped() -> None:
    """``_is_noop`` reads a processor hook's bytecode: ``pass`` (the SDK's batch and simple
    processors' ``on_start``) or a docstring alone (the base class's) is skipped; any hook
    with a body is called."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from meshkit.observability import _tracing

    batch = BatchSpanProcessor(InMemorySpanExporter())
    try:
        assert _tracing._is_noop(batch.on_start)
        assert _tracing._is_noop(batch._on_ending)
        assert _tracing._is_noop(SpanProcessor().on_start)
        assert not _tracing._is_noop(batch.on_end)
        assert not _tracing._is_noop(Recorder().on_start)
        assert not _tracing._is_noop(Ending()._on_ending)
        assert not _tracing._is_noop(print)  # no bytecode to read: called
    finally:
        batch.shutdown()


def test_detaching_a_token_from_another_context_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    """``detach_context`` behaves as the API's ``detach``: a token made in another context
    is logged by opentelemetry-api and never raises into the call."""
    import contextvars

    from meshkit.observability import _tracing

    span = trace.NonRecordingSpan(trace.SpanContext(1, 2, False))
    token = contextvars.copy_context().run(_tracing.attach_span, span)
    with caplog.at_level("ERROR"):
        _tracing.detach_context(token)
    assert "Failed to detach context" in caplog.text
    mine = _tracing.attach_span(span)
    assert trace.get_current_span() is span
    _tracing.detach_context(mine)
    assert trace.get_current_span() is not span


class MarkingBatch(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` subclass with its own ``on_end``: it must be called."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.seen: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.seen.append(span)
        super().on_end(span)


@pytest.mark.parametrize("decision", [Decision.RECORD_AND_SAMPLE, Decision.RECORD_ONLY],
                         ids=["sampled", "record_only"])
async def test_batch_processors_get_what_their_on_end_would_pass(
        chain: ChainFactory, telemetry: TelemetryOptions, decision: Decision) -> None:
    """A lean span hands a sampled span straight to a ``BatchSpanProcessor``'s batch
    (``_batch_emit``), skipping its ``on_end``: the exporter gets exactly what that
    ``on_end`` would have passed (every sampled span, no record-only one), a subclass
    with its own ``on_end`` is still called through it, and the other processors, in
    order, get every ended span."""
    from meshkit.observability import _tracing

    plain_out, marking_out = InMemorySpanExporter(), InMemorySpanExporter()
    recorder = Recorder()
    plain, marking = BatchSpanProcessor(plain_out), MarkingBatch(marking_out)
    provider = TracerProvider(sampler=Tagging(decision))
    for p in (plain, recorder, marking):
        provider.add_span_processor(p)
    assert _tracing._batch_emit(plain) is not None
    assert _tracing._batch_emit(marking) is None  # its own on_end: not bypassed
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracer_provider=provider))
    assert await c.client.unary_unary(f"/{FRONT}/Relay")(b"hi", timeout=5) == b"e1|hi"
    await until(lambda: len(recorder.ended) >= 4 and len(marking.seen) >= 4,
                what="4 ended spans")
    assert {type(s).__name__ for s in recorder.started} == {"LeanSdkSpan"}
    provider.force_flush()
    want = 4 if decision is Decision.RECORD_AND_SAMPLE else 0
    assert len(plain_out.get_finished_spans()) == want
    assert len(marking_out.get_finished_spans()) == want
    assert [s.context for s in marking.seen] == [s.context for s in recorder.ended]
    provider.shutdown()


def test_lean_span_fields_ids_and_end() -> None:
    """What ``SpanStarter.start`` builds without frames is what the long way builds: the span's
    fields are those ``LeanSdkSpan.__init__`` sets, its context equals the API's
    ``SpanContext`` for the same ids, a parsed ``traceparent`` equals the API's; and
    ``_meshkit_end`` sets meshkit's attributes and ends once (a second end is logged
    and changes nothing)."""
    from meshkit.observability import _tracing

    provider, exporter, recorder = provider_for()
    starter = _tracing.SpanStarter(provider, SpanKind.SERVER)
    span: Any = starter.start("Svc/M", None, None, {"rpc.system": "grpc"})
    assert type(span).__name__ == "LeanSdkSpan"
    sc = span.get_span_context()
    probe = object.__new__(type(span))
    probe.__init__("Svc/M", sc, None, SpanKind.SERVER, {}, 1)
    assert sorted(vars(span)) == sorted(vars(probe))
    api = trace.SpanContext(sc.trace_id, sc.span_id, False, sc.trace_flags)
    assert sc == api and sc.is_valid and tuple(sc) == tuple(api)
    tp = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"
    parsed = _tracing.parse_traceparent((("traceparent", tp),))
    assert parsed == trace.SpanContext(sc.trace_id, sc.span_id, True,
                                       trace.TraceFlags(1))
    assert parsed and parsed.is_valid and parsed.trace_flags.sampled
    span._meshkit_end({"rpc.grpc.status_code": 0}, None)
    assert not span.is_recording()
    assert len(exporter.get_finished_spans()) == 1
    span._meshkit_end({"late": 1}, None)
    span.end()
    done = exporter.get_finished_spans()
    assert len(done) == 1 and len(recorder.ended) == 1
    assert dict(done[0].attributes or {}) == {"rpc.system": "grpc",
                                              "rpc.grpc.status_code": 0}
    provider.shutdown()


async def test_a_disabled_tracer_makes_no_spans_until_enabled(
        chain: ChainFactory, telemetry: TelemetryOptions) -> None:
    """The SDK's tracer configurator switches meshkit's tracer off and on again, read at
    every span as the SDK's ``start_span`` reads it (trace context still travels)."""
    from opentelemetry.sdk.trace import (
        _default_tracer_configurator,
        _disable_tracer_configurator,
    )

    provider, exporter, recorder = provider_for(
        _tracer_configurator=_disable_tracer_configurator)
    c = await chain(telemetry_opts=dataclasses.replace(telemetry, tracer_provider=provider))
    relay = c.client.unary_unary(f"/{FRONT}/Relay")
    assert await relay(b"1", timeout=5) == b"e1|1"
    assert recorder.started == []
    provider._set_tracer_configurator(tracer_configurator=_default_tracer_configurator)
    assert await relay(b"2", timeout=5) == b"e1|2"
    await until(lambda: len(exporter.get_finished_spans()) >= 4, what="4 spans")
    provider.shutdown()
