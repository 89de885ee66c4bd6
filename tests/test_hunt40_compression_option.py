"""Compression had no option of its own: ``DialOptions`` and ``ServeOptions`` took no
``compression``, so a user who wanted gzip passed ``grpc.default_compression_algorithm``
in ``channel_options``/``server_options`` by hand, or ``compression=`` on every call (which
took each unary call off meshkit's inline path). Both now take ``compression`` (a
``grpc.Compression`` member or ``"gzip"``/``"deflate"``/``"none"``, any case; anything else
a ``ConfigError`` quoting it), set on the sub-channels and the server as grpc.aio's own
``compression=``. A call's own ``compression=`` wins; ``NoCompression`` too, which grpc.aio
drops (a falsy ``IntEnum``): before, it took the channel's default.

Measured on the wire: the bytes a loopback TCP proxy forwards each way for 100 KB
messages of one repeated byte (gzip makes each a few hundred bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import meshkit
from meshkit._inline import InlineUnaryUnary, available
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.errors import ConfigError
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.support.echo import add_echo, handler, method, raw_server
from tests.support.scripted_proxy import ScriptedProxy

_BIG = b"a" * 100_000
# well over one uncompressed message on the wire, well under it compressed (a 100 KB
# message of one byte gzips to ~150 bytes; each call adds headers of a few hundred)
_COMPRESSED_MAX = 20_000
_PLAIN_MIN = 100_000


class _CountingProxy(ScriptedProxy):
    """Forwards every connection to ``upstream``, counting the bytes each way."""

    def __init__(self, upstream: int) -> None:
        super().__init__(upstream)
        self.up = 0
        self.down = 0

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [cwriter, swriter]

        async def pump(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
        ) -> None:
            while data := await reader.read(65536):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
            writer.close()

        for task in (
            asyncio.create_task(pump(creader, swriter, True)),
            asyncio.create_task(pump(sreader, cwriter, False)),
        ):
            self._tasks.add(task)

    def reset(self) -> None:
        self.up = self.down = 0


async def _proxied(registry: LocalRegistry, port: int, iid: str = "p1") -> _CountingProxy:
    proxy = _CountingProxy(port)
    await proxy.__aenter__()
    await registry.register(
        Instance(service="echo", instance_id=iid, host="127.0.0.1", port=proxy.port)
    )
    return proxy


async def _requests(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield _BIG


async def _each_kind(ch: meshkit.MeshChannel, **kw: object) -> None:
    """One call of each kind, each sending ``_BIG`` once, answering briefly but Unary."""
    assert await ch.unary_unary(method("Unary"))(_BIG, timeout=10, **kw) == b"p|" + _BIG
    got = [
        r
        async for r in ch.unary_stream(method("ServerStream"))(
            b"2" + b" " * 99_999, timeout=10, **kw
        )
    ]
    assert len(got) == 2
    assert await ch.stream_unary(method("ClientStream"))(_requests(1), timeout=10, **kw)
    got = [r async for r in ch.stream_stream(method("Bidi"))(_requests(1), timeout=10, **kw)]
    assert len(got) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "given",
    ["gzip", "GZIP", " Deflate ", grpc.Compression.Gzip],
    ids=["gzip", "GZIP", "deflate-blank", "member"],
)
async def test_dial_compression_compresses_every_kind_of_call(
    registry: LocalRegistry,
    given: object,
) -> None:
    async with raw_server(handler("p")) as (_, port):
        proxy = await _proxied(registry, port)
        try:
            opts = meshkit.DialOptions(insecure=True, compression=given)  # type: ignore[arg-type]
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                proxy.reset()
                await _each_kind(ch)
                # four requests of 100 KB (the server stream's a blank-padded count)
                assert proxy.up < _COMPRESSED_MAX, proxy.up
                # the server (no compression of its own) answers Unary uncompressed
                assert proxy.down > _PLAIN_MIN, proxy.down
                if available():  # still run inline: a channel default needs no metadata
                    unary = [
                        mc
                        for conn in ch._conns.values()
                        for mc in conn.callables.values()
                        if type(mc) is InlineUnaryUnary
                    ]
                    assert unary, "the unary call left the inline path"
        finally:
            await proxy.__aexit__()


@pytest.mark.timeout(60)
async def test_without_compression_nothing_is_compressed(registry: LocalRegistry) -> None:
    """The reference: the same calls on a channel without ``compression``."""
    async with raw_server(handler("p")) as (_, port):
        proxy = await _proxied(registry, port)
        try:
            for given in (None, "none", grpc.Compression.NoCompression):
                opts = meshkit.DialOptions(insecure=True, compression=given)
                async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                    await ch.wait_for_endpoints(1, timeout_s=10)
                    proxy.reset()
                    await _each_kind(ch)
                    assert proxy.up > 4 * _PLAIN_MIN, (given, proxy.up)
        finally:
            await proxy.__aexit__()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inline", ["1", "0"], ids=["inline", "grpc-aio-path"])
async def test_a_calls_own_no_compression_wins_over_the_channels(
    registry: LocalRegistry,
    monkeypatch: pytest.MonkeyPatch,
    inline: str,
) -> None:
    """grpc.aio drops ``compression=NoCompression`` (falsy): it took the default."""
    monkeypatch.setenv("MESHKIT_INLINE_CALLS", inline)
    monkeypatch.setattr("meshkit._inline._AVAILABLE", [])  # read again at dial()
    async with raw_server(handler("p")) as (_, port):
        proxy = await _proxied(registry, port)
        try:
            opts = meshkit.DialOptions(insecure=True, compression="gzip")
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                proxy.reset()
                await _each_kind(ch, compression=grpc.Compression.NoCompression)
                assert proxy.up > 4 * _PLAIN_MIN, proxy.up
                proxy.reset()  # and the next call takes the default again
                await ch.unary_unary(method("Unary"))(_BIG, timeout=10, metadata=(("k", "v"),))
                assert proxy.up < _COMPRESSED_MAX, proxy.up
        finally:
            await proxy.__aexit__()


class _FailsFirst(grpc.GenericRpcHandler):
    """Answers ``Unary`` UNAVAILABLE on its first call, then as the echo service."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls += 1
            if self.calls == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "first call fails")
            return b"p|" + request

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.mark.timeout(60)
async def test_retries_and_hedges_are_compressed(registry: LocalRegistry) -> None:
    """Every attempt, on whichever endpoint: a retry of an UNAVAILABLE, and hedges to a
    second endpoint after 10 ms (both hold their answers 0.3 s: every call is hedged)."""
    fails = _FailsFirst()
    async with raw_server(fails) as (_, port):
        proxy = await _proxied(registry, port)
        try:
            opts = meshkit.DialOptions(
                insecure=True,
                compression="gzip",
                retry=RetryOptions(default=RetryPolicy(idempotent=True, max_attempts=3)),
            )
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                proxy.reset()
                assert await ch.unary_unary(method("Unary"))(_BIG, timeout=10) == b"p|" + _BIG
                assert fails.calls == 2  # the first attempt failed, the retry answered
                assert proxy.up < _COMPRESSED_MAX, proxy.up
        finally:
            await proxy.__aexit__()
            await registry.deregister(
                Instance(service="echo", instance_id="p1", host="127.0.0.1", port=proxy.port)
            )
    async with (
        raw_server(handler("p", delay_s=0.3)) as (_, port_a),
        raw_server(handler("p", delay_s=0.3)) as (_, port_b),
    ):
        proxy_a = await _proxied(registry, port_a, "p1")
        proxy_b = await _proxied(registry, port_b, "p2")
        try:
            retry = RetryOptions(
                default=RetryPolicy(idempotent=True, hedge_delay_s=0.01, max_attempts=2)
            )
            opts = meshkit.DialOptions(insecure=True, compression="gzip", retry=retry)
            async with meshkit.dial("echo", registry=registry, options=opts) as ch:
                await ch.wait_for_endpoints(2, timeout_s=10)
                proxy_a.reset()
                proxy_b.reset()
                for _ in range(2):
                    assert await ch.unary_unary(method("Unary"))(_BIG, timeout=10)
                # each call reached both endpoints (hedged after 10 ms)
                assert proxy_a.up and proxy_b.up
                assert ch.retry is not None and ch.retry.stats.hedges >= 1
                sent = proxy_a.up + proxy_b.up
                assert sent < 2 * _COMPRESSED_MAX, (proxy_a.up, proxy_b.up)
        finally:
            await proxy_a.__aexit__()
            await proxy_b.__aexit__()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given", ["gzip", grpc.Compression.Deflate], ids=["gzip", "deflate"])
async def test_serve_compression_compresses_responses(
    registry: LocalRegistry,
    tmp_path: Path,
    given: object,
) -> None:
    own = LocalRegistry(LocalOptions(path=tmp_path / "server", ttl_s=3.0))
    srv = meshkit.MeshServer(
        "echo",
        [add_echo("p")],
        registry=own,
        options=meshkit.ServeOptions(
            insecure=True, instance_id="p", drain_delay_s=0.0, grace_s=0.5, compression=given
        ),
    )  # type: ignore[arg-type]
    await srv.start()
    try:
        proxy = await _proxied(registry, srv.port)
        try:
            async with meshkit.dial(
                "echo", registry=registry, options=meshkit.DialOptions(insecure=True)
            ) as ch:
                await ch.wait_for_endpoints(1, timeout_s=10)
                proxy.reset()
                assert await ch.unary_unary(method("Unary"))(_BIG, timeout=10) == b"p|" + _BIG
                got = [r async for r in ch.stream_stream(method("Bidi"))(_requests(2), timeout=10)]
                assert got == [b"p|" + _BIG] * 2
                assert proxy.down < _COMPRESSED_MAX, proxy.down
                assert proxy.up > 3 * _PLAIN_MIN, proxy.up  # the client compresses nothing
        finally:
            await proxy.__aexit__()
    finally:
        await srv.drain()
        await own.close()


@pytest.mark.parametrize(
    "given",
    ["br", "", "gzip2", 2, True, b"gzip", 1.0],
    ids=["br", "empty", "gzip2", "int", "bool", "bytes", "float"],
)
@pytest.mark.parametrize(
    "options", [meshkit.DialOptions, meshkit.ServeOptions], ids=["dial", "serve"]
)
def test_a_bad_compression_is_a_config_error_quoting_it(options: type, given: object) -> None:
    with pytest.raises(ConfigError) as err:
        options(insecure=True, compression=given)
    assert "compression" in str(err.value) and repr(given) in str(err.value), err.value


@pytest.mark.parametrize(
    "options", [meshkit.DialOptions, meshkit.ServeOptions], ids=["dial", "serve"]
)
def test_compression_names_are_normalised(options: type) -> None:
    assert options(insecure=True).compression is None
    assert options(insecure=True, compression="Gzip").compression is grpc.Compression.Gzip
    assert options(insecure=True, compression="deflate").compression is grpc.Compression.Deflate
    assert options(insecure=True, compression="NONE").compression is grpc.Compression.NoCompression
    given = options(insecure=True, compression=grpc.Compression.Gzip)
    assert given.compression is grpc.Compression.Gzip


def test_compression_beside_the_grpc_argument_is_refused() -> None:
    arg = (("grpc.default_compression_algorithm", 2),)
    with pytest.raises(ConfigError, match=r"channel_options.*compression"):
        meshkit.DialOptions(insecure=True, compression="gzip", channel_options=arg)
    with pytest.raises(ConfigError, match=r"server_options.*compression"):
        meshkit.ServeOptions(insecure=True, compression="gzip", server_options=arg)
    # alone, either is taken
    meshkit.DialOptions(insecure=True, channel_options=arg)
    meshkit.ServeOptions(insecure=True, server_options=arg)
