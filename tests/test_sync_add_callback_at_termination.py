"""A plain-function handler's ``context.add_callback()`` runs when its call ends, however.

gRPC's synchronous API: ``add_callback(callback)`` "Registers a callback to be called on
RPC termination" and returns whether it was registered (``False``: the RPC already
terminated). A synchronous server's handlers use it to learn that their caller left: a
server stream blocked on a queue of events is woken by a callback that puts a sentinel
on it. meshkit's synchronous context (as grpc.aio's) ran the callbacks only after a
unary-response handler *returned*: never for a response stream, nor for a handler that
raised or whose caller left, so such a subscriber stayed blocked in its thread for good
after its caller left (holding the thread and the call's slot: with the default limits,
32 departed subscribers and every call is shed "server busy"), and ``add_callback``
returned ``None``. Now the callbacks run once at the call's end whatever ended it (a
unary handler's after it returned, as before), and one added after the end is refused
(``False``)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry


class _Record:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.done = threading.Event()
        self.late: list[Any] = []


def _servicer(rec: _Record) -> Any:
    def subscribe(request: bytes, context: Any) -> Iterator[bytes]:
        events: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        assert context.add_callback(lambda: events.put(None)) is True
        events.put(b"hello")
        try:
            while (event := events.get(timeout=30)) is not None:
                yield event
            rec.calls.append("subscriber woken")
        finally:
            rec.done.set()

    def wait(request: bytes, context: Any) -> bytes:
        woken = threading.Event()
        context.add_callback(woken.set)
        rec.calls.append(f"woken {woken.wait(30)}")
        rec.late.append(context.add_callback(lambda: rec.calls.append("late ran")))
        rec.done.set()
        return b"unreached"

    def fails(request: bytes, context: Any) -> bytes:
        context.add_callback(lambda: rec.calls.append("fails callback"))
        raise ValueError("boom")

    def answers(request: bytes, context: Any) -> bytes:
        context.add_callback(lambda: rec.calls.append("answers callback"))
        return b"ok"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Cb", {
            "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe),
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
            "Fails": grpc.unary_unary_rpc_method_handler(fails),
            "Answers": grpc.unary_unary_rpc_method_handler(answers)}),))

    return add


@pytest.mark.timeout(60)
async def test_callbacks_run_when_the_call_ends_whatever_ends_it(
    registry: LocalRegistry,
) -> None:
    rec = _Record()
    srv = meshkit.MeshServer("callbackd", [(_servicer(rec), None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    loop = asyncio.get_running_loop()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            # a subscriber whose caller leaves is woken by its callback
            call = ch.unary_stream("/t.Cb/Subscribe")(b"x", timeout=20)
            assert await call.read() == b"hello"
            call.cancel()
            assert await loop.run_in_executor(None, rec.done.wait, 10)
            assert rec.calls == ["subscriber woken"]
            # a unary handler blocked on its callback, its caller gone; one added late
            rec.calls.clear()
            rec.done.clear()
            waiting = ch.unary_unary("/t.Cb/Wait")(b"x", timeout=20)
            await asyncio.sleep(0.2)
            waiting.cancel()
            assert await loop.run_in_executor(None, rec.done.wait, 10)
            assert rec.calls == ["woken True"]
            assert rec.late == [False]
            # a handler that raised
            rec.calls.clear()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/t.Cb/Fails")(b"x", timeout=10)
            assert err.value.code() is grpc.StatusCode.UNKNOWN
            assert rec.calls == ["fails callback"]
            # a handler that answered: once
            rec.calls.clear()
            assert await ch.unary_unary("/t.Cb/Answers")(b"x", timeout=10) == b"ok"
            await asyncio.sleep(0.05)
            assert rec.calls == ["answers callback"]
    finally:
        await srv.drain()
