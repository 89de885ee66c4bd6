"""Streams a server refuses with REFUSED_STREAM (HTTP/2 error code 7: closed "prior to
any processing", RFC 9113 section 8.7) count as the endpoint's overload, as unary attempts
do, not as outlier-ejection failures. A raw asyncio HTTP/2 peer that refuses every stream."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import grpc

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.resilience import RetryOptions, RetryPolicy

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + struct.pack(">I", stream) + payload)


async def _refuse_every_stream(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
    """A bare HTTP/2 server that resets every stream with REFUSED_STREAM (error code 7),
    as a server over its SETTINGS_MAX_CONCURRENT_STREAMS does (RFC 9113 section 8.7)."""
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
        await server.wait_closed()
