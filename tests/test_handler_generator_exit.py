"""A handler whose own code raises ``GeneratorExit`` is answered, not left open.

``GeneratorExit`` is a ``BaseException``: grpc.aio answers only ``Exception`` s of a
handler (``UNKNOWN``) and takes a ``CancelledError`` for the call's cancellation, so a
``GeneratorExit`` out of an ``async def`` unary handler, a plain-function unary handler
(it escaped its thread's job) or an async response stream (after its first messages)
ended the call's task with nothing sent: the caller waited until its deadline (for ever
without one), holding the call's slot. (A synchronous response stream's was answered
already: :class:`meshkit._handlers.EscapedGeneratorExit`.) The handler wraps now answer
one the handler's code raised (it came up from below the wrap) as any unhandled
exception, :class:`~meshkit._handlers.EscapedGeneratorExit` (``UNKNOWN``), after a
stream's messages; one thrown into the wrap itself (grpc.aio closing a response stream's
generator) goes on as before."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import LocalRegistry


async def _unary(request: bytes, context: Any) -> bytes:
    raise GeneratorExit("the handler's own")


def _plain(request: bytes, context: Any) -> bytes:
    raise GeneratorExit("the handler's own")


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise GeneratorExit("the handler's own")


async def _held(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    for _ in range(1000):  # held at a yield by flow control: the caller reads no more
        yield b"x" * 65536


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Exit", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Plain": grpc.unary_unary_rpc_method_handler(_plain),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Held": grpc.unary_stream_rpc_method_handler(_held)}),))


@pytest.mark.parametrize("options", [
    {}, {"telemetry": None}, {"expose_exception_text": True},
    {"telemetry": None, "expose_exception_text": True}],
    ids=["default", "no-telemetry", "exposed", "exposed-no-telemetry"])
@pytest.mark.timeout(60)
async def test_a_handlers_own_generator_exit_is_answered_unknown_at_once(
    registry: LocalRegistry, options: dict[str, Any],
) -> None:
    srv = meshkit.MeshServer("exitd", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None, **options))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for name in ("Unary", "Plain"):
                began = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/t.Exit/{name}")(b"x", timeout=5)
                assert err.value.code() is grpc.StatusCode.UNKNOWN, (name, err.value)
                assert "EscapedGeneratorExit" in (err.value.details() or ""), name
                assert time.monotonic() - began < 4, name  # answered, not timed out
            began = time.monotonic()
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for m in ch.unary_stream("/t.Exit/Stream")(b"x", timeout=5):
                    got.append(m)
            assert got == [b"first"]
            assert err.value.code() is grpc.StatusCode.UNKNOWN, err.value
            assert time.monotonic() - began < 4
    finally:
        await srv.drain()


@pytest.mark.timeout(60)
async def test_a_response_stream_closed_at_its_yield_is_not_answered(
    registry: LocalRegistry,
) -> None:
    """A ``GeneratorExit`` thrown into the wrap at its ``yield`` (its caller left while the
    stream waited on flow control; the generator closed as it is collected) is the
    stream's close, not the handler's: nothing answered, nothing logged."""
    srv = meshkit.MeshServer("exitd", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        with structlog.testing.capture_logs() as logs:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                call = ch.unary_stream("/t.Exit/Held")(b"x", timeout=10)
                assert await call.read() == b"first"
                await asyncio.sleep(0.2)  # the server blocks on flow control
                call.cancel()
                await asyncio.sleep(0.2)
                gc.collect()  # the wrap's generator, left at its yield, closed
                await asyncio.sleep(0.05)
        held = [e for e in logs if "ignored GeneratorExit" in repr(e)
                or (e.get("method") == "/t.Exit/Held" and e["log_level"] == "error")]
        assert held == [], held
    finally:
        await srv.drain()
