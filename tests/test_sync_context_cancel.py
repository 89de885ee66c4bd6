"""A plain-function handler's ``context.cancel()``, as on a synchronous ``grpc.server``.

gRPC's synchronous ``ServicerContext.cancel()`` "Cancels the RPC. Idempotent and has no
effect if the RPC has already terminated." grpc.aio's synchronous context has none, nor
had meshkit's: a handler ported from a synchronous server that gave up on its call that
way failed ``UNKNOWN`` (``AttributeError``) instead. Now the call ends ``CANCELLED`` at
once (the handler goes on until it returns, as there; ``is_active()`` is then
``False``, and nothing more is sent)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry


@pytest.mark.timeout(60)
async def test_cancel_ends_the_call_cancelled(registry: LocalRegistry) -> None:
    after: list[Any] = []
    done = threading.Event()

    def unary(request: bytes, context: Any) -> bytes:
        context.cancel()
        context.cancel()  # idempotent
        after.append(context.is_active())
        done.set()
        return b"unsent"

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        context.cancel()
        yield b"unsent"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Cancel", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream)}),))

    srv = meshkit.MeshServer("canceld", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.Cancel/Unary")(b"x", timeout=10)
            assert err.value.code() is grpc.StatusCode.CANCELLED, err.value
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, done.wait, 10)
            assert after == [False]
            got: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for m in ch.unary_stream("/t.Cancel/Stream")(b"x", timeout=10):
                    got.append(m)
            assert err.value.code() is grpc.StatusCode.CANCELLED, err.value
            assert got == [b"first"]
    finally:
        await srv.drain()


@pytest.mark.timeout(60)
async def test_cancel_after_unsendable_trailers_still_ends_the_call(
    registry: LocalRegistry,
) -> None:
    """``cancel()`` after the handler set trailing metadata gRPC cannot send: grpc.aio's
    ``abort`` (which the cancel uses) sends the trailers set before, so a ``str`` under
    a ``-bin`` key left the call open until its deadline (the encoding raised after the
    call was marked answered), and ``grpc-timeout`` aborted the whole process (grpc
    core's CHECK). A cancel sends no trailers (a synchronous ``grpc.server``'s resets
    the stream): they are dropped, the call ends ``CANCELLED`` at once."""
    trailers = {"BinStr": (("x-why-bin", "text"),), "Timeout": (("grpc-timeout", "1S"),)}

    def unary(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata(trailers[request.decode()])
        context.cancel()
        return b"unsent"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Cancel", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary)}),))

    srv = meshkit.MeshServer("canceld", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for name in trailers:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary("/t.Cancel/Unary")(name.encode(), timeout=3)
                assert err.value.code() is grpc.StatusCode.CANCELLED, (name, err.value)
    finally:
        await srv.drain()
