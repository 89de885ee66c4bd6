"""A streaming handler's unhandled exception is answered with the messages, code and
trailing metadata a plain grpc.aio server sends (only the details differ: the exception's
type, not its text), for every stream kind, async and plain handlers, with and without
telemetry, side by side on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.test_server_parity import _m, _side_by_side

_TRAILER = ("x-order", "7")


class _OrderLost(Exception):
    pass


async def _async_out(request: Any, context: Any) -> AsyncIterator[bytes]:
    context.set_trailing_metadata((_TRAILER,))
    if not isinstance(request, bytes):  # all read: the caller's sending is over
        async for _ in request:
            pass
    yield b"a"
    yield b"b"
    raise _OrderLost("secret text")


def _plain_out(request: Any, context: Any) -> Iterator[bytes]:
    context.set_trailing_metadata((_TRAILER,))
    if not isinstance(request, bytes):
        for _ in request:
            pass
    yield b"a"
    yield b"b"
    raise _OrderLost("secret text")


async def _async_none(request: Any, context: Any) -> AsyncIterator[bytes]:
    context.set_trailing_metadata((_TRAILER,))
    if not isinstance(request, bytes):
        async for _ in request:
            pass
    raise _OrderLost("secret text")
    yield b"unreached"


def _plain_none(request: Any, context: Any) -> Iterator[bytes]:
    context.set_trailing_metadata((_TRAILER,))
    if not isinstance(request, bytes):
        for _ in request:
            pass
    raise _OrderLost("secret text")
    yield b"unreached"


async def _async_unary(requests: Any, context: Any) -> bytes:
    context.set_trailing_metadata((_TRAILER,))
    async for _ in requests:
        pass
    raise _OrderLost("secret text")


def _plain_unary(requests: Any, context: Any) -> bytes:
    context.set_trailing_metadata((_TRAILER,))
    for _ in requests:
        pass
    raise _OrderLost("secret text")


_HANDLERS = {
    "UnaryStream": grpc.unary_stream_rpc_method_handler(_async_out),
    "PlainUnaryStream": grpc.unary_stream_rpc_method_handler(_plain_out),
    "StreamStream": grpc.stream_stream_rpc_method_handler(_async_out),
    "PlainStreamStream": grpc.stream_stream_rpc_method_handler(_plain_out),
    "NoneStream": grpc.unary_stream_rpc_method_handler(_async_none),
    "PlainNoneStream": grpc.unary_stream_rpc_method_handler(_plain_none),
    "NoneStreamStream": grpc.stream_stream_rpc_method_handler(_async_none),
    "PlainNoneStreamStream": grpc.stream_stream_rpc_method_handler(_plain_none),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(_async_unary),
    "PlainStreamUnary": grpc.stream_unary_rpc_method_handler(_plain_unary),
}


async def _answer(ch: grpc.aio.Channel, name: str) -> tuple[Any, ...]:
    got: list[bytes] = []
    call: Any
    kind = _HANDLERS[name]
    if kind.request_streaming and kind.response_streaming:
        call = ch.stream_stream(_m(name))(iter([b"r1", b"r2"]), timeout=5)
    elif kind.request_streaming:
        call = ch.stream_unary(_m(name))(iter([b"r1", b"r2"]), timeout=5)
    else:
        call = ch.unary_stream(_m(name))(b"x", timeout=5)
    with contextlib.suppress(grpc.aio.AioRpcError):
        if kind.response_streaming:
            async for message in call:
                got.append(message)
        else:
            got.append(await call)
    trailers = [(k, v) for k, v in (await call.trailing_metadata() or ())]
    initial = [(k, v) for k, v in (await call.initial_metadata() or ())]
    return await call.code(), got, trailers, initial, await call.details()


@pytest.mark.parametrize("telemetry", [False, True])
async def test_a_streaming_handlers_exception_is_answered_as_grpc_aio_answers_it(
    registry: LocalRegistry, telemetry: bool,
) -> None:
    """Each stream kind's handler, async or plain, that sets trailing metadata, sends
    messages (or none) and raises gets meshkit's answer with grpc.aio's code, messages,
    trailing and initial metadata, and details naming the exception's type only."""
    options: dict[str, Any] = {"telemetry": TelemetryOptions(
        registry=CollectorRegistry(), tracing=False) if telemetry else None}
    async with _side_by_side(registry, _HANDLERS, **options) as (plain, mesh):
        for name in _HANDLERS:
            expected = await _answer(plain, name)
            assert expected[0] is grpc.StatusCode.UNKNOWN, (name, expected)
            assert _TRAILER in expected[2], (name, expected)
            got = await _answer(mesh, name)
            assert got[:4] == expected[:4], (name, got, expected)
            assert got[4] == "Unexpected _OrderLost in the handler (logged by the server)", (
                name, got)
