"""A plain-function (``def``, not a generator) response-streaming handler that returns
``None`` instead of its messages (a forgotten ``return rows``) is a handler error: a plain
grpc.aio server answers ``UNKNOWN`` "Unexpected <class 'TypeError'>: 'NoneType' object is
not iterable" (a synchronous ``grpc.server`` ``UNKNOWN`` too), as it iterates what the
handler returned. meshkit took the ``None`` for an empty stream and answered ``OK`` with
no message (telemetry counted ``OK``): the caller read an empty result as a real one.
Side by side on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.test_server_parity import _m, _side_by_side


def _returns_none(request: Any, context: Any) -> Any:
    if not isinstance(request, bytes):  # a request stream: read it all first
        for _ in request:
            pass
    return None


def _not_found_returns_none(request: Any, context: Any) -> Any:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such order")
    return None


_HANDLERS = {
    "List": grpc.unary_stream_rpc_method_handler(_returns_none),
    "Chat": grpc.stream_stream_rpc_method_handler(_returns_none),
    "Missing": grpc.unary_stream_rpc_method_handler(_not_found_returns_none),
}


async def _answer(ch: grpc.aio.Channel, name: str) -> tuple[Any, ...]:
    call: Any
    if name == "Chat":
        call = ch.stream_stream(_m(name))(iter([b"r1", b"r2"]), timeout=10)
    else:
        call = ch.unary_stream(_m(name))(b"x", timeout=10)
    got: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for message in call:
            got.append(message)
    return await call.code(), await call.details(), got


_GRPC_DETAILS = "Unexpected <class 'TypeError'>: 'NoneType' object is not iterable"


@pytest.mark.parametrize("expose", [False, True], ids=["type-only", "expose-text"])
@pytest.mark.parametrize("telemetry", [False, True], ids=["no-telemetry", "telemetry"])
async def test_a_plain_stream_handler_returning_none_is_answered_unknown(
        registry: LocalRegistry, expose: bool, telemetry: bool) -> None:
    """``UNKNOWN`` with no message, as on grpc.aio (its details with
    ``expose_exception_text``, else the exception's type only); a code the handler set
    before returning is kept, as grpc.aio keeps it; telemetry counts ``Unknown``. (A
    plain bidi handler returning ``None`` deadlocks a plain grpc.aio server, which runs
    it on the loop: it is compared with the unary-stream answer.)"""
    metrics = CollectorRegistry()
    options: dict[str, Any] = {
        "expose_exception_text": expose,
        "telemetry": TelemetryOptions(registry=metrics, tracing=False) if telemetry else None}
    async with _side_by_side(registry, _HANDLERS, **options) as (plain, mesh):
        expected = await _answer(plain, "List")
        assert expected == (grpc.StatusCode.UNKNOWN, _GRPC_DETAILS, [])
        details = _GRPC_DETAILS if expose else \
            "Unexpected TypeError in the handler (logged by the server)"
        for name in ("List", "Chat"):
            assert await _answer(mesh, name) == (grpc.StatusCode.UNKNOWN, details, []), name
        missing = await _answer(plain, "Missing")
        assert missing[0] is grpc.StatusCode.NOT_FOUND, missing
        assert (await _answer(mesh, "Missing"))[:1] == missing[:1]
        if telemetry:
            for name in ("List", "Chat"):
                unknown = metrics.get_sample_value("grpc_server_handled_total", {
                    "grpc_service": "parity.v1.Parity", "grpc_method": name,
                    "grpc_type": "server_stream" if name == "List" else "bidi_stream",
                    "grpc_code": "Unknown"})
                assert unknown == 1.0, name
