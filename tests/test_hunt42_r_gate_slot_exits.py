"""The request gate gives back a unary-request call's slot, read permit and request bytes on
every way out, now that the slot is taken in ``RequestGate._first`` (7677a917) and a
call that took a free read permit is not checked against the byte budget twice
(f498b214).

Paths pinned, for the three wraps that run ``_first`` (the telemetry wrap the gate is
fused into, the gate's own ``unary_out`` without telemetry, ``stream_out`` for a
unary-stream method) and for async and plain-function (thread) handlers: a caller that
leaves while its call waits for a read permit, or holds one without having sent its
request; a handler that raises or aborts; a caller that leaves while its handler runs
(a thread's call keeps its slot until the thread is done); a call shed for want of a
slot beside a plain-function handler's call; a drain while calls wait for a permit and
health checks hold reserved places.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.server import ServerLimits

_SVC = "hunt42.Exits"
_CLEAN = (0, 0, 0, 0, 0, 0)


async def _until(what: Any, timeout_s: float = 8.0) -> None:
    end = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def _server(registry: LocalRegistry, telemetry: bool, sync: bool, release: Any,
            **limits: Any) -> meshkit.MeshServer:
    async def hold(request: bytes, context: Any) -> bytes:
        if request == b"raise":
            raise ValueError("boom")
        if request == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
        await release.wait()
        return b"held " + request

    async def hold_down(request: bytes, context: Any) -> Any:
        if request == b"raise":
            raise ValueError("boom")
        if request == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
        await release.wait()
        yield b"down " + request

    def hold_sync(request: bytes, context: Any) -> bytes:
        if request == b"raise":
            raise ValueError("boom")
        if request == b"abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
        release.wait(8)
        return b"held " + request

    def hold_down_sync(request: bytes, context: Any) -> Any:
        if request == b"raise":
            raise ValueError("boom")
        if request == b"abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
        release.wait(8)
        yield b"down " + request

    def add(_servicer: object, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, {
            "Hold": grpc.unary_unary_rpc_method_handler(hold_sync if sync else hold),
            "HoldDown": grpc.unary_stream_rpc_method_handler(
                hold_down_sync if sync else hold_down),
        }),))

    extra: dict[str, Any] = {} if telemetry else {"telemetry": None}
    return meshkit.MeshServer("gateexits", [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0, grace_s=1.0, admin=None,
                                  limits=ServerLimits(**limits), **extra))


def _counts(gate: Any) -> tuple[int, ...]:
    """Slots, admitted calls, bytes in flight, read permits held, waiters for one, calls
    waiting for their request."""
    return (gate.calls(), gate.active, gate.inflight_bytes, len(gate._readers),
            len(gate._read_waiters), len(gate._waiting))


def _start(ch: grpc.aio.Channel, method: str, tag: bytes) -> Any:
    path = f"/{_SVC}/{method}"
    if method == "Hold":
        return ch.unary_unary(path)(tag, timeout=20)
    return ch.unary_stream(path)(tag, timeout=20)


async def _finish(call: Any, method: str) -> Any:
    if method == "Hold":
        return await call
    return [m async for m in call]


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry", "no-telemetry"])
@pytest.mark.parametrize("method", ["Hold", "HoldDown"])
async def test_every_way_out_gives_slot_permit_and_bytes_back(
    registry: LocalRegistry, method: str, telemetry: bool, sync: bool
) -> None:
    release: Any = threading.Event() if sync else asyncio.Event()
    srv = _server(registry, telemetry, sync, release, max_concurrent_rpcs=4,
                  max_concurrent_reads=1, evict_waiting_after_s=None,
                  first_message_timeout_s=20.0)
    await srv.start()
    gate = srv.gate
    assert gate is not None
    path = f"/{_SVC}/{method}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            # a holds the only read permit, its request never sent
            a = ch.stream_stream(path)(timeout=20)
            await asyncio.wait_for(a.wait_for_connection(), 8)
            await _until(lambda: len(gate._readers) == 1)
            # b waits for the permit; its caller leaves
            b = _start(ch, method, b"b")
            await _until(lambda: len(gate._read_waiters) == 1)
            assert gate.calls() == 2
            b.cancel()
            await _until(lambda: gate.calls() == 1)
            assert _counts(gate) == (1, 0, 0, 1, 0, 1)
            # a's caller leaves holding the permit, no request sent
            a.cancel()
            await _until(lambda: gate.calls() == 0)
            assert _counts(gate) == _CLEAN
            # handlers that raise, abort
            for tag, code in ((b"raise", grpc.StatusCode.UNKNOWN),
                              (b"abort", grpc.StatusCode.FAILED_PRECONDITION)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _finish(_start(ch, method, tag), method)
                assert info.value.code() is code
                await _until(lambda: gate.calls() == 0)
                assert _counts(gate) == _CLEAN
            # the caller leaves while its handler runs: a thread's call keeps its slot
            # (and bytes) until the thread is done
            c = _start(ch, method, b"c")
            await _until(lambda: gate.active == 1)
            c.cancel()
            await asyncio.sleep(0.3)
            if sync:
                assert (gate.calls(), gate.active) == (1, 1)
            release.set()
            await _until(lambda: gate.calls() == 0)
            assert _counts(gate) == _CLEAN
            assert await _finish(_start(ch, method, b"d"), method) == (
                b"held d" if method == "Hold" else [b"down d"])
            await _until(lambda: gate.calls() == 0)
            assert _counts(gate) == _CLEAN
    finally:
        release.set()
        await srv.drain()


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry", "no-telemetry"])
@pytest.mark.parametrize("method", ["Hold", "HoldDown"])
async def test_shed_beside_a_thread_handler_gives_back_what_it_took(
    registry: LocalRegistry, telemetry: bool, method: str
) -> None:
    release = threading.Event()
    srv = _server(registry, telemetry, True, release, max_concurrent_rpcs=1,
                  evict_waiting_after_s=None)
    await srv.start()
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            a = _start(ch, method, b"a")
            await _until(lambda: gate.active == 1)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _finish(_start(ch, method, b"x"), method)
                assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert info.value.details() == "server busy"
                assert ("meshkit-nack", "1") in tuple(info.value.trailing_metadata() or ())
                assert gate.calls() == 1
            # a's caller leaves while its handler holds its thread: the slot stays taken
            a.cancel()
            await asyncio.sleep(0.3)
            assert gate.calls() == 1
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _finish(_start(ch, method, b"y"), method)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert gate.calls() == 1
            release.set()
            await _until(lambda: gate.calls() == 0)
            assert _counts(gate) == _CLEAN
            assert gate.shed == 4
    finally:
        release.set()
        await srv.drain()


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry", "no-telemetry"])
async def test_a_drain_while_calls_wait_gives_everything_back(
    registry: LocalRegistry, telemetry: bool
) -> None:
    release = asyncio.Event()
    srv = _server(registry, telemetry, False, release, max_concurrent_rpcs=4,
                  max_concurrent_reads=1, evict_waiting_after_s=None,
                  first_message_timeout_s=20.0)
    await srv.start()
    gate = srv.gate
    assert gate is not None
    path = f"/{_SVC}/Hold"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        a = ch.stream_stream(path)(timeout=20)
        await asyncio.wait_for(a.wait_for_connection(), 8)
        await _until(lambda: len(gate._readers) == 1)
        b = ch.unary_unary(path)(b"b", timeout=20)
        await _until(lambda: len(gate._read_waiters) == 1)
        # health checks sending headers only hold reserved places past the cap
        checks = [ch.stream_stream("/grpc.health.v1.Health/Check")(timeout=20)
                  for _ in range(3)]
        await _until(lambda: gate.calls() == 5)
        checks[0].cancel()
        await _until(lambda: gate.calls() == 4)
        assert len(gate._reserved) == 2
        await asyncio.wait_for(srv.drain(), 8)
        assert await b.code() is grpc.StatusCode.UNAVAILABLE
        assert await a.code() is grpc.StatusCode.UNAVAILABLE
    # grpc.aio's stop may return before the calls' tasks have ended (an abort awaits
    # its status batch): they give everything back as they end, moments later
    await _until(lambda: _counts(gate) == _CLEAN and not gate._reserved)
    assert _counts(gate) == _CLEAN
    assert not gate._reserved
