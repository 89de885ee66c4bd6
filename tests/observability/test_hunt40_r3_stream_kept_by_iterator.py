"""Review of 42100416: a stream call object collected while its attempt is open cancels
the attempt; a stream whose caller still holds what reads it must not be cancelled.

The caller may keep only the iterator (``it = call.__aiter__()``), or only bound methods
(``read = call.read``, ``write = call.write``), or a task reading it, and drop its own
name for the call object; a collection in between (``gc.collect()``) must leave the
stream open: every response read, the server's ``OK`` end, counted ``OK``. Real
grpc.aio server on loopback, a server stream and a bidi stream with the server pausing
between messages (the stream open while the collector runs).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.echo import raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

APP = "meshkit.test.Kept"
N = 5


async def _slow(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(N):
        await asyncio.sleep(0.05)
        yield b"%d" % i


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        await asyncio.sleep(0.02)
        yield r


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        APP,
        {
            "Slow": grpc.unary_stream_rpc_method_handler(_slow),
            "Echo": grpc.stream_stream_rpc_method_handler(_echo),
        },
    )


def _handled(prom: CollectorRegistry, method: str, kind: str, code: str) -> float:
    labels = {"grpc_service": APP, "grpc_method": method, "grpc_type": kind, "grpc_code": code}
    return prom.get_sample_value("grpc_client_handled_total", labels) or 0.0


STYLES = ["iterator", "read-method", "reader-task"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kind", ["server_stream", "bidi_stream"])
async def test_a_stream_read_through_what_the_caller_kept_is_not_cancelled(
    registry: LocalRegistry, kind: str, style: str
) -> None:
    prom = CollectorRegistry()
    method = "Slow" if kind == "server_stream" else "Echo"
    expected = [b"%d" % i for i in range(N)]
    async with raw_server(_handlers()) as (_, port):
        await registry.register(
            Instance(service="k", instance_id="k1", host="127.0.0.1", port=port)
        )
        opts = meshkit.DialOptions(
            insecure=True,
            retry=None,
            telemetry=TelemetryOptions(registry=prom, tracing=False, access_log=False),
        )
        async with meshkit.dial("k", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)
            for _ in range(3):
                if kind == "server_stream":
                    call: Any = ch.unary_stream(f"/{APP}/Slow")(b"", timeout=60)
                    write = done_writing = None
                else:
                    call = ch.stream_stream(f"/{APP}/Echo")(timeout=60)
                    write, done_writing = call.write, call.done_writing
                    await write(expected[0])
                it = call.__aiter__() if style == "iterator" else None
                read = call.read if style != "iterator" else None
                if style == "reader-task":
                    assert read is not None

                    async def reader(read: Any = read) -> list[bytes]:
                        out = []
                        while (m := await read()) is not grpc.aio.EOF:
                            out.append(m)
                        return out

                    task = asyncio.ensure_future(reader())
                    read = None
                del call
                for _ in range(3):
                    gc.collect()
                    await asyncio.sleep(0.03)
                if write is not None and done_writing is not None:
                    for m in expected[1:]:
                        await write(m)
                    await done_writing()
                    write = done_writing = None
                    gc.collect()
                async with asyncio.timeout(30):
                    if style == "iterator":
                        assert it is not None
                        got = [m async for m in it]
                    elif style == "read-method":
                        assert read is not None
                        got = []
                        while (m := await read()) is not grpc.aio.EOF:
                            got.append(m)
                    else:
                        got = await task
                assert got == expected
            # (the last stream's completion is counted a loop turn or two after its end)
            await until(
                lambda: _handled(prom, method, kind, "OK") >= 3,
                timeout_s=20,
                what=f"3 streams counted OK: {_handled(prom, method, kind, 'OK')}",
            )
            assert _handled(prom, method, kind, "OK") == 3
            assert _handled(prom, method, kind, "Canceled") == 0
