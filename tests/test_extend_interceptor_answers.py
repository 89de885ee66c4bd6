"""A unary call a per-call ``ClientInterceptor`` answers itself: from a cache without
``proceed``, or with a fallback after ``proceed`` failed.

The ``await`` gave the interceptor's response, but the call object said otherwise:
without ``proceed``, ``code()`` was ``CANCELLED`` (and ``cancelled()`` false); after a
failed attempt, ``code()``/``details()``/``trailing_metadata()`` were that attempt's
(``NOT_FOUND`` "gone" for a call that returned its fallback). grpc.aio's interceptor
returning its own response gives a call whose code is ``OK`` with empty details.
Real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor

_SVC = "meshkit.test.Answers"


def _add() -> tuple[Any, None]:
    async def gone(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("x-failed", "1"),))
        await context.abort(grpc.StatusCode.NOT_FOUND, "gone")

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "Gone": grpc.unary_unary_rpc_method_handler(gone)})
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _Fallback(ClientInterceptor):
    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        try:
            return await proceed(details, request)
        except grpc.aio.AioRpcError:
            return b"fallback"


class _Cache(ClientInterceptor):
    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        return b"cached"


class _FallbackAio(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError:
            return b"fallback"
        return call


@pytest.fixture
async def server(registry: LocalRegistry) -> AsyncIterator[meshkit.MeshServer]:
    srv = meshkit.MeshServer("answersd", [_add()], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="a1",
                                                          drain_delay_s=0.0, admin=None))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.drain()


async def _outcome(call: Any) -> tuple[Any, ...]:
    trailing = await call.trailing_metadata()
    return (await call.code(), await call.details(),
            ("x-failed", "1") in tuple(trailing or ()), call.cancelled(), call.done())


async def test_grpc_aio_reports_an_interceptors_fallback_as_ok(
        server: meshkit.MeshServer) -> None:
    """The behaviour compared with."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                         interceptors=[_FallbackAio()]) as ch:
        call = ch.unary_unary(f"/{_SVC}/Gone")(b"", timeout=5)
        assert await call == b"fallback"
        assert await _outcome(call) == (grpc.StatusCode.OK, "", False, False, True)


@pytest.mark.parametrize("inline", ["1", "0"])
@pytest.mark.parametrize("interceptor", [_Fallback, _Cache])
async def test_a_call_an_interceptor_answered_itself_reports_ok(
        registry: LocalRegistry, server: meshkit.MeshServer, inline: str,
        interceptor: type[ClientInterceptor], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    opts = meshkit.DialOptions(insecure=True, interceptors=(interceptor(),))
    async with meshkit.dial("answersd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        async with asyncio.timeout(10):
            call = ch.unary_unary(f"/{_SVC}/Gone")(b"", timeout=5)
            assert await call in (b"fallback", b"cached")
            assert await _outcome(call) == (grpc.StatusCode.OK, "", False, False, True)
            # a call awaited after it ran in a task of its own: the same
            later = ch.unary_unary(f"/{_SVC}/Gone")(b"", timeout=5)
            await asyncio.sleep(0.05)
            assert await later in (b"fallback", b"cached")
            assert await _outcome(later) == (grpc.StatusCode.OK, "", False, False, True)
