"""A ``str`` response on a server with a send limit is UTF-8 encoded before the method's
response serializer sees it, as grpc.aio encodes it, side by side with a plain grpc.aio
server on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.wait import until
from tests.test_server_parity import _m, _side_by_side

_SEND_LIMIT = (("grpc.max_send_message_length", 1000),)


def _framed(data: bytes) -> bytes:
    """A serializer of bytes (as grpc.aio hands it a ``str`` response: encoded)."""
    return b"<" + data + b">"


async def _hello(request: bytes, context: Any) -> str:
    return "héllo"


async def _hellos(request: bytes, context: Any) -> AsyncIterator[str]:
    yield "héllo"
    yield "wörld"


async def _wide(request: bytes, context: Any) -> str:
    return "é" * 600  # 600 characters, 1200 bytes: over the 1000-byte limit


async def _answers(ch: grpc.aio.Channel, name: str) -> tuple[grpc.StatusCode, list[bytes]]:
    call: Any
    if name == "StreamUnary":
        call = ch.stream_unary(_m(name))(iter([b"x"]), timeout=5)
    else:
        call = (ch.unary_stream if name == "Stream" else ch.unary_unary)(_m(name))(
            b"x", timeout=5)
    got: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        if name == "Stream":
            async for message in call:
                got.append(message)
        else:
            got.append(await call)
    return await call.code(), got


async def test_a_str_response_reaches_a_bytes_serializer_encoded_under_a_send_limit(
    registry: LocalRegistry,
) -> None:
    """grpc.aio UTF-8 encodes a ``str`` response before calling the response serializer,
    so a serializer of bytes answers it; under ``grpc.max_send_message_length`` meshkit's
    wrap handed it the ``str`` and the call failed ``UNKNOWN`` (``TypeError``)."""
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_hello, response_serializer=_framed),
        "Stream": grpc.unary_stream_rpc_method_handler(_hellos, response_serializer=_framed),
    }
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT) as (plain, mesh):
        for name in ("Unary", "Stream"):
            expected = await _answers(plain, name)
            assert expected[0] is grpc.StatusCode.OK, expected  # the baseline
            assert await _answers(mesh, name) == expected


async def test_a_str_response_over_the_send_limit_in_bytes_is_counted_so(
    registry: LocalRegistry,
) -> None:
    """A ``str`` response of 600 characters (1200 bytes in UTF-8) on a server with a
    1000-byte send limit is answered ``RESOURCE_EXHAUSTED`` and counted so: the wrap's
    size check counted its characters, passed it, and the call was counted ``OK``."""
    metrics = CollectorRegistry()
    handlers = {"Wide": grpc.unary_unary_rpc_method_handler(_wide)}
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT,
                             telemetry=TelemetryOptions(registry=metrics, tracing=False)
                             ) as (plain, mesh):
        expected = await _answers(plain, "Wide")
        assert expected == (grpc.StatusCode.RESOURCE_EXHAUSTED, [])  # the baseline
        assert await _answers(mesh, "Wide") == expected

        def handled(code: str) -> float:
            return metrics.get_sample_value("grpc_server_handled_total", {
                "grpc_service": "parity.v1.Parity", "grpc_method": "Wide",
                "grpc_type": "unary", "grpc_code": code}) or 0.0

        await until(lambda: handled("OK") + handled("ResourceExhausted") >= 1,
                    timeout_s=5, what="the call counted")
        assert (handled("OK"), handled("ResourceExhausted")) == (0.0, 1.0)


@pytest.mark.parametrize("telemetry", [True, False])
async def test_a_str_unary_response_reaches_a_bytes_serializer_encoded_without_a_limit(
    registry: LocalRegistry, telemetry: bool,
) -> None:
    """Without a send limit too, a ``str`` unary response (unary or request-streaming
    call, with or without telemetry) reaches the method's response serializer UTF-8
    encoded, as on grpc.aio: the wrap that serializes a unary response (the
    unhandled-exception answer installed, meshkit's default) handed it the ``str``."""
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_hello, response_serializer=_framed),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_hello, response_serializer=_framed),
    }
    options: dict[str, Any] = {} if telemetry else {"telemetry": None}
    async with _side_by_side(registry, handlers, **options) as (plain, mesh):
        for name in handlers:
            expected = await _answers(plain, name)
            assert expected == (grpc.StatusCode.OK, ["<héllo>".encode()])  # the baseline
            assert await _answers(mesh, name) == expected, name


class _Bytes(bytes):
    """A subclass of bytes: grpc.aio sends exact ``bytes`` only."""


def _returning(value: object) -> grpc.RpcMethodHandler:
    async def handler(request: bytes, context: Any) -> object:
        return value

    return grpc.unary_unary_rpc_method_handler(handler)


def _yielding(value: object) -> grpc.RpcMethodHandler:
    async def handler(request: bytes, context: Any) -> AsyncIterator[object]:
        yield b"first"
        yield value

    return grpc.unary_stream_rpc_method_handler(handler, response_serializer=_as_given)


def _as_given(message: object) -> object:
    """A serializer handing its message on as it is (``bytes`` or not)."""
    return message


async def test_a_response_that_is_no_bytes_is_counted_as_answered_under_a_send_limit(
    registry: LocalRegistry,
) -> None:
    """A unary response of a method without a serializer, or a stream's message a
    serializer made, that is no exact ``bytes`` (a ``dict``, a list of bytes, a
    ``bytearray``, a bytes subclass) is refused by grpc.aio ``UNKNOWN`` "Expected bytes,
    got <type>"; under a send limit meshkit's size check took its ``len()`` and counted
    the call ``OK`` (or the stream ``CANCELLED``): it is now answered and counted so."""
    metrics = CollectorRegistry()
    values: dict[str, object] = {"Dict": {"a": 1}, "List": [b"a" * 2000],
                                 "Array": bytearray(b"ab"), "Sub": _Bytes(b"ab")}
    handlers = {name: _returning(value) for name, value in values.items()}
    handlers["Stream"] = _yielding(bytearray(b"ab"))
    async with _side_by_side(registry, handlers, server_options=_SEND_LIMIT,
                             telemetry=TelemetryOptions(registry=metrics, tracing=False)
                             ) as (plain, mesh):
        for name in handlers:
            expected = await _answers(plain, name)
            assert expected[0] is grpc.StatusCode.UNKNOWN, (name, expected)  # the baseline
            assert await _answers(mesh, name) == expected, name

        def handled(name: str, code: str) -> float:
            return metrics.get_sample_value("grpc_server_handled_total", {
                "grpc_service": "parity.v1.Parity", "grpc_method": name,
                "grpc_type": "server_stream" if name == "Stream" else "unary",
                "grpc_code": code}) or 0.0

        await until(lambda: all(
            sum(handled(n, c) for c in ("OK", "Unknown", "Canceled")) >= 1 for n in handlers),
            timeout_s=5, what="every call counted")
        assert {n: handled(n, "Unknown") for n in handlers} == dict.fromkeys(handlers, 1.0)
