"""``DialOptions.compression`` against a @grpc/grpc-js server: its requests arrive gzip
or deflate compressed and are answered (grpc-js inflates them), and a call's own
``NoCompression`` goes plain. Measured through a byte-counting loopback TCP proxy (100 KB
messages of one byte). (A grpc-js server given ``grpc.default_compression_algorithm``
answered uncompressed: grpc-js' server side, not tested here.) Node and @grpc/grpc-js as
``test_grpcjs.py`` needs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from tests.interop.test_grpcjs import _HERE, _node
from tests.test_hunt40_compression_option import _CountingProxy

pytestmark = pytest.mark.timeout(60)

_BIG = b"a" * 100_000
_COMPRESSED_MAX = 20_000
_PLAIN_MIN = 100_000


@contextlib.asynccontextmanager
async def _js_server(options: dict[str, Any]) -> AsyncIterator[int]:
    node, env = _node()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(_HERE / "grpcjs_server.js"),
        json.dumps(options),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("PORT "), line
        yield int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def _dial(
    tmp_path: Path, port: int, **options: Any
) -> AsyncIterator[tuple[Any, _CountingProxy]]:
    proxy = _CountingProxy(port)
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    async with proxy:
        await registry.register(
            Instance(service="js", instance_id="j1", host="127.0.0.1", port=proxy.port)
        )
        opts = meshkit.DialOptions(insecure=True, telemetry=None, **options)
        try:
            async with meshkit.dial("js", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                yield ch, proxy
        finally:
            await registry.close()


async def _requests(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield _BIG


@pytest.mark.parametrize("given", ["gzip", "deflate"], ids=["gzip", "deflate"])
async def test_a_grpcjs_server_takes_compressed_requests(tmp_path: Path, given: str) -> None:
    async with _js_server({}) as port, _dial(tmp_path, port, compression=given) as (ch, proxy):
        proxy.reset()
        assert await ch.unary_unary("/interop.Js/Unary")(_BIG, timeout=10) == b"js|" + _BIG
        got = await ch.stream_unary("/interop.Js/ClientStream")(_requests(2), timeout=10)
        assert got == b"js|" + _BIG + b"," + _BIG
        got = [r async for r in ch.stream_stream("/interop.Js/Bidi")(_requests(1), timeout=10)]
        assert got == [b"js|" + _BIG]
        assert proxy.up < _COMPRESSED_MAX, proxy.up
        assert proxy.down > 3 * _PLAIN_MIN, proxy.down  # grpc-js answers plain
        proxy.reset()  # a call's own NoCompression wins
        none = grpc.Compression.NoCompression
        assert await ch.unary_unary("/interop.Js/Unary")(_BIG, timeout=10, compression=none)
        got = [
            r
            async for r in ch.stream_stream("/interop.Js/Bidi")(
                _requests(1), timeout=10, compression=none
            )
        ]
        assert got == [b"js|" + _BIG]
        assert proxy.up > 2 * _PLAIN_MIN, proxy.up
