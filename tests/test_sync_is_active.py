"""A plain-function handler's ``context.is_active()``, as on a synchronous ``grpc.server``.

gRPC's synchronous ``ServicerContext.is_active()`` "Describes whether the RPC is active
or has terminated", and a synchronous server's streams loop on it
(``while context.is_active(): yield ...``). grpc.aio's synchronous context has none, nor
had meshkit's, so such a handler ported to a ``MeshServer`` failed every call ``UNKNOWN``
(``AttributeError``) before its first message. Now it is ``True`` while the call lives and
``False`` once it ended (its caller left, its deadline passed, it was answered)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry


@pytest.mark.timeout(60)
async def test_is_active_until_the_caller_leaves(registry: LocalRegistry) -> None:
    ended = threading.Event()
    seen: list[bool] = []

    def ticks(request: bytes, context: Any) -> Iterator[bytes]:
        n = 0
        try:
            while context.is_active():
                n += 1
                yield b"%d" % n
                time.sleep(0.01)
        finally:
            seen.append(context.is_active())
            ended.set()

    def unary(request: bytes, context: Any) -> bytes:
        return b"active" if context.is_active() else b"ended"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Active", {
            "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
            "Unary": grpc.unary_unary_rpc_method_handler(unary)}),))

    srv = meshkit.MeshServer("actived", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await ch.unary_unary("/t.Active/Unary")(b"x", timeout=10) == b"active"
            call = ch.unary_stream("/t.Active/Ticks")(b"x", timeout=20)
            assert [await call.read() for _ in range(3)] == [b"1", b"2", b"3"]
            call.cancel()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, ended.wait, 10)
            assert seen == [False]
    finally:
        await srv.drain()
