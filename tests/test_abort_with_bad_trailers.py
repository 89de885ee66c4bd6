"""A handler whose ``context.abort()`` raised (its trailing metadata invalid) and let that
exception escape is answered, as grpc.aio answers it, side by side with a plain grpc.aio
server on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from tests.test_server_parity import _m, _side_by_side

_BAD = (("x-order-secret", 7),)  # not str/bytes: grpc.aio's abort raises TypeError


async def _abort_bad(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no order", _BAD)
    return b"unreached"


async def _abort_bad_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.NOT_FOUND, "no order", _BAD)


def _plain_abort_bad(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no order", _BAD)
    return b"unreached"


def _plain_abort_bad_stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield b"first"
    context.abort(grpc.StatusCode.NOT_FOUND, "no order", _BAD)


async def _status(ch: grpc.aio.Channel, name: str) -> tuple[grpc.StatusCode, str, list[bytes]]:
    got: list[bytes] = []
    call: Any
    if name.endswith("Unary"):
        call = ch.unary_unary(_m(name))(b"x", timeout=2)
        with contextlib.suppress(grpc.aio.AioRpcError):
            got.append(await call)
    else:
        call = ch.unary_stream(_m(name))(b"x", timeout=2)
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for message in call:
                got.append(message)
    return await call.code(), await call.details(), got


@pytest.mark.parametrize("expose", [False, True])
@pytest.mark.parametrize("name", ["Unary", "Stream"])
async def test_an_abort_refusing_its_trailing_metadata_is_answered_not_left_open(
    registry: LocalRegistry, name: str, expose: bool,
) -> None:
    """``context.abort(code, details, trailing_metadata)`` with a trailer grpc.aio refuses
    (an ``int`` value) raises ``TypeError`` having marked the call aborted but sent
    nothing; escaping the handler, grpc.aio answers it ``UNKNOWN``, and so does meshkit,
    without the trailer's text unless ``expose_exception_text``, instead of leaving the
    call open until its deadline (``DEADLINE_EXCEEDED``)."""
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(_abort_bad),
                "Stream": grpc.unary_stream_rpc_method_handler(_abort_bad_stream)}
    async with _side_by_side(registry, handlers, expose_exception_text=expose) as (
            plain, mesh):
        expected = await _status(plain, name)
        assert expected[0] is grpc.StatusCode.UNKNOWN, expected  # the baseline
        code, details, got = await _status(mesh, name)
        assert (code, got) == (expected[0], expected[2]), details
        if expose:
            assert details == expected[1]
        else:
            assert "x-order-secret" not in details and "TypeError" in details, details


@pytest.mark.parametrize("telemetry", [True, False])
async def test_a_plain_handlers_refused_abort_is_answered_with_and_without_telemetry(
    registry: LocalRegistry, telemetry: bool,
) -> None:
    """The same for plain (``def``) handlers, whose synchronous context's ``abort``
    raises grpc.aio's ``TypeError`` in their thread, and for the wraps with and without
    telemetry: ``UNKNOWN`` as on grpc.aio, the messages sent before it kept."""
    handlers = {"PlainUnary": grpc.unary_unary_rpc_method_handler(_plain_abort_bad),
                "PlainStream": grpc.unary_stream_rpc_method_handler(_plain_abort_bad_stream),
                "Unary": grpc.unary_unary_rpc_method_handler(_abort_bad),
                "Stream": grpc.unary_stream_rpc_method_handler(_abort_bad_stream)}
    options: dict[str, Any] = {} if telemetry else {"telemetry": None}
    async with _side_by_side(registry, handlers, **options) as (plain, mesh):
        for name in handlers:
            expected = await _status(plain, name)
            assert expected[0] is grpc.StatusCode.UNKNOWN, (name, expected)  # the baseline
            code, details, got = await _status(mesh, name)
            assert (code, got) == (expected[0], expected[2]), (name, details)
            assert "x-order-secret" not in details and "TypeError" in details, details
