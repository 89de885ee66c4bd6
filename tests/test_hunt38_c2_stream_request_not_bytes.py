"""A request message that is not ``bytes`` on a client- or bidi-streaming method without a
``request_serializer`` is the caller's error, as for a unary request.

A unary request of such a method that is no ``bytes`` fails before the pick,
``RequestSerializationError`` (``INTERNAL``) "... a method without a request_serializer
sends bytes, got str". A stream's message was handed to grpc.aio as it was: grpc.aio's
request consumer raised ``TypeError`` and cancelled the attempt, and the call failed
``UNAVAILABLE`` "call to 'echo' cut: its endpoint left and drain_timeout_s ran out" (a
stream-unary call, also one written with ``write()``; retryable, blaming a healthy
endpoint), or a stream-stream call's ``write()`` raised grpc.aio's bare ``TypeError`` and
left the call open. A ``None`` was sent as an empty message (grpc.aio's), where a unary
``None`` is refused. Now each ends the call ``INTERNAL`` with the unary request's error,
nothing sent, the endpoint not blamed, with and without attempt interceptors.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import RequestSerializationError
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method

_BAD = {"str": "text", "int": 5, "None": None, "bytearray": bytearray(b"q")}


def _sync(bad: Any) -> Iterator[Any]:
    yield b"a"
    yield bad


async def _async(bad: Any) -> AsyncIterator[Any]:
    yield b"a"
    yield bad


def _expected(err: Any, bad: Any) -> None:
    assert isinstance(err, RequestSerializationError), repr(err)
    assert err.code() is grpc.StatusCode.INTERNAL
    assert err.details() == (
        "/meshkit.test.Echo/{}: request could not be serialized: a method without a "
        f"request_serializer sends bytes, got {type(bad).__name__}").format(
            "ClientStream" if "ClientStream" in (err.details() or "") else "Bidi")


@pytest.mark.parametrize("attempts", [{}, {"attempt_interceptors": (PassAll(),)}],
                         ids=["in-mesh", "attempt-interceptors"])
@pytest.mark.timeout(90)
async def test_a_stream_message_that_is_not_bytes_is_the_callers_error(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any],
) -> None:
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, **attempts)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        upload = ch.stream_unary(method("ClientStream"))
        bidi = ch.stream_stream(method("Bidi"))
        unary = ch.unary_unary(method("Unary"))
        for name, bad in _BAD.items():
            with pytest.raises(grpc.aio.AioRpcError) as unary_err:  # the reference
                await unary(bad, timeout=10)
            assert isinstance(unary_err.value, RequestSerializationError), name
            for make in (_sync, _async):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await upload(make(bad), timeout=10)
                _expected(err.value, bad)
                call = bidi(make(bad), timeout=10)
                got: list[bytes] = []
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for message in call:
                        got.append(message)
                _expected(err.value, bad)
                assert await call.code() is grpc.StatusCode.INTERNAL, name
            # written, not iterated
            written = upload(timeout=10)
            await written.write(b"a")
            with contextlib.suppress(Exception):  # taken (and refused) after the write
                await written.write(bad)
                await written.done_writing()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await written
            _expected(err.value, bad)
            chat = bidi(timeout=10)
            await chat.write(b"a")
            with pytest.raises(RequestSerializationError) as refused:
                await chat.write(bad)
            _expected(refused.value, bad)
            assert await chat.code() is grpc.StatusCode.INTERNAL, name
        # the endpoint was not blamed, and the channel still serves
        (endpoint,) = ch.stats().endpoints
        assert endpoint.failures == 0, endpoint
        assert await upload(iter([b"a", b"b"]), timeout=10) == b"e1|a,b"
