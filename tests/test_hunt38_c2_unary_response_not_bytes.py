"""A unary response that is not ``bytes`` (a ``bytearray``, a ``memoryview``, an ``int``)
from a handler of a method without a response serializer is counted as what the caller
gets.

grpc.aio sends only exact ``bytes`` (or a ``str``, UTF-8 encoded): it answers anything
else ``UNKNOWN`` "Unexpected <class 'TypeError'>: Expected bytes, got bytearray", after
the handler returned. meshkit's wrap passed such a response on unchecked, so the caller
got grpc.aio's ``UNKNOWN`` with the exception's text (also without
``expose_exception_text``) while telemetry counted the call ``OK`` (the README: "a unary
response is serialized inside meshkit's wrap, so its serializer's exception is answered
and counted as the handler's"). Now the wrap checks it: ``UNKNOWN`` naming the type only
(grpc.aio's text with ``expose_exception_text``), counted ``Unknown``; a ``str`` still
goes out encoded, and a response with a code set (``NOT_FOUND``) is discarded, as on
grpc.aio. Side by side on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.test_server_parity import _m, _side_by_side


async def _bytearray(request: Any, context: Any) -> Any:
    return bytearray(b"buffer")


def _plain_memoryview(request: Any, context: Any) -> Any:
    return memoryview(b"view")


async def _upload_int(requests: Any, context: Any) -> Any:
    async for _ in requests:
        pass
    return 5


async def _text(request: Any, context: Any) -> Any:
    return "text"


async def _not_found_bytearray(request: Any, context: Any) -> Any:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    return bytearray(b"discarded")


_HANDLERS = {
    "Buffer": grpc.unary_unary_rpc_method_handler(_bytearray),
    "View": grpc.unary_unary_rpc_method_handler(_plain_memoryview),
    "Upload": grpc.stream_unary_rpc_method_handler(_upload_int),
    "Text": grpc.unary_unary_rpc_method_handler(_text),
    "Missing": grpc.unary_unary_rpc_method_handler(_not_found_bytearray),
}
_TYPES = {"Buffer": "bytearray", "View": "memoryview", "Upload": "int"}


async def _answer(ch: grpc.aio.Channel, name: str) -> tuple[Any, ...]:
    call: Any
    if name == "Upload":
        call = ch.stream_unary(_m(name))(iter([b"a", b"b"]), timeout=10)
    else:
        call = ch.unary_unary(_m(name))(b"x", timeout=10)
    got: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        got.append(await call)
    return await call.code(), await call.details(), got


@pytest.mark.parametrize("expose", [False, True], ids=["type-only", "expose-text"])
async def test_a_unary_response_that_is_not_bytes_is_counted_as_answered(
        registry: LocalRegistry, expose: bool) -> None:
    metrics = CollectorRegistry()
    async with _side_by_side(
            registry, _HANDLERS, expose_exception_text=expose,
            telemetry=TelemetryOptions(registry=metrics, tracing=False)) as (plain, mesh):
        for name, kind in _TYPES.items():
            grpc_text = f"Unexpected <class 'TypeError'>: Expected bytes, got {kind}"
            assert await _answer(plain, name) == (grpc.StatusCode.UNKNOWN, grpc_text, [])
            details = grpc_text if expose else \
                "Unexpected TypeError in the handler (logged by the server)"
            assert await _answer(mesh, name) == (grpc.StatusCode.UNKNOWN, details, []), name
        for name in ("Text", "Missing"):
            assert await _answer(mesh, name) == await _answer(plain, name), name
    counted: dict[str, str] = {}
    for family in metrics.collect():
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total" and sample.value:
                counted[sample.labels["grpc_method"]] = sample.labels["grpc_code"]
    assert counted == {"Buffer": "Unknown", "View": "Unknown", "Upload": "Unknown",
                       "Text": "OK", "Missing": "NotFound"}
