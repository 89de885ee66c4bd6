"""A per-call ``ClientInterceptor.intercept_stream`` that raises after ``proceed`` left the
stream it opened running.

An application's streaming interceptor opens the call with ``proceed`` and may look at
it before handing it on: its initial metadata (a server identity header, a version),
its first message. When it then refuses (raises: ``PermissionError("not from that
server")``), or the caller's task is cancelled while it waits, the caller gets the
exception and no call object, so nothing can ever cancel the stream ``proceed`` opened:
it ran on until its deadline (or, without one, for ever), the server's handler kept
running and sending, and the endpoint's ``in_flight`` stayed counted, skewing the P2C
picks towards the other endpoints. (Returning ``None`` or another wrong value already
cancelled the opened calls; raising did not.)

Now every call ``proceed`` opened is cancelled when the interceptor raises (any
exception, ``CancelledError`` included) and the exception goes on as it was. (The
caller's cancellation already reached the opened call through the call object, which
cancels the attempt it last launched: that test passed before and pins it.) Real
grpc.aio servers on loopback, behind ``dial()``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.interceptors import ClientCallDetails, ClientInterceptor, StreamProceed

_SVC = "w1.Endless"


class _Server:
    def __init__(self) -> None:
        self.running = 0
        self.started = asyncio.Event()
        self.cancelled = 0

    async def endless(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.running += 1
        self.started.set()
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def echo(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.running += 1
        self.started.set()
        try:
            async for r in requests:
                yield r
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(_SVC, {
            "Endless": grpc.unary_stream_rpc_method_handler(self.endless),
            "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
        })


class _RefuseAfterLooking(ClientInterceptor):
    """Opens the call, reads its initial metadata, then refuses it."""

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: StreamProceed) -> Any:
        call = await proceed(details, request)
        await call.initial_metadata()
        raise PermissionError("not from that server")


class _WaitAfterOpening(ClientInterceptor):
    """Opens the call, then waits (for a first message that comes late, say)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: StreamProceed) -> Any:
        call = await proceed(details, request)
        await call.initial_metadata()
        self.opened.set()
        await asyncio.sleep(60)
        return call


async def _served(registry: LocalRegistry, srv: _Server) -> tuple[Any, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((srv.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await registry.register(
        Instance(service="endless", instance_id="e1", host="127.0.0.1", port=port))
    return server, port


async def _until(check: Any, timeout_s: float = 8.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not check():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


def _in_flight(ch: meshkit.MeshChannel) -> list[int]:
    return [e.in_flight for e in ch.stats().endpoints]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("shape", ["unary-stream", "stream-stream"])
async def test_a_stream_its_interceptor_refused_is_cancelled(
    registry: LocalRegistry, shape: str,
) -> None:
    srv = _Server()
    server, _ = await _served(registry, srv)
    try:
        opts = meshkit.DialOptions(insecure=True, interceptors=(_RefuseAfterLooking(),))
        async with meshkit.dial("endless", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            for _ in range(2):
                with pytest.raises(PermissionError, match="not from that server"):
                    if shape == "unary-stream":
                        call = ch.unary_stream(f"/{_SVC}/Endless")(b"", timeout=30)
                    else:
                        call = ch.stream_stream(f"/{_SVC}/Echo")(iter([b"a"]), timeout=30)
                    async for _ in call:
                        pass
            assert srv.started.is_set()
            # the server's handlers end (cancelled), long before the calls' 30 s deadline
            assert await _until(lambda: srv.running == 0), (
                f"{srv.running} refused streams still running on the server")
            assert srv.cancelled == 2
            assert await _until(lambda: _in_flight(ch) == [0]), _in_flight(ch)
    finally:
        await server.stop(None)


@pytest.mark.timeout(40)
async def test_a_stream_opened_by_an_interceptor_the_caller_cancelled_is_cancelled(
    registry: LocalRegistry,
) -> None:
    srv = _Server()
    server, _ = await _served(registry, srv)
    try:
        waiting = _WaitAfterOpening()
        opts = meshkit.DialOptions(insecure=True, interceptors=(waiting,))
        async with meshkit.dial("endless", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)

            async def consume() -> None:
                async for _ in ch.unary_stream(f"/{_SVC}/Endless")(b"", timeout=30):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.wait_for(waiting.opened.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await _until(lambda: srv.running == 0), (
                "the stream stayed running on the server after its caller left")
            assert srv.cancelled == 1
            assert await _until(lambda: _in_flight(ch) == [0]), _in_flight(ch)
    finally:
        await server.stop(None)
