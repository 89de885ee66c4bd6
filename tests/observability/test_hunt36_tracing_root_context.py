"""A server call that brings no trace context is a root span whatever span is current
where the server was started: grpc.aio's handler tasks inherit the context of
``server.start()``, and a server started inside a span (``with
tracer.start_as_current_span("boot"): await serve(...)``) had, where the SDK's own
``start_span`` builds meshkit's spans (span limits with a value-length limit, e.g.
``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``), every such call made a child of that span: the
whole life of the server one trace, none of it sampled when the boot span was not; and
where meshkit asks the provider's sampler (one it cannot evaluate itself), the sampler
was asked with that span as the parent (every call dropped under an unsampled boot
span), while the lean span made was a root."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from meshkit.observability import TelemetryOptions, server_interceptors

T = "0af7651916cd43dd8448eb211c80319c"
S = "b7ad6b7169203331"


class _Asked(ParentBased):
    """A ParentBased sampler meshkit must ask (not the SDK's default one)."""

    def should_sample(self, *args: Any, **kwargs: Any) -> Any:
        return super().should_sample(*args, **kwargs)


@pytest.mark.parametrize("limits", [SpanLimits(max_span_attribute_length=256), None])
@pytest.mark.parametrize("sampler", [None, _Asked(TraceIdRatioBased(1.0))])
async def test_a_call_without_trace_context_is_a_root_span(limits: SpanLimits | None,
                                                           sampler: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits, **({"sampler": sampler} if sampler
                                                       else {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    opts = TelemetryOptions(tracer_provider=provider, metrics=False, access_log=False,
                            complete_after_response_max_in_flight=0)

    async def answer(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(interceptors=server_interceptors("svc", opts))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "p.S", {"Do": grpc.unary_unary_rpc_method_handler(answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    # the boot span is not sampled: a call taken for its child is not sampled either
    boot_tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("app")
    with boot_tracer.start_as_current_span("boot") as boot:
        await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        do = channel.unary_unary("/p.S/Do")
        assert await do(b"x", timeout=5) == b"x"
        assert await do(b"y", timeout=5, metadata=[("traceparent", f"00-{T}-{S}-01")]) \
            == b"y"
    finally:
        await channel.close()
        await server.stop(None)
        provider.shutdown()
    root, child = exporter.get_finished_spans()  # the root one sampled too
    assert root.parent is None
    assert root.context.trace_id != boot.get_span_context().trace_id
    assert child.parent is not None and child.parent.span_id == int(S, 16)
    assert child.context.trace_id == int(T, 16)
