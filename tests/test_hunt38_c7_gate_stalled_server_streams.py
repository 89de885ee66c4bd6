"""Server streams whose client never takes a message cannot hold every call slot for good.

A server stream holds its call slot (``ServerLimits.max_concurrent_rpcs``) for its whole
life. A client that opens that many server-streaming calls and never reads (it grants no
HTTP/2 flow-control window: its connection's 64 KiB fill up and every response write of
the server waits) held every slot for as long as it kept its connection, answering the
server's keepalive pings: every unary call of the server, from any client, was shed
``RESOURCE_EXHAUSTED`` "server busy", for good (grpc-go and a plain grpc.aio server cap
nothing there, Envoy resets a stream idle for 5 minutes). Now a call at the cap evicts the
server stream that has waited longest, at least ``ServerLimits.evict_stalled_after_s``
(60 s by default), for its client to take a message (counted ``evicted``; its slot is
given back). A stream whose handler is slow to produce, or whose client reads on, keeps
its slot (a grpc client grants flow-control window back in batches: one reading 1 KB
messages every 5 ms left a message waiting up to 1.8 s here).

The client here is a bare HTTP/2 connection (tests/faults/_h2.py's framing) that answers
SETTINGS and PING and never sends WINDOW_UPDATE.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from tests.faults._h2 import (
    _ACK,
    _DATA,
    _END_HEADERS,
    _END_STREAM,
    _HEADERS,
    _PING,
    _PREFACE,
    _SETTINGS,
    _encode,
    _frame,
)
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_SLOTS = 2
_STALL_S = 1.0  # evict_stalled_after_s of the never-reading test
_GUARD_S = 3.0  # evict_stalled_after_s of the reading test: above a reader's batching


async def _flood(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(100_000):
        yield b"m" * 1024


async def _slow(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    await asyncio.sleep(3 * _GUARD_S)  # past the reading below
    yield b"second"


async def _unary(request: bytes, context: Any) -> bytes:
    return b"ok"


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "Flood": grpc.unary_stream_rpc_method_handler(_flood),
        "Slow": grpc.unary_stream_rpc_method_handler(_slow),
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
    }),))


async def _server(registry: LocalRegistry, stall_s: float) -> meshkit.MeshServer:
    srv = meshkit.MeshServer(
        "t", [(_add, None)], registry=registry,
        options=meshkit.ServeOptions(
            insecure=True, drain_delay_s=0, grace_s=1.0, admin=None,
            limits=meshkit.ServerLimits(max_concurrent_rpcs=_SLOTS,
                                        evict_stalled_after_s=stall_s)))
    await srv.start()
    return srv


async def _never_reading(port: int, streams: int) -> tuple[asyncio.StreamWriter, Any]:
    """A connection calling ``Flood`` on ``streams`` streams that never grants a window."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = bytearray(_PREFACE + _frame(_SETTINGS, 0, 0))
    for i in range(streams):
        sid = 2 * i + 1
        out += _frame(_HEADERS, _END_HEADERS, sid, _encode([
            (":method", "POST"), (":scheme", "http"), (":path", "/t.S/Flood"),
            (":authority", "t"), ("content-type", "application/grpc"),
            ("te", "trailers")]))
        out += _frame(_DATA, _END_STREAM, sid, b"\x00" + struct.pack(">I", 0))
    writer.write(bytes(out))

    async def answer() -> None:  # SETTINGS and PING answered, DATA never acknowledged
        try:
            while True:
                head = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                if head[3] == _SETTINGS and not head[4] & _ACK:
                    writer.write(_frame(_SETTINGS, _ACK, 0))
                elif head[3] == _PING and not head[4] & _ACK:
                    writer.write(_frame(_PING, _ACK, 0, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    return writer, asyncio.ensure_future(answer())


async def test_a_server_stream_its_client_never_reads_gives_its_slot_to_a_new_call(
        registry: LocalRegistry) -> None:
    srv = await _server(registry, _STALL_S)
    gate = srv.gate
    assert gate is not None
    writer, answering = await _never_reading(srv.port, _SLOTS)
    try:
        await until(lambda: gate.slots == _SLOTS, timeout_s=10, what="every slot taken")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            unary = ch.unary_unary("/t.S/Unary")
            with pytest.raises(grpc.aio.AioRpcError) as info:  # no stream stalled long yet
                await unary(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(_STALL_S * 2)
            assert await unary(b"", timeout=10) == b"ok"
            assert await unary(b"", timeout=10) == b"ok"  # the slot it took is free again
        await until(lambda: gate.evicted == 1, timeout_s=10, what="one stream evicted")
        await until(lambda: gate.slots == _SLOTS - 1, timeout_s=10,
                    what="the evicted stream's slot given back")
        assert srv.stats().gate_evicted == 1
        assert not gate._evicting  # the evicted call's task is not kept
    finally:
        writer.transport.abort()
        answering.cancel()
        await srv.drain()


async def test_a_slow_handler_or_a_reading_client_keeps_its_slot(
        registry: LocalRegistry) -> None:
    srv = await _server(registry, _GUARD_S)
    gate = srv.gate
    assert gate is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            slow = ch.unary_stream("/t.S/Slow")(b"", timeout=30)
            reading = ch.unary_stream("/t.S/Flood")(b"", timeout=30)
            assert await asyncio.wait_for(slow.read(), 10) == b"first"
            got = 0
            # reads on, a message every 2 ms (about 500 KB/s): the window it grants back
            # in batches comes well within _GUARD_S
            deadline = asyncio.get_running_loop().time() + 2 * _GUARD_S
            while asyncio.get_running_loop().time() < deadline:
                assert await asyncio.wait_for(reading.read(), 10) == b"m" * 1024
                got += 1
                await asyncio.sleep(0.002)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/t.S/Unary")(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await asyncio.wait_for(slow.read(), 10) == b"second"
            reading.cancel()
        assert gate.evicted == 0 and got > 0
    finally:
        await srv.drain()
