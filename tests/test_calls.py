"""The call objects (meshkit/_calls.py): the grpc.aio call API on every kind of meshkit call,
against real in-process echo servers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.conftest import EchoFactory
from tests.support.echo import method

OK = grpc.StatusCode.OK


def _opts(**kw: Any) -> meshkit.DialOptions:
    return meshkit.DialOptions(insecure=True, **kw)


async def test_unary_call_api_after_success(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """An awaited unary call answers code/details/metadata/done from the answering attempt."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.unary_unary(method("Unary"))(b"x", timeout=5)
        assert not call.done() and not call.cancelled()
        assert await call == b"e1|x"
        assert call.done() and not call.cancelled()
        assert await call.code() is OK
        assert await call.details() in ("", None)
        assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
        assert await call == b"e1|x"  # awaiting again gives the same answer
        assert call.cancel() is False  # already finished
        remaining = call.time_remaining()
        assert remaining is not None and remaining <= 5
        await call.wait_for_connection()
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        await asyncio.sleep(0)
        assert seen == [call]


async def test_unary_call_started_by_an_accessor_runs_in_a_task(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """code() before await starts the call; callbacks added before the end run once."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.unary_unary(method("Unary"))(b"y", timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        assert await call.code() is OK
        assert await call == b"e1|y"
        await asyncio.sleep(0.01)
        assert seen == [call]


async def test_unary_call_failure_status_and_trailers(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A failing unary call raises, and its accessors give the status and the trailers."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_unary(method("Fail"))(b"NOT_FOUND:3", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert await call.code() is grpc.StatusCode.NOT_FOUND
        assert "asked to fail" in await call.details()
        assert ("retry-after", "3") in list(await call.trailing_metadata())
        assert call.done() and not call.cancelled()
        with pytest.raises(grpc.aio.AioRpcError):
            await call  # the same error again


async def test_unary_call_without_endpoint_reports_unavailable(
    registry: LocalRegistry
) -> None:
    """With no endpoint the call settles with the mesh's UNAVAILABLE and no attempt."""
    opts = _opts(retry=None, resolve_timeout_s=0.2)
    async with meshkit.dial("nobody", registry=registry, options=opts) as ch:
        call = ch.unary_unary(method("Unary"))(b"", timeout=2)
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "nobody" in await call.details()
        assert list(await call.trailing_metadata()) == []
        assert list(await call.initial_metadata()) == []
        with pytest.raises(grpc.aio.AioRpcError):
            await call.wait_for_connection()


async def test_unary_call_cancel_in_flight(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """cancel() on a call in flight cancels its attempt; the call ends CANCELLED."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_unary(method("Sleep"))(b"2000", timeout=5)
        task = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.2)
        assert call.cancel() is True
        assert await asyncio.wait_for(task, 3) is grpc.StatusCode.CANCELLED
        assert call.cancelled() and call.done()


async def test_unary_call_cancel_before_it_starts(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A call cancelled before its first step settles as CANCELLED without hanging."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.unary_unary(method("Unary"))(b"", timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        waiter = asyncio.ensure_future(call.code())
        await asyncio.sleep(0)  # the call's task exists, not yet run
        call.cancel()
        assert await asyncio.wait_for(waiter, 3) is grpc.StatusCode.CANCELLED
        assert call.cancelled()
        await asyncio.sleep(0.01)
        assert seen == [call]


async def test_stream_call_api(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """A server stream opens on first use; then every accessor is the attempt's."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"3", timeout=5)
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        assert not call.done()
        got = [m async for m in call]
        assert got == [b"e1|0", b"e1|1", b"e1|2"]
        assert await call.code() is OK
        assert await call.details() in ("", None)
        assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
        await call.wait_for_connection()
        await asyncio.sleep(0.01)
        assert call.done() and not call.cancelled() and seen == [call]
        assert call.cancel() is False
        late: list[Any] = []
        call.add_done_callback(late.append)
        await asyncio.sleep(0.01)
        assert late == [call]


async def test_bidi_call_read_write(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """write/read/done_writing on a stream-stream call made without an iterator."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts()) as ch:
        call = ch.stream_stream(method("Bidi"))(timeout=5)
        await call.write(b"a")
        assert await call.read() == b"e1|a"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is OK


async def test_stream_call_that_cannot_open(registry: LocalRegistry) -> None:
    """A stream with no endpoint: iteration raises UNAVAILABLE, accessors report it."""
    opts = _opts(retry=None, resolve_timeout_s=0.2)
    async with meshkit.dial("nobody", registry=registry, options=opts) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"1", timeout=2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "nobody" in await call.details()
        assert list(await call.trailing_metadata()) == []
        assert call.done()
        with pytest.raises(grpc.aio.AioRpcError):
            await call.wait_for_connection()


async def test_stream_call_cancel(registry: LocalRegistry, echo_servers: EchoFactory) -> None:
    """cancel() on an open stream cancels it; before opening, it cancels the opening. The
    server (telemetry and access log on) survives the cancelled stream: it used to read the
    peer after grpc core had freed the transport and crash (grpc/grpc#29069)."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_opts(retry=None)) as ch:
        call = ch.unary_stream(method("ServerStream"))(b"1000000", timeout=5)
        assert await call.read() == b"e1|0"
        assert call.cancel() is True
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert call.cancelled()
        early = ch.unary_stream(method("ServerStream"))(b"1", timeout=5)
        waiter = asyncio.ensure_future(early.code())
        await asyncio.sleep(0)
        early.cancel()
        assert await asyncio.wait_for(waiter, 3) is grpc.StatusCode.CANCELLED
        assert early.cancelled() and early.done()
        with pytest.raises(asyncio.CancelledError):
            await early.read()


def _retry_streams() -> meshkit.DialOptions:
    return _opts(retry=RetryOptions(methods={
        "Echo/FailStream": RetryPolicy(idempotent=True, max_attempts=3)}))


async def test_retrying_stream_commits_on_first_message(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """A server stream failing before its first message on one instance is retried on
    another; the call then answers from the committed attempt."""
    await echo_servers("e1")
    await echo_servers("e2")
    async with meshkit.dial("echo", registry=registry, options=_retry_streams()) as ch:
        await ch.wait_for_endpoints(2)
        for _ in range(4):
            call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0@e1", timeout=5)
            seen: list[Any] = []
            call.add_done_callback(seen.append)
            got = [m async for m in call]
            assert got == [b"e2|0", b"e2|1", b"e2|2"]
            assert await call.code() is OK
            assert await call.details() in ("", None)
            assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
            assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
            await call.wait_for_connection()
            await asyncio.sleep(0.01)
            assert call.done() and not call.cancelled() and seen == [call]


async def test_retrying_stream_gives_up_with_the_last_error(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Every attempt failing before its first message: the call ends with that status."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_retry_streams()) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:0", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await call.code() is grpc.StatusCode.UNAVAILABLE
        assert "asked to fail" in await call.details()
        assert call.done() and not call.cancelled()
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)


async def test_retrying_stream_cancel(
    registry: LocalRegistry, echo_servers: EchoFactory
) -> None:
    """Cancelling a retried stream ends it CANCELLED and stops further attempts."""
    await echo_servers("e1")
    async with meshkit.dial("echo", registry=registry, options=_retry_streams()) as ch:
        call = ch.unary_stream(method("FailStream"))(b"UNAVAILABLE:1000000", timeout=5)
        assert (await call.read()).startswith(b"e1|")
        assert call.cancel() is True
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert call.cancelled() and call.done()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            while await call.read() is not grpc.aio.EOF:
                pass
