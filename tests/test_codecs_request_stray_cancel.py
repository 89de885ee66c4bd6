"""A request iterator whose own code raised ``asyncio.CancelledError`` is the caller's error.

A client- or bidi-streaming call's async request generator that awaits something another
task cancelled (a queue's producer gone, a shared future given up on) raises
``CancelledError`` though nobody cancelled the call. It escaped the mesh's serializing
generator (which turned only ``Exception`` s into the call's
:class:`~meshkit.errors.RequestIteratorError`), grpc.aio's request consumer ended on it
and cancelled the call, and the caller got ``MeshRpcError(CANCELLED)`` "... cancelled:
the channel was closed or its endpoint left", blaming the channel (a plain grpc.aio call
raises a bare ``CancelledError`` in a task nobody cancelled). Such a stray one (the
consuming task not being cancelled) is now :class:`RequestIteratorError` (``UNKNOWN``,
naming ``CancelledError``, as its ``__cause__``); a cancellation of the call itself still
cancels it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import RequestIteratorError
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method


async def _stray() -> AsyncIterator[bytes]:
    yield b"a"
    loop = asyncio.get_running_loop()
    given_up = loop.create_future()
    loop.call_soon(given_up.cancel)  # its owner cancels it
    await given_up
    yield b"unreached"


@pytest.mark.parametrize("attempts", [{}, {"attempt_interceptors": (PassAll(),)}],
                         ids=["in-mesh", "attempt-interceptors"])
@pytest.mark.timeout(60)
async def test_a_request_generators_stray_cancelled_error_fails_the_call_as_its_own(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any],
) -> None:
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, retry=None, **attempts)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        with pytest.raises(RequestIteratorError) as err:
            await ch.stream_unary(method("ClientStream"))(_stray(), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNKNOWN
        assert "CancelledError" in (err.value.details() or "")
        assert isinstance(err.value.__cause__, asyncio.CancelledError)
        call = ch.stream_stream(method("Bidi"))(_stray(), timeout=10)
        with pytest.raises(RequestIteratorError):
            async for _ in call:
                pass
        assert await call.code() is grpc.StatusCode.UNKNOWN

        # the caller's own cancellation of a call whose generator waits still cancels it
        async def slow() -> AsyncIterator[bytes]:
            yield b"a"
            await asyncio.sleep(30)
            yield b"unreached"

        upload = asyncio.ensure_future(
            ch.stream_unary(method("ClientStream"))(slow(), timeout=20))
        await asyncio.sleep(0.2)
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload


@pytest.mark.timeout(60)
async def test_a_call_cancelled_or_closed_while_its_generator_waits_is_cancelled(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    """The call's own cancellation reaches its request generator as ``CancelledError``
    with the consuming task being cancelled: ``call.cancel()`` on a stream, or its
    channel closed, while the generator waits for its next message, still ends the call
    ``CANCELLED``, never the generator's :class:`RequestIteratorError`."""
    await echo_servers("e1")
    waiting = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a"
        waiting.set()
        await asyncio.sleep(30)
        yield b"unreached"

    opts = meshkit.DialOptions(insecure=True, retry=None)
    ch = meshkit.dial("echo", registry=registry, options=opts)
    try:
        call = ch.stream_stream(method("Bidi"))(slow(), timeout=20)
        assert await asyncio.wait_for(call.read(), 10) == b"e1|a"
        await asyncio.wait_for(waiting.wait(), 10)
        assert call.cancel()
        assert await call.code() is grpc.StatusCode.CANCELLED
        waiting.clear()
        call = ch.stream_stream(method("Bidi"))(slow(), timeout=20)
        assert await asyncio.wait_for(call.read(), 10) == b"e1|a"
        await asyncio.wait_for(waiting.wait(), 10)
    finally:
        await ch.close()
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.wait_for(call.read(), 10)
    assert not isinstance(err.value, RequestIteratorError), err.value
    assert err.value.code() is grpc.StatusCode.CANCELLED, err.value
