"""A ``TelemetryOptions.peer_identity`` function of one's own that raises (it reads a
context variable no call of this kind sets, an attribute of ``None``) does not fail the
call: the access line, span and metrics record it without an identity and the failure is
logged on ``meshkit.observability``. Before, every call that had succeeded was answered
``UNKNOWN`` "Unexpected <class 'LookupError'>: <its text>" (the text sent to the caller),
counted ``OK`` in ``grpc_server_handled_total`` all the same, and its span never ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.observability.conftest import Tracing
from tests.support.wait import until


def _who() -> str | None:
    raise LookupError("no identity bound for tenant-42")


def _add(_servicer: Any, server: Any) -> None:
    async def work(request: bytes, context: Any) -> bytes:
        return b"ok:" + request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "hunt.S", {"W": grpc.unary_unary_rpc_method_handler(work),
                   "S": grpc.unary_stream_rpc_method_handler(stream)}),))


async def test_a_peer_identity_function_that_raises_fails_no_call(
        registry: LocalRegistry, prom: CollectorRegistry, tracing: Tracing) -> None:
    srv = meshkit.MeshServer("who", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, instance_id="w1", drain_delay_s=0.0,
                                 grace_s=1.0, telemetry=TelemetryOptions(
                                     tracer_provider=tracing.provider, registry=prom,
                                     peer_identity=_who)))
    await srv.start()
    ch = meshkit.dial("who", registry=registry,
                      options=meshkit.DialOptions(insecure=True, telemetry=None))
    try:
        await ch.wait_for_endpoints(1)
        assert await ch.unary_unary("/hunt.S/W")(b"x", timeout=5) == b"ok:x"
        assert [m async for m in ch.unary_stream("/hunt.S/S")(b"y", timeout=5)] == [b"y"]
        await until(lambda: sum(s.kind is SpanKind.SERVER for s in tracing.spans()) == 2,
                    what="both server spans ended")
    finally:
        await ch.close()
        await srv.drain()
    for method, kind in (("W", "unary"), ("S", "server_stream")):
        assert prom.get_sample_value("grpc_server_handled_total", {
            "grpc_type": kind, "grpc_service": "hunt.S", "grpc_method": method,
            "grpc_code": "OK"}) == 1.0, method
