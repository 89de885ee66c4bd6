"""A handler that gives its status as an integer (``context.set_code(5)``,
``context.abort(5, ...)``: grpc.aio takes and sends it, as grpc-go's codes are integers)
answers its caller that code (``NOT_FOUND``), but meshkit's telemetry counted the call
``OK`` (a return) or ``Unknown`` (an abort), and a handler that set an integer code and
then raised was answered ``UNKNOWN`` where grpc.aio sends the code set. Now an integer
that is a gRPC status code is read as that code everywhere: the answer to an unhandled
exception, ``grpc_server_handled_total``, the access line and the span."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

SERVICE = "meshkit.test.IntCodes"


async def _set_and_return(request: bytes, context: Any) -> bytes:
    context.set_code(5)
    context.set_details("no such thing")
    return b""


async def _abort(request: bytes, context: Any) -> bytes:
    await context.abort(5, "no such thing")
    return b""


async def _set_and_raise(request: bytes, context: Any) -> bytes:
    context.set_code(14)
    raise RuntimeError("backend down")


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "SetReturn": grpc.unary_unary_rpc_method_handler(_set_and_return),
        "Abort": grpc.unary_unary_rpc_method_handler(_abort),
        "SetRaise": grpc.unary_unary_rpc_method_handler(_set_and_raise),
    }),))


def _count(metrics: CollectorRegistry, method: str, code: str) -> float:
    return sum(s.value for f in metrics.collect() for s in f.samples
               if s.name == "grpc_server_handled_total"
               and s.labels.get("grpc_method") == method
               and s.labels.get("grpc_code") == code)


@pytest.mark.parametrize(("method", "want", "label"), [
    ("SetReturn", grpc.StatusCode.NOT_FOUND, "NotFound"),
    ("Abort", grpc.StatusCode.NOT_FOUND, "NotFound"),
    ("SetRaise", grpc.StatusCode.UNAVAILABLE, "Unavailable"),
], ids=["set-and-return", "abort", "set-and-raise"])
async def test_an_integer_status_code_is_answered_and_counted_as_that_code(
        registry: LocalRegistry, method: str, want: grpc.StatusCode, label: str) -> None:
    metrics = CollectorRegistry()
    srv = meshkit.MeshServer(SERVICE, [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(
                                 insecure=True, admin=None, drain_delay_s=0.0, grace_s=0.5,
                                 telemetry=TelemetryOptions(registry=metrics)))
    await srv.start()
    try:
        async with meshkit.dial(SERVICE, registry=registry, options=meshkit.DialOptions(
                insecure=True, retry=None)) as ch:
            await ch.wait_for_endpoints(1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=5)
            assert info.value.code() is want, info.value.details()
            await until(lambda: sum(_count(metrics, method, c) for c in (
                "OK", "Unknown", label)) >= 1, what="the call counted")
            assert (_count(metrics, method, label), _count(metrics, method, "OK"),
                    _count(metrics, method, "Unknown")) == (1.0, 0.0, 0.0)
    finally:
        await srv.drain()
