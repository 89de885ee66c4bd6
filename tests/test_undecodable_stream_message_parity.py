"""A request stream's message that does not decode reaches the handler as the exception
its deserializer raised (``google.protobuf.message.DecodeError`` for a protobuf message),
as on a plain grpc.aio server, side by side on loopback (see tests/test_server_parity.py);
one the handler lets escape is still answered ``INVALID_ARGUMENT`` by meshkit."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from google.protobuf.message import DecodeError

from meshkit._limits import UndecodableRequest, _guarded_deserializer
from meshkit.discovery import LocalRegistry
from tests.test_server_parity import _m, _side_by_side

_Str = wrappers_pb2.StringValue
_BAD = b"\xff\xff\xff"  # a truncated tag: DecodeError


def _good(value: str) -> bytes:
    return _Str(value=value).SerializeToString()


async def _read_skipping(requests: Any, context: Any) -> _Str:
    got: list[str] = []
    while True:
        try:
            request = await context.read()
        except DecodeError:
            got.append("bad")
            continue
        if request is grpc.aio.EOF:
            return _Str(value=",".join(got))
        got.append(request.value)


async def _iterate_stopping(requests: Any, context: Any) -> AsyncIterator[_Str]:
    got: list[str] = []
    try:
        async for request in requests:
            got.append(request.value)
    except DecodeError:
        got.append("stopped")
    yield _Str(value=",".join(got))


def _plain_iterate_stopping(requests: Iterator[Any], context: Any) -> _Str:
    got: list[str] = []
    try:
        for request in requests:
            got.append(request.value)
    except DecodeError:
        got.append("stopped")
    return _Str(value=",".join(got))


async def _escaping(requests: Any, context: Any) -> _Str:
    async for _ in requests:
        pass
    return _Str(value="unreached")


def _handler(kind: Any, behaviour: Any) -> grpc.RpcMethodHandler:
    return kind(behaviour, request_deserializer=_Str.FromString,
                response_serializer=_Str.SerializeToString)


_HANDLERS = {
    "ReadSkipping": _handler(grpc.stream_unary_rpc_method_handler, _read_skipping),
    "IterateStopping": _handler(grpc.stream_stream_rpc_method_handler, _iterate_stopping),
    "PlainIterateStopping": _handler(grpc.stream_unary_rpc_method_handler,
                                     _plain_iterate_stopping),
    "Escaping": _handler(grpc.stream_unary_rpc_method_handler, _escaping),
}


async def _call(ch: grpc.aio.Channel, name: str) -> tuple[grpc.StatusCode, str, str]:
    requests = [_good("a"), _BAD, _good("c")]
    if name != "ReadSkipping":
        # the other handlers answer at the bad message, never reading on: a write of
        # "c" in flight as that answer came in could end the call grpc.aio's own
        # client-side INTERNAL "Internal error from Core" (a write racing the status)
        requests = requests[:2]
    call: Any
    if _HANDLERS[name].response_streaming:
        call = ch.stream_stream(_m(name))(iter(requests), timeout=5)
    else:
        call = ch.stream_unary(_m(name))(iter(requests), timeout=5)
    values: list[str] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        if _HANDLERS[name].response_streaming:
            async for response in call:
                values.append(_Str.FromString(response).value)
        else:
            values.append(_Str.FromString(await call).value)
    return await call.code(), await call.details(), "|".join(values)


@pytest.mark.parametrize("telemetry", [True, False])
async def test_an_undecodable_stream_message_is_the_deserializers_exception(
    registry: LocalRegistry, telemetry: bool,
) -> None:
    """A handler catching ``DecodeError`` from ``context.read()`` or its request iterator
    (async or plain) answers as on grpc.aio, and one that lets it escape gets meshkit's
    ``INVALID_ARGUMENT`` "request is not a valid google.protobuf.StringValue"."""
    options: dict[str, Any] = {} if telemetry else {"telemetry": None}
    async with _side_by_side(registry, _HANDLERS, **options) as (plain, mesh):
        for name in ("ReadSkipping", "IterateStopping", "PlainIterateStopping"):
            expected = await _call(plain, name)
            assert expected[0] is grpc.StatusCode.OK, (name, expected)
            assert await _call(mesh, name) == expected, name
        assert await _call(plain, "ReadSkipping") == (grpc.StatusCode.OK, "", "a,bad,c")
        code, details, _ = await _call(mesh, "Escaping")
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                   "request is not a valid google.protobuf.StringValue")


def test_the_exception_keeps_the_deserializers_type_and_attributes() -> None:
    """The guarded stream deserializer raises an ``UndecodableRequest`` that is also the
    deserializer's exception type, with its args and attributes (a ``JSONDecodeError``'s
    ``pos``), chained to it; a type it cannot subclass gives a plain
    ``UndecodableRequest``."""
    decode = _guarded_deserializer(json.loads, True, "request message")
    with pytest.raises(json.JSONDecodeError) as caught:
        decode(b"{oops")
    exc = caught.value
    assert isinstance(exc, UndecodableRequest)
    assert isinstance(exc.__cause__, json.JSONDecodeError)
    assert (exc.args, exc.pos, exc.msg) == (exc.__cause__.args, 1, exc.__cause__.msg)
    with pytest.raises(UnicodeDecodeError) as unicode_caught:
        _guarded_deserializer(bytes.decode, True, "request message")(b"\xff")
    assert isinstance(unicode_caught.value, UndecodableRequest)
    assert unicode_caught.value.start == 0

    class _Formatting(ValueError):
        def __init__(self, data: object) -> None:
            super().__init__(f"bad: {data!r}")

    def formatting(data: bytes) -> Any:
        raise _Formatting(data)

    with pytest.raises(_Formatting) as formatted:
        _guarded_deserializer(formatting, True, "request message")(b"x")
    assert formatted.value.args == ("bad: b'x'",)

    class _Final(Exception):
        def __init_subclass__(cls, **kwargs: Any) -> None:
            raise TypeError("final")

    def refuse(data: bytes) -> Any:
        raise _Final("no")

    with pytest.raises(UndecodableRequest) as plain_caught:
        _guarded_deserializer(refuse, True, "request message")(b"x")
    assert type(plain_caught.value) is UndecodableRequest
    assert isinstance(plain_caught.value.__cause__, _Final)
