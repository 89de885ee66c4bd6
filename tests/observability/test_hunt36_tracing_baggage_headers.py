"""Several ``baggage`` metadata entries on one call are one baggage (W3C Baggage:
"multiple baggage headers are allowed", combined as one list, as HTTP combines repeated
fields): before, the OpenTelemetry API's propagator read only the first, and the entries
of the others (a proxy's, a second library's) never reached the handler nor went on
downstream."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import baggage
from opentelemetry.sdk.trace import TracerProvider

from meshkit.observability import TelemetryOptions, server_interceptors
from meshkit.observability._tracing import extract_context

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_extract_combines_baggage_entries() -> None:
    ctx = extract_context([("baggage", "tenant=acme"), ("traceparent", TRACEPARENT),
                           ("baggage", "region=eu,tier=gold"), ("baggage", "")])
    assert dict(baggage.get_all(ctx)) == {"tenant": "acme", "region": "eu", "tier": "gold"}
    one = extract_context([("baggage", "tenant=acme")])
    assert dict(baggage.get_all(one)) == {"tenant": "acme"}


async def test_the_handler_sees_every_baggage_entry() -> None:
    seen: list[dict[str, object]] = []

    async def answer(request: bytes, context: Any) -> bytes:
        seen.append(dict(baggage.get_all()))
        return request

    opts = TelemetryOptions(tracer_provider=TracerProvider(), metrics=False,
                            access_log=False)
    server = grpc.aio.server(interceptors=server_interceptors("svc", opts))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "p.S", {"Do": grpc.unary_unary_rpc_method_handler(answer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await channel.unary_unary("/p.S/Do")(b"x", timeout=5, metadata=[
            ("baggage", "tenant=acme"), ("baggage", "region=eu")])
    finally:
        await channel.close()
        await server.stop(None)
    assert seen == [{"tenant": "acme", "region": "eu"}]
