"""A per-call ``ClientInterceptor.intercept_stream`` that returns an async iterator over
the call's responses (an async generator transforming or logging each message) in place
of the call ``proceed`` returned.

grpc.aio takes that from a response-streaming client interceptor ("the RPC Call or an
asynchronous iterator": ``UnaryStreamCallResponseIterator``, the call's status, metadata
and cancel being the call's, its messages the iterator's). Through ``dial()`` with its
default telemetry the call failed ``AttributeError: 'async_generator' object has no
attribute 'add_done_callback'`` before a message was read, and an interceptor returning
``None`` (it forgot the ``return``) failed with the same riddle and left the stream it
opened running on the server. Real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor

_SVC = "meshkit.test.Upper"


class _Service:
    def __init__(self) -> None:
        self.endless_ended = asyncio.Event()
        self.endless_outcome: list[str] = []

    async def three(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield request + b"%d" % i

    async def echo(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r

    async def endless(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.endless_outcome.append("cancelled")
            raise
        finally:
            self.endless_ended.set()

    def add(self) -> tuple[Any, None]:
        handler = grpc.method_handlers_generic_handler(_SVC, {
            "Three": grpc.unary_stream_rpc_method_handler(self.three),
            "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
            "Endless": grpc.unary_stream_rpc_method_handler(self.endless),
        })
        return (lambda _servicer, server: server.add_generic_rpc_handlers((handler,))), None


class _Upper(ClientInterceptor):
    """Returns an async generator over the call's responses, upper-cased."""

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: Any) -> Any:
        call = await proceed(details, request)

        async def upper() -> AsyncIterator[bytes]:
            async for message in call:
                yield message.upper()

        return upper()


class _Forgets(ClientInterceptor):
    """Opens the call, reads its first message (the server's handler runs) and forgets
    to return it."""

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: Any) -> Any:
        call = await proceed(details, request)
        await call.read()
        return None


@pytest.fixture
async def service(registry: LocalRegistry) -> AsyncIterator[_Service]:
    svc = _Service()
    srv = meshkit.MeshServer("upperd", [svc.add()], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, instance_id="u1",
                                                          drain_delay_s=0.0, admin=None))
    await srv.start()
    try:
        yield svc
    finally:
        await srv.drain()


@pytest.mark.parametrize("telemetry", ["default", "off"])
async def test_an_iterator_returned_by_intercept_stream_is_the_calls_messages(
        registry: LocalRegistry, service: _Service, telemetry: str) -> None:
    """Iteration and ``read()`` give the iterator's messages; the status, metadata and
    ``write()``/``done_writing()`` are the call's, as grpc.aio's response iterator call."""
    kw: dict[str, Any] = {} if telemetry == "default" else {"telemetry": None}
    opts = meshkit.DialOptions(insecure=True, interceptors=(_Upper(),), **kw)
    async with meshkit.dial("upperd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        async with asyncio.timeout(5):
            call = ch.unary_stream(f"/{_SVC}/Three")(b"a", timeout=5)
            assert [m async for m in call] == [b"A0", b"A1", b"A2"]
            assert await call.code() is grpc.StatusCode.OK
            call = ch.unary_stream(f"/{_SVC}/Three")(b"b", timeout=5)
            read = [await call.read() for _ in range(4)]
            assert read == [b"B0", b"B1", b"B2", grpc.aio.EOF]
            bidi = ch.stream_stream(f"/{_SVC}/Echo")(timeout=5)
            await bidi.write(b"x")
            assert await bidi.read() == b"X"
            await bidi.write(b"y")
            await bidi.done_writing()
            assert [m async for m in bidi] == [b"Y"]
            assert await bidi.code() is grpc.StatusCode.OK
            assert await bidi.initial_metadata() is not None


async def test_a_cancel_of_an_iterated_call_reaches_the_server(
        registry: LocalRegistry, service: _Service) -> None:
    """``cancel()`` of such a call cancels the stream under the iterator."""
    opts = meshkit.DialOptions(insecure=True, interceptors=(_Upper(),))
    async with meshkit.dial("upperd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(f"/{_SVC}/Endless")(b"", timeout=10)
        async with asyncio.timeout(5):
            assert await call.read() == b"TICK"
            assert call.cancel()
            await service.endless_ended.wait()
        assert service.endless_outcome == ["cancelled"]
        assert call.cancelled()


async def test_an_interceptor_returning_none_fails_the_call_clearly_and_cancels_it(
        registry: LocalRegistry, service: _Service) -> None:
    """``None`` (neither a call nor an async iterator) fails the call with a
    ``TypeError`` naming the interceptor, and the stream it opened is cancelled (it ran
    on until its deadline)."""
    opts = meshkit.DialOptions(insecure=True, interceptors=(_Forgets(),))
    async with meshkit.dial("upperd", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        call = ch.unary_stream(f"/{_SVC}/Endless")(b"", timeout=20)
        async with asyncio.timeout(5):
            with pytest.raises(TypeError, match=r"_Forgets.*returned None"):
                await call.read()
            await service.endless_ended.wait()
        assert service.endless_outcome == ["cancelled"]
