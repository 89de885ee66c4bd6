"""A response stream whose message grpc.aio cannot send (its serializer raised, or it is
no bytes) is answered ``UNKNOWN`` by grpc.aio itself, outside the handler wrap; telemetry
counts the call so, not ``CANCELLED`` (the handler's generator is closed afterwards),
side by side with a plain grpc.aio server on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from prometheus_client import CollectorRegistry

from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.wait import until
from tests.test_server_parity import _SERVICE, _m, _side_by_side


async def _wrong_message(request: bytes, context: Any) -> AsyncIterator[Any]:
    yield wrappers_pb2.StringValue(value="first")
    yield {"value": "second"}  # no message: the serializer raises TypeError


def _plain_not_bytes(request: bytes, context: Any) -> Iterator[Any]:
    yield b"first"
    yield 5  # a method without a serializer: grpc.aio expects bytes


async def _answers(ch: grpc.aio.Channel, name: str) -> tuple[grpc.StatusCode, int]:
    call = ch.unary_stream(_m(name))(b"x", timeout=5)
    got = 0
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in call:
            got += 1
    return await call.code(), got


@pytest.mark.parametrize("expose", [False, True])
async def test_a_stream_message_grpc_aio_cannot_send_is_counted_unknown(
    registry: LocalRegistry, expose: bool,
) -> None:
    """Both streams reach the caller ``UNKNOWN`` after their first message, on grpc.aio
    and on meshkit, and ``grpc_server_handled_total`` counts them ``Unknown``."""
    metrics = CollectorRegistry()
    handlers = {
        "Wrong": grpc.unary_stream_rpc_method_handler(
            _wrong_message, response_serializer=wrappers_pb2.StringValue.SerializeToString),
        "NotBytes": grpc.unary_stream_rpc_method_handler(_plain_not_bytes),
    }
    async with _side_by_side(registry, handlers, expose_exception_text=expose,
                             telemetry=TelemetryOptions(registry=metrics, tracing=False)
                             ) as (plain, mesh):
        for name in handlers:
            expected = await _answers(plain, name)
            assert expected == (grpc.StatusCode.UNKNOWN, 1), (name, expected)  # baseline
            assert await _answers(mesh, name) == expected, name

        def handled(name: str, code: str) -> float:
            return metrics.get_sample_value("grpc_server_handled_total", {
                "grpc_service": _SERVICE, "grpc_method": name, "grpc_type": "server_stream",
                "grpc_code": code}) or 0.0

        codes = ("OK", "Unknown", "Canceled")
        await until(lambda: all(sum(handled(n, c) for c in codes) >= 1 for n in handlers),
                    timeout_s=5, what="both calls counted")
        assert {n: tuple(handled(n, c) for c in codes) for n in handlers} == dict.fromkeys(
            handlers, (0.0, 1.0, 0.0))
