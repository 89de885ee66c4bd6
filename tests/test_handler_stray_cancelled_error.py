"""A handler whose own code raises ``asyncio.CancelledError`` while its call is not cancelled.

A handler awaiting something another task cancelled (a shared future, a task a pool
closed, a connection its library tore down) gets ``asyncio.CancelledError`` although
nobody cancelled its call. grpc.aio takes any ``CancelledError`` out of a handler for the
call's own cancellation and sends nothing: the caller waited until its deadline (for ever
without one) and telemetry counted the call ``CANCELLED``. The handler wrap now tells a
stray one (the call's task is not being cancelled: ``Task.cancelling()`` is 0) from the
call's cancellation and answers it as any unhandled exception
(:class:`meshkit._handlers.EscapedCancelledError`): ``UNKNOWN`` at once, after the
messages already sent on a stream; a cancellation of the call itself is left as it was."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog

import meshkit
from meshkit.discovery import LocalRegistry


async def _cancelled_by_another(request: bytes, context: Any) -> bytes:
    loop = asyncio.get_running_loop()
    shared = loop.create_future()
    loop.call_soon(shared.cancel)  # its owner gives up on it
    await shared
    return b"unreached"


async def _raises(request: bytes, context: Any) -> bytes:
    raise asyncio.CancelledError()


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    await _cancelled_by_another(request, context)
    yield b"unreached"


def _plain(request: bytes, context: Any) -> bytes:
    raise asyncio.CancelledError()


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Stray", {
        "Shared": grpc.unary_unary_rpc_method_handler(_cancelled_by_another),
        "Raises": grpc.unary_unary_rpc_method_handler(_raises),
        "Plain": grpc.unary_unary_rpc_method_handler(_plain),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream)}),))


@pytest.mark.parametrize("options", [
    {}, {"telemetry": None}, {"expose_exception_text": True},
    {"telemetry": None, "expose_exception_text": True}],
    ids=["default", "no-telemetry", "exposed", "exposed-no-telemetry"])
@pytest.mark.timeout(60)
async def test_a_stray_cancelled_error_is_answered_unknown_at_once(
    registry: LocalRegistry, options: dict[str, Any],
) -> None:
    srv = meshkit.MeshServer("strayd", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None, **options))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for name in ("Shared", "Raises", "Plain"):
                began = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/t.Stray/{name}")(b"x", timeout=5)
                assert err.value.code() is grpc.StatusCode.UNKNOWN, (name, err.value)
                assert "EscapedCancelledError" in (err.value.details() or ""), name
                assert time.monotonic() - began < 4, name  # answered, not timed out
            began = time.monotonic()
            call = ch.unary_stream("/t.Stray/Stream")(b"x", timeout=5)
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for m in call:
                    got.append(m)
            assert got == [b"first"]
            assert err.value.code() is grpc.StatusCode.UNKNOWN, err.value
            assert time.monotonic() - began < 4
    finally:
        await srv.drain()


@pytest.mark.timeout(60)
async def test_the_calls_own_cancellation_still_cancels_the_handler(
    registry: LocalRegistry,
) -> None:
    """The caller leaving still ends the handler with ``CancelledError`` (not answered)."""
    entered, ended = asyncio.Event(), []

    async def hold(request: bytes, context: Any) -> bytes:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return b"unreached"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Hold", {"Hold": grpc.unary_unary_rpc_method_handler(hold)}),))

    srv = meshkit.MeshServer("holdd", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = ch.unary_unary("/t.Hold/Hold")(b"x", timeout=20)
            await asyncio.wait_for(entered.wait(), 10)
            call.cancel()
            for _ in range(200):
                if ended:
                    break
                await asyncio.sleep(0.02)
            assert ended == ["cancelled"]
    finally:
        await srv.drain()


@pytest.mark.timeout(60)
async def test_a_cancel_by_the_caller_or_the_drain_is_not_taken_for_a_stray_one(
    registry: LocalRegistry,
) -> None:
    """The call's own cancellation (its caller left; the drain's stop cut it after
    ``grace_s``) reaches the handler as ``CancelledError`` with the call's task being
    cancelled: it is never answered or logged as an unhandled ``EscapedCancelledError``
    (which would count a caller's cancel ``UNKNOWN`` and log an error per cancel), for an
    ``async def`` handler, a response stream and a plain-function handler alike."""
    entered: asyncio.Queue[str] = asyncio.Queue()
    release = threading.Event()

    async def hold(request: bytes, context: Any) -> bytes:
        entered.put_nowait("hold")
        await asyncio.sleep(30)
        return b"unreached"

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        entered.put_nowait("stream")
        await asyncio.sleep(30)

    def plain(request: bytes, context: Any) -> bytes:
        loop.call_soon_threadsafe(entered.put_nowait, "plain")
        release.wait(10)
        return b"late"

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Own", {
            "Hold": grpc.unary_unary_rpc_method_handler(hold),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Plain": grpc.unary_unary_rpc_method_handler(plain)}),))

    loop = asyncio.get_running_loop()
    srv = meshkit.MeshServer("ownd", [(add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=0.3, admin=None))
    with structlog.testing.capture_logs() as logs:
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                for name in ("Hold", "Plain"):  # the caller leaves
                    call = ch.unary_unary(f"/t.Own/{name}")(b"x", timeout=20)
                    await asyncio.wait_for(entered.get(), 10)
                    call.cancel()
                    assert await call.code() is grpc.StatusCode.CANCELLED
                release.set()
                scall = ch.unary_stream("/t.Own/Stream")(b"x", timeout=20)
                assert await scall.read() == b"first"
                await asyncio.wait_for(entered.get(), 10)
                scall.cancel()
                # the drain's stop cuts a call still running after grace_s
                held = ch.unary_unary("/t.Own/Hold")(b"x", timeout=20)
                await asyncio.wait_for(entered.get(), 10)
                await srv.drain()
                assert await held.code() is not grpc.StatusCode.UNKNOWN
                await asyncio.sleep(0.2)  # the cancelled tasks' ends, logged or not
        finally:
            release.set()
            await srv.drain()
    stray = [e for e in logs if e.get("error_type") == "EscapedCancelledError"
             or "EscapedCancelledError" in repr(e.get("exc_info"))]
    assert stray == []
