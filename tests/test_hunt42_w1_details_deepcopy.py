"""A per-call ``ClientInterceptor`` that hands ``proceed`` a *deep* copy of the call's
details failed every call with ``TypeError: cannot pickle '_thread.lock' object``.

``copy.deepcopy(details)`` is how an interceptor gets metadata of its own to change
without touching the caller's list (grpc.aio's ``ClientCallDetails``, a namedtuple of
plain values, deep-copies). meshkit's details also hold the call's runtime records: the
channel's per-method plan (``codec``), telemetry's record (``messages``), the attempt's
grpc call (``last_call``), which hold locks and cannot be copied, so the interceptor's
first line raised, on every call. Now ``copy.deepcopy`` makes the copy ``copy.copy``
makes (the runtime records shared: what the attempt records reaches the call object, as
for a shallow copy) with a deep copy of the metadata, which the interceptor may change
freely. Real servers on loopback."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import RequestSerializationError
from meshkit.interceptors import CallKind, ClientCallDetails, ClientInterceptor

_SVC = "w1.Deep"
_SEEN: list[tuple[str, ...]] = []


def _add() -> tuple[Any, None]:
    def stamps(context: Any) -> None:
        _SEEN.append(tuple(v for k, v in context.invocation_metadata() if k == "x-stamp"))

    async def one(request: bytes, context: Any) -> bytes:
        stamps(context)
        await context.send_initial_metadata((("x-initial", "i"),))
        context.set_trailing_metadata((("x-trailing", "t"),))
        return b"ok:" + request

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        stamps(context)
        return b"ok:" + b"".join([r async for r in requests])

    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        stamps(context)
        async for r in requests:
            yield r

    handler = grpc.method_handlers_generic_handler(_SVC, {
        "One": grpc.unary_unary_rpc_method_handler(one),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    })
    return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _DeepCopying(ClientInterceptor):
    def __init__(self) -> None:
        self.callers: list[list[tuple[str, Any]]] = []

    def _mine(self, details: ClientCallDetails) -> ClientCallDetails:
        self.callers.append(details.metadata)
        mine = copy.deepcopy(details)
        mine.metadata.append(("x-stamp", "1"))
        return mine

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: Any) -> Any:
        return await proceed(self._mine(details), request)

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: Any) -> Any:
        return await proceed(self._mine(details), request)


@pytest.fixture
async def server(registry: LocalRegistry) -> AsyncIterator[None]:
    srv = meshkit.MeshServer("deepd", [_add()], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="d1",
                                                          drain_delay_s=0.0, admin=None))
    await srv.start()
    try:
        yield None
    finally:
        await srv.drain()


def test_a_deep_copy_has_metadata_of_its_own_and_shares_the_call_records() -> None:
    details = ClientCallDetails(service="s", method="/p.S/M", kind=CallKind.UNARY_UNARY,
                                timeout_s=5.0, metadata=[("x-a", "1")])
    details.codec = object()
    mine = copy.deepcopy(details)
    mine.metadata.append(("x-b", "2"))
    assert details.metadata == [("x-a", "1")]
    assert mine.codec is details.codec and mine.attempts is details.attempts
    assert mine.deadline == details.deadline and mine.kind is CallKind.UNARY_UNARY
    err = RequestSerializationError("/p.S/M", "x")
    mine.codec_error = err
    assert details.codec_error is err


@pytest.mark.timeout(30)
async def test_calls_proceeded_with_a_deep_copy_of_their_details_run(
        registry: LocalRegistry, server: None) -> None:
    icpt = _DeepCopying()
    opts = meshkit.DialOptions(insecure=True, interceptors=(icpt,))
    async with meshkit.dial("deepd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        async with asyncio.timeout(10):
            _SEEN.clear()
            md = (("x-caller", "c"),)
            one = ch.unary_unary(f"/{_SVC}/One")(b"a", timeout=5, metadata=md)
            assert await one == b"ok:a"
            assert await one.code() is grpc.StatusCode.OK
            assert ("x-trailing", "t") in tuple(await one.trailing_metadata())
            up = ch.stream_unary(f"/{_SVC}/Upload")(iter([b"b", b"c"]), timeout=5,
                                                   metadata=md)
            assert await up == b"ok:bc"
            got = [m async for m in ch.stream_stream(f"/{_SVC}/Echo")(
                iter([b"d"]), timeout=5, metadata=md)]
            assert got == [b"d"]
            assert _SEEN == [("1",)] * 3
            # the caller's metadata is as it gave it
            assert all(m == [("x-caller", "c")] for m in icpt.callers), icpt.callers


@pytest.mark.timeout(30)
async def test_a_stream_proceeded_with_a_deep_copy_reports_its_refused_request(
        registry: LocalRegistry, server: None) -> None:
    def refusing(message: str) -> bytes:
        if message == "bad":
            raise ValueError("cannot serialize")
        return message.encode()

    async def requests() -> AsyncIterator[str]:
        yield "ok"
        await asyncio.sleep(0.05)
        yield "bad"

    opts = meshkit.DialOptions(insecure=True, interceptors=(_DeepCopying(),))
    async with meshkit.dial("deepd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        async with asyncio.timeout(10):
            call = ch.stream_stream(f"/{_SVC}/Echo", request_serializer=refusing)(
                requests(), timeout=5)
            with pytest.raises(RequestSerializationError):
                async for _m in call:
                    pass
            assert await call.code() is grpc.StatusCode.INTERNAL
