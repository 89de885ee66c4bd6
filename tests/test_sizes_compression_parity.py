"""Message sizes, compression, empty messages and metadata limits through ``dial()`` and
``serve()``, against the same handlers on a plain grpc.aio server called by a plain
grpc.aio channel: each case must end the same way on both pairs (code and details, or
the response).

The bar is gRPC's (doc/PROTOCOL-HTTP2.md, doc/statuscodes.md, doc/compression.md): a
message over the receiver's ``grpc.max_receive_message_length`` (4 MiB by default) or
the sender's ``grpc.max_send_message_length`` is ``RESOURCE_EXHAUSTED`` naming the side
and both sizes; a gzip message is limited by its *decompressed* size (a small message
inflating past the limit is refused, "Decompressed message larger than max"), whether
the server's request gate reads it (unary requests) or the handler does (streams); an
empty (0-byte) message is a message; metadata over the hard limit (16 KiB here) is
``RESOURCE_EXHAUSTED`` naming it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalRegistry

_SVC = "sizes.v1.Sizes"
_MAX = 256 * 1024  # both servers' max receive and send sizes here
_OPTS = (("grpc.max_receive_message_length", _MAX), ("grpc.max_send_message_length", _MAX))
_CLIENT_OPTS = _OPTS[:1]  # clients receive at most _MAX and send anything (the servers judge)
_GZ = grpc.Compression.Gzip


async def _length(request: bytes, context: Any) -> bytes:
    return str(len(request)).encode()


async def _zeros(request: bytes, context: Any) -> bytes:
    return b"\0" * int(request)


async def _zeros_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    context.set_compression(_GZ)
    yield b""
    yield b"\0" * int(request)


async def _sizes(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return ",".join([str(len(r)) async for r in requests]).encode()


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r


async def _trailing(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-big", "a" * int(request)),))
    return b"ok"


_HANDLERS = {
    "Length": grpc.unary_unary_rpc_method_handler(_length),
    "Zeros": grpc.unary_unary_rpc_method_handler(_zeros),
    "ZerosStream": grpc.unary_stream_rpc_method_handler(_zeros_stream),
    "Sizes": grpc.stream_unary_rpc_method_handler(_sizes),
    "Echo": grpc.stream_stream_rpc_method_handler(_echo),
    "Trailing": grpc.unary_unary_rpc_method_handler(_trailing),
}


def _m(name: str) -> str:
    return f"/{_SVC}/{name}"


Case = Callable[[Any], Awaitable[Any]]


def _unary(name: str, request: bytes, **kw: Any) -> Case:
    async def run(ch: Any) -> Any:
        return await ch.unary_unary(_m(name))(request, timeout=20, **kw)
    return run


def _server_stream(request: bytes) -> Case:
    async def run(ch: Any) -> Any:
        return [len(r) async for r in ch.unary_stream(_m("ZerosStream"))(request, timeout=20)]
    return run


def _upload(messages: list[bytes], **kw: Any) -> Case:
    async def run(ch: Any) -> Any:
        return await ch.stream_unary(_m("Sizes"))(iter(messages), timeout=20, **kw)
    return run


def _bidi(messages: list[bytes], **kw: Any) -> Case:
    async def run(ch: Any) -> Any:
        call = ch.stream_stream(_m("Echo"))(iter(messages), timeout=20, **kw)
        return [len(r) async for r in call]
    return run


_CASES: dict[str, Case] = {
    "unary-empty": _unary("Length", b""),
    "unary-empty-gzip": _unary("Length", b"", compression=_GZ),
    "unary-at-limit": _unary("Length", b"x" * _MAX),
    "unary-over-limit": _unary("Length", b"x" * (_MAX + 1)),
    "unary-gzip-inflating-to-the-limit": _unary("Length", b"\0" * _MAX, compression=_GZ),
    "unary-gzip-bomb": _unary("Length", b"\0" * (64 * _MAX), compression=_GZ),
    "response-empty": _unary("Zeros", b"0"),
    "response-over-send-limit": _unary("Zeros", str(_MAX + 1).encode()),
    "server-stream-empty-then-over": _server_stream(str(_MAX + 1).encode()),
    "server-stream-gzip-at-limit": _server_stream(str(_MAX).encode()),
    "upload-many-small": _upload([b"a"] * 1000),  # (5000 before: half the test's time)
    "upload-empties": _upload([b""] * 50),
    "upload-gzip-bomb": _upload([b"a", b"\0" * (64 * _MAX)], compression=_GZ),
    "bidi-empties": _bidi([b""] * 3),
    "bidi-gzip": _bidi([b"a", b"\0" * _MAX], compression=_GZ),
    "metadata-over-hard-limit": _unary("Length", b"", metadata=(("x-big", "a" * 20000),)),
    "trailing-metadata-over-hard-limit": _unary("Trailing", b"20000"),
}


@contextlib.asynccontextmanager
async def _pairs(registry: LocalRegistry) -> AsyncIterator[dict[str, Any]]:
    """Channels: a plain one to a plain server, a plain one and a mesh one to a meshkit
    server (``serve()`` defaults, ``_OPTS``), a mesh one to the plain server."""
    plain = grpc.aio.server(options=_OPTS)
    plain.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, _HANDLERS),))
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SVC, _HANDLERS),))

    mesh = meshkit.MeshServer("sizes", [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
                                  server_options=_OPTS))
    await mesh.start()
    await registry.register(Instance(service="plainsizes", instance_id="p1",
                                     host="127.0.0.1", port=port))
    dial_opts = meshkit.DialOptions(insecure=True, channel_options=_CLIENT_OPTS)
    chans = {
        "grpc->grpc": grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_CLIENT_OPTS),
        "grpc->serve": grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}",
                                               options=_CLIENT_OPTS),
        "dial->serve": meshkit.dial("sizes", registry=registry, options=dial_opts),
        "dial->grpc": meshkit.dial("plainsizes", registry=registry, options=dial_opts),
    }
    try:
        yield chans
    finally:
        for ch in chans.values():
            await ch.close()
        await plain.stop(None)
        await mesh.drain()


async def _outcome(case: Case, ch: Any) -> Any:
    try:
        return ("OK", await case(ch))
    except grpc.aio.AioRpcError as exc:
        return (exc.code(), exc.details())


@pytest.mark.timeout(120)
async def test_sizes_compression_and_empty_messages_end_as_on_grpc_aio(
    registry: LocalRegistry,
) -> None:
    async with _pairs(registry) as chans:
        got = {name: {pair: await _outcome(case, ch) for pair, ch in chans.items()}
               for name, case in _CASES.items()}
    for name, by_pair in got.items():
        want = by_pair["grpc->grpc"]
        assert all(v == want for v in by_pair.values()), (name, by_pair)
    # and what grpc.aio answers is gRPC's
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert got["unary-empty"]["dial->serve"] == ("OK", b"0")
    assert got["unary-at-limit"]["dial->serve"] == ("OK", str(_MAX).encode())
    assert got["unary-over-limit"]["dial->serve"] == (
        exhausted, f"SERVER: Received message larger than max ({_MAX + 1} vs. {_MAX})")
    assert got["unary-gzip-inflating-to-the-limit"]["dial->serve"] == ("OK", str(_MAX).encode())
    assert got["unary-gzip-bomb"]["dial->serve"][0] is exhausted
    assert got["response-empty"]["dial->serve"] == ("OK", b"")
    assert got["response-over-send-limit"]["dial->serve"] == (
        exhausted, f"SERVER: Sent message larger than max ({_MAX + 1} vs. {_MAX})")
    assert got["server-stream-gzip-at-limit"]["dial->serve"] == ("OK", [0, _MAX])
    assert got["upload-many-small"]["dial->serve"] == ("OK", ",".join(["1"] * 1000).encode())
    assert got["bidi-gzip"]["dial->serve"] == ("OK", [1, _MAX])
    assert got["metadata-over-hard-limit"]["dial->serve"][0] is exhausted
    assert got["trailing-metadata-over-hard-limit"]["dial->serve"][0] is exhausted
