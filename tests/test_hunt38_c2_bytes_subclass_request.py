"""A request that is a ``bytes`` subclass (``numpy.bytes_``, a ``bytes`` subclass of the
application's), or a request serializer that returns one, is sent as its bytes.

meshkit's checks take a ``bytes`` subclass for bytes (a method without a serializer "sends
bytes", a serializer must return bytes), but grpc.aio sends only exact ``bytes``: a unary
call raised grpc.aio's bare ``TypeError`` "Argument 'request' has incorrect type (expected
bytes, got B)", and a client stream failed ``UNAVAILABLE`` "call to 'echo' cut: its
endpoint left and drain_timeout_s ran out" (grpc.aio's request consumer raised, the
attempt was cancelled, the endpoint blamed). Now the mesh hands grpc its bytes
(``bytes(message)``, only for such a message), for every call kind, iterated or
written, with and without attempt interceptors."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method


class _Bytes(bytes):
    pass


def _serializer(message: bytes) -> bytes:
    return _Bytes(message)


@pytest.mark.parametrize("attempts", [{}, {"attempt_interceptors": (PassAll(),)}],
                         ids=["in-mesh", "attempt-interceptors"])
@pytest.mark.parametrize("how", ["message", "serializer"])
@pytest.mark.timeout(60)
async def test_a_bytes_subclass_request_is_sent_as_bytes(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any],
    how: str,
) -> None:
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, retry=None, **attempts)
    codecs: dict[str, Any] = {"request_serializer": _serializer} if how == "serializer" else {}

    def req(data: bytes) -> bytes:
        return data if how == "serializer" else _Bytes(data)

    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        assert await ch.unary_unary(method("Unary"), **codecs)(req(b"x"), timeout=10) == \
            b"e1|x"
        got = [m async for m in ch.unary_stream(method("ServerStream"), **codecs)(
            req(b"2"), timeout=10)]
        assert len(got) == 2
        upload = ch.stream_unary(method("ClientStream"), **codecs)
        assert await upload(iter([req(b"a"), req(b"b")]), timeout=10) == b"e1|a,b"
        bidi = ch.stream_stream(method("Bidi"), **codecs)
        assert [m async for m in bidi(iter([req(b"a")]), timeout=10)] == [b"e1|a"]
        chat = bidi(timeout=10)
        await chat.write(req(b"w"))
        assert await chat.read() == b"e1|w"
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
        (endpoint,) = ch.stats().endpoints
        assert endpoint.failures == 0, endpoint
