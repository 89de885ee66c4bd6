"""The trace flags meshkit sends on when it continues a caller's trace (W3C Trace Context
Level 2): raw grpc client (``traceparent`` in) -> a meshkit server whose handler calls a
sink through a meshkit channel -> the ``traceparent`` the sink received."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions

_SINK = "meshkit.test.Sink"
_TID, _SID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def _sink_handler() -> grpc.GenericRpcHandler:
    """``/meshkit.test.Sink/Traceparent`` answers the ``traceparent`` it received."""

    async def seen(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = dict(context.invocation_metadata() or ())
        return str(md.get("traceparent", "")).encode()

    return grpc.method_handlers_generic_handler(
        _SINK, {"Traceparent": grpc.unary_unary_rpc_method_handler(seen)})


async def _relayed_traceparent(registry: LocalRegistry, telemetry: TelemetryOptions,
                               incoming: str) -> str:
    sink = meshkit.MeshServer(
        "sink", [(lambda _s, server: server.add_generic_rpc_handlers((_sink_handler(),)),
                  None)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="s1", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=None))
    await sink.start()
    to_sink = meshkit.dial("sink", registry=registry,
                           options=meshkit.DialOptions(insecure=True, telemetry=telemetry))

    async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        answer: bytes = await to_sink.unary_unary(f"/{_SINK}/Traceparent")(request, timeout=5)
        return answer

    front_handler = grpc.method_handlers_generic_handler(
        "meshkit.test.Front", {"Relay": grpc.unary_unary_rpc_method_handler(relay)})
    front = meshkit.MeshServer(
        "front", [(lambda _s, server: server.add_generic_rpc_handlers((front_handler,)),
                   None)],
        registry=registry,
        options=meshkit.ServeOptions(insecure=True, instance_id="f1", drain_delay_s=0.0,
                                     grace_s=1.0, telemetry=telemetry))
    await front.start()
    try:
        await to_sink.wait_for_endpoints(1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as raw:
            answer = await raw.unary_unary("/meshkit.test.Front/Relay")(
                b"x", metadata=(("traceparent", incoming),), timeout=5)
            return bytes(answer).decode()
    finally:
        await to_sink.close()
        await front.drain()
        await sink.drain()


@pytest.mark.parametrize(("sdk", "incoming", "sent"), [
    # the random-trace-id flag (02) goes on with the trace id, sampled or not: "If the flag
    # is set in the incoming traceparent header, it MUST also be set in all outgoing
    # traceparent headers which use the same trace-id" (an unsampled 02 went out as 00)
    (True, "02", 0x02), (True, "03", 0x03), (False, "02", 0x02), (False, "03", 0x03),
    # other bits are reserved: "Vendors MUST set those to zero" (without an SDK, 05 and 07
    # went out unchanged)
    (True, "05", 0x01), (False, "05", 0x01), (False, "07", 0x03), (False, "04", 0x00),
])
async def test_flags_sent_on_when_a_trace_continues(
    registry: LocalRegistry, telemetry: TelemetryOptions, prom: CollectorRegistry,
    sdk: bool, incoming: str, sent: int,
) -> None:
    """The flags meshkit's outgoing ``traceparent`` carries for the caller's ``incoming``
    flags, with a tracer provider (parent-based sampling) and without one."""
    opts: Any = telemetry if sdk else TelemetryOptions(
        tracer_provider=NoOpTracerProvider(), registry=prom)
    out = await _relayed_traceparent(registry, opts, f"00-{_TID}-{_SID}-{incoming}")
    version, out_tid, out_sid, flags = out.split("-")
    # with an SDK the parent is meshkit's own (unsampled or exported) client span; without
    # one it is the caller's span, as the OpenTelemetry API passes a parent through
    assert (version, out_tid) == ("00", _TID) and (out_sid != _SID) is sdk, out
    assert int(flags, 16) == sent, (incoming, out)


@pytest.mark.parametrize("flags", ["01", "00"])
@pytest.mark.parametrize("provider", ["noop", "sdk_disabled"])
async def test_without_an_sdk_a_relayed_trace_keeps_the_callers_span_as_parent(
        registry: LocalRegistry, prom: CollectorRegistry, provider: str, flags: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A meshkit service with tracing on but no SDK provider (the shipped default when no
    ``OTEL_*`` variable asks for tracing) between two traced services: A (sampled, span
    ``b7ad...``) -> B (meshkit, no SDK) -> C.

    What was wrong: B's server and client spans were non-recording spans with span ids B
    made up, and B sent C a ``traceparent`` naming one of them as parent, with the sampled
    flag passed through. C sampled and exported a span whose parent no service ever
    exported: trace back-ends showed C's subtree detached from A's span (an orphan), the
    trace broken at every untraced meshkit hop.

    Now: as the OpenTelemetry Trace API specifies without an SDK ("Behavior of the API in
    the absence of an installed SDK": a non-recording span with the parent's
    SpanContext; Python's ``NoOpTracer`` does that), B's spans carry the caller's span
    context, so C receives A's span id as its parent. An SDK provider built under
    ``OTEL_SDK_DISABLED=true`` (its tracers the API's no-op one) is no SDK either."""
    if provider == "sdk_disabled":
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        tracer_provider: Any = TracerProvider()
    else:
        tracer_provider = NoOpTracerProvider()
    opts = TelemetryOptions(tracer_provider=tracer_provider, registry=prom)
    incoming = f"00-{_TID}-{_SID}-{flags}"
    out = await _relayed_traceparent(registry, opts, incoming)
    assert out == incoming, f"B sent {out!r}; expected the caller's own {incoming!r}"
