"""``wait_for_connection()`` of a unary-response call reports the call's own outcome, not
its attempt's: grpc.aio's unary call waits for its end and raises its status when it
failed (``if self.done(): await self._raise_for_status()``), and a call an interceptor
answered (its own response after ``proceed`` failed) is connected, ``OK``.

meshkit's asked the attempt the call settled on: a call a per-call interceptor answered
with a fallback after its attempt failed ``NOT_FOUND`` raised that ``NOT_FOUND`` from
``wait_for_connection()`` though the ``await`` gave the fallback and ``code()`` says
``OK`` (grpc.aio's own interceptor's fallback returns); a call whose answer the mesh
refused (its response deserializer raised: ``INTERNAL``, as the ``await``) returned as
if connected and well. Real servers on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor
from tests.support.echo import handler, method, raw_server


class _Fallback(ClientInterceptor):
    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        try:
            return await proceed(details, request)
        except grpc.aio.AioRpcError:
            return b"fallback"


class _FallbackAio(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError:
            return b"fallback"
        return call


def _refuse(data: bytes) -> bytes:
    raise ValueError("not a message")


async def _outcome(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, 10)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "connected"


@pytest.mark.parametrize("inline", ["1", "0"])
async def test_wait_for_connection_of_a_call_an_interceptor_answered(
        registry: LocalRegistry, inline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             interceptors=[_FallbackAio()]) as raw:
            call = raw.unary_unary(method("Fail"))(b"NOT_FOUND")
            assert await call == b"fallback"
            expected = await _outcome(call.wait_for_connection())
        assert expected == "connected"
        async with meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(
                insecure=True, interceptors=[_Fallback()])) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_unary(method("Fail"))(b"NOT_FOUND")
            assert await call == b"fallback"
            assert await _outcome(call.wait_for_connection()) == expected
            assert await call.code() is grpc.StatusCode.OK
            # asked first, before the await: the same
            call = ch.unary_unary(method("Fail"))(b"NOT_FOUND")
            assert await _outcome(call.wait_for_connection()) == expected
            assert await call == b"fallback"


@pytest.mark.parametrize("inline", ["1", "0"])
async def test_wait_for_connection_of_a_call_whose_answer_was_refused(
        registry: LocalRegistry, inline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    async with raw_server(handler("e1")) as (_server, port):
        await registry.register(
            Instance(service="echo", instance_id="e1", host="127.0.0.1", port=port))
        async with meshkit.dial("echo", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as ch:
            await ch.wait_for_endpoints(1)
            call = ch.unary_unary(method("Unary"), response_deserializer=_refuse)(b"x")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call
            assert failed.value.code() is grpc.StatusCode.INTERNAL
            assert await _outcome(call.wait_for_connection()) == "INTERNAL"
            # a failed call's status, as grpc.aio's wait_for_connection of a failed call
            call = ch.unary_unary(method("Fail"))(b"NOT_FOUND")
            assert await _outcome(call.wait_for_connection()) == "NOT_FOUND"
