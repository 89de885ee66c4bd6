"""A per-call ``ClientInterceptor`` that hands ``proceed`` a copy of the call's details
(``copy.copy(details)`` with its own metadata: the habit of grpc.aio interceptors, whose
``ClientCallDetails`` is a namedtuple changed with ``_replace``).

The call answered, but the unary call object settled on the original details' attempt,
which the copy's attempt never set: ``code()`` said ``CANCELLED`` for a call that
returned its response, and ``initial_metadata()``/``trailing_metadata()`` were empty
(the server sent both). Real servers on loopback."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor

_SVC = "meshkit.test.Copied"


def _add() -> tuple[Any, None]:
    async def one(request: bytes, context: Any) -> bytes:
        await context.send_initial_metadata((("x-initial", "i"),))
        context.set_trailing_metadata((("x-trailing", "t"),))
        return b"ok:" + request

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        got = b"".join([r async for r in requests])
        await context.send_initial_metadata((("x-initial", "i"),))
        context.set_trailing_metadata((("x-trailing", "t"),))
        return b"ok:" + got

    async def missing(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("x-trailing", "t"),))
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "One": grpc.unary_unary_rpc_method_handler(one),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
    })
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _Copying(ClientInterceptor):
    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        mine = copy.copy(details)
        mine.metadata = [*details.metadata, ("x-stamp", "1")]
        return await proceed(mine, request)


@pytest.fixture
async def server(registry: LocalRegistry) -> AsyncIterator[None]:
    srv = meshkit.MeshServer("copyd", [_add()], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="c1",
                                                          drain_delay_s=0.0, admin=None))
    await srv.start()
    try:
        yield None
    finally:
        await srv.drain()


@pytest.mark.parametrize("inline", ["1", "0"])
@pytest.mark.parametrize("telemetry", ["default", "off"])
async def test_a_call_proceeded_with_a_copy_of_its_details_reports_its_attempt(
        registry: LocalRegistry, server: None, inline: str, telemetry: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    kw: dict[str, Any] = {} if telemetry == "default" else {"telemetry": None}
    opts = meshkit.DialOptions(insecure=True, interceptors=(_Copying(),), **kw)
    async with meshkit.dial("copyd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        async with asyncio.timeout(10):
            one = ch.unary_unary(f"/{_SVC}/One")(b"a", timeout=5)
            upload = ch.stream_unary(f"/{_SVC}/Upload")(iter([b"b", b"c"]), timeout=5)
            assert await one == b"ok:a"
            assert await upload == b"ok:bc"
            for call in (one, upload):
                assert await call.code() is grpc.StatusCode.OK
                assert ("x-initial", "i") in tuple(await call.initial_metadata())
                assert ("x-trailing", "t") in tuple(await call.trailing_metadata())
                assert not call.cancelled()
            missing = ch.unary_unary(f"/{_SVC}/Missing")(b"", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await missing
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            assert await missing.code() is grpc.StatusCode.NOT_FOUND
            assert ("x-trailing", "t") in tuple(await missing.trailing_metadata())


class _CopyingStream(ClientInterceptor):
    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: Any) -> Any:
        return await proceed(copy.copy(details), request)


def _refusing_serializer(message: str) -> bytes:
    if message == "bad":
        raise ValueError("cannot serialize")
    return message.encode()


async def test_a_stream_proceeded_with_a_copy_reports_its_refused_request(
        registry: LocalRegistry, server: None) -> None:
    """A request message the method's serializer refuses ends the stream ``INTERNAL``
    (:class:`~meshkit.errors.RequestSerializationError`) as without the interceptor; it
    was ``CANCELLED`` 'stream ... cancelled: the channel was closed or its endpoint
    left', blaming the channel for the caller's message."""
    from meshkit.errors import RequestSerializationError

    async def requests() -> AsyncIterator[str]:
        yield "ok"
        await asyncio.sleep(0.05)
        yield "bad"

    opts = meshkit.DialOptions(insecure=True, interceptors=(_CopyingStream(),))
    async with meshkit.dial("copyd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        async with asyncio.timeout(10):
            call = ch.stream_stream(f"/{_SVC}/Echo", request_serializer=_refusing_serializer)(
                requests(), timeout=5)
            with pytest.raises(RequestSerializationError):
                async for _m in call:
                    pass
            assert await call.code() is grpc.StatusCode.INTERNAL
