"""Streams a server refuses with REFUSED_STREAM (HTTP/2 error code 7: closed "prior to
any processing", RFC 9113 section 8.7) count as the endpoint's overload, as unary attempts
do, not as outlier-ejection failures. A raw asyncio HTTP/2 peer that refuses every stream."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# the connections _refuse_every_stream holds, for the test to close: grpc keeps a channel's
# connection open after close() while a call object of it is referenced, and from Python
# 3.12 on Server.wait_closed() waits for every connection's handler to return
_writers: set[asyncio.StreamWriter] = set()


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + struct.pack(">I", stream) + payload)


async def _refuse_every_stream(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    """A bare HTTP/2 server that resets every stream with REFUSED_STREAM (error code 7),
    as a server over its SETTINGS_MAX_CONCURRENT_STREAMS does (RFC 9113 section 8.7)."""
    _writers.add(writer)
    try:
        await reader.readexactly(len(_PREFACE))
        writer.write(_frame(4, 0, 0))  # our SETTINGS (none)
        while True:
            head = await reader.readexactly(9)
            size, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = await reader.readexactly(size)
            if kind == 4 and not flags & 1:  # SETTINGS: ack
                writer.write(_frame(4, 1, 0))
            elif kind == 6 and not flags & 1:  # PING: ack
                writer.write(_frame(6, 1, 0, payload))
            elif kind == 1:  # HEADERS: a new stream, refused
                writer.write(_frame(3, 0, stream, struct.pack(">I", 7)))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        _writers.discard(writer)
        writer.close()


async def test_refused_server_streams_count_as_overload_not_ejection_failures(
    tmp_path: Path,
) -> None:
    """Two refused server streams (an idempotent method, retried) do not eject the
    endpoint with consecutive_failures=2: they are overload (RESOURCE_EXHAUSTED to the
    balancer), as the same refusal of a unary attempt is."""
    server = await asyncio.start_server(_refuse_every_stream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                          poll_interval_s=0.05))
    try:
        await registry.register(Instance(service="refusing", instance_id="r1",
                                         host="127.0.0.1", port=port))
        opts = meshkit.DialOptions(
            insecure=True,
            outlier=OutlierOptions(consecutive_failures=2, max_ejection_percent=100),
            retry=RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=2)))
        async with meshkit.dial("refusing", registry=registry, options=opts) as ch:
            await asyncio.wait_for(ch.wait_for_endpoints(1), 5)
            codes = []
            for _ in range(3):
                call = ch.unary_stream("/x.Refused/Stream")(b"a", timeout=5)
                try:
                    async with asyncio.timeout(8):
                        async for _msg in call:
                            pass
                except grpc.aio.AioRpcError as exc:
                    codes.append((exc.code(), exc.details()))
                await asyncio.sleep(0.05)
            stats = ch.stats()
        assert stats.ejections == 0, (stats.ejections, stats.endpoints, codes)
        assert not any(ep.ejected for ep in stats.endpoints), stats.endpoints
        # so every call reached the server and was refused there (not by the mesh)
        assert all("error code 7" in (d or "") for _, d in codes), codes
    finally:
        await registry.close()
        server.close()
        for writer in list(_writers):
            writer.close()
        await server.wait_closed()


async def test_a_status_quoting_a_refused_stream_does_not_replay_a_call_not_safe_to_repeat(
    tmp_path: Path,
) -> None:
    """A method that is not safe to repeat (no ``idempotent``, no ``idempotency-key``),
    e.g. PlaceOrder: the handler runs (its order written) and answers ``UNAVAILABLE`` with
    a message that contains grpc's refused-stream words, because it quotes a downstream
    call's status ("user service: Stream removed (RST_STREAM (Received RST_STREAM with
    error code 7))"). meshkit took any details containing "RST_STREAM with error code 7)"
    for a refusal before any processing (a nack) and replayed the call on every attempt:
    the handler ran 3 times for one call. Only C-core's own words, exactly and with no
    trailers, are a refused stream (RFC 9113 section 8.7); the call runs once. A
    ``meshkit-nack`` trailer on another status than ``RESOURCE_EXHAUSTED`` is no nack
    either (a handler forwarding a downstream call's trailers)."""
    ran: list[str] = []

    def place_handler(name: str, code: grpc.StatusCode, details: str,
                      trailers: tuple[tuple[str, str], ...]) -> grpc.GenericRpcHandler:
        async def place(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            ran.append(name)  # the side effect: an order written
            if trailers:
                context.set_trailing_metadata(trailers)
            await context.abort(code, details)
            raise AssertionError("unreachable")

        return grpc.method_handlers_generic_handler(
            "x.Orders", {"Place": grpc.unary_unary_rpc_method_handler(place)})

    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=30.0,
                                          poll_interval_s=0.05))
    quoted = ("user service: Stream removed (RST_STREAM (Received RST_STREAM with error "
              "code 7))")
    cases = [(grpc.StatusCode.UNAVAILABLE, quoted, ()),
             (grpc.StatusCode.UNAVAILABLE, "downstream busy", (("meshkit-nack", "1"),))]
    try:
        for n, (code, details, trailers) in enumerate(cases):
            servers = []
            for name in ("h1", "h2"):
                handler = place_handler(name, code, details, trailers)

                def add(_servicer: Any, server: Any,
                        handler: grpc.GenericRpcHandler = handler) -> None:
                    server.add_generic_rpc_handlers((handler,))

                srv = meshkit.MeshServer(
                    f"orders{n}", [(add, None)], registry=registry,
                    options=meshkit.ServeOptions(insecure=True, instance_id=f"{name}-{n}",
                                                 drain_delay_s=0.0, grace_s=1.0))
                await srv.start()
                servers.append(srv)
            ran.clear()
            try:
                async with meshkit.dial(f"orders{n}", registry=registry,
                                        options=meshkit.DialOptions(insecure=True)) as ch:
                    with pytest.raises(grpc.aio.AioRpcError) as got:
                        await ch.unary_unary("/x.Orders/Place")(b"order-1", timeout=10.0)
                    assert got.value.code() is code
            finally:
                for srv in servers:
                    await srv.drain()
            assert len(ran) == 1, f"{details!r}: a call not safe to repeat ran {ran}"
    finally:
        await registry.close()
