"""A handler's trailing metadata carrying ``grpc-timeout`` no longer aborts the server.

``grpc-timeout`` is a request header (PROTOCOL-HTTP2.md, *Requests*). grpc core sends
trailing (or initial) metadata from a server only after a ``CHECK`` that it holds none:
``chttp2_transport.cc`` "Check failed: !...send_trailing_metadata->get(GrpcTimeoutMetadata())"
(grpcio 1.85), whatever the value, and the whole process aborts (SIGABRT), every call of
every server in it lost. A handler that set it (``set_trailing_metadata``, e.g. echoing
its caller's budget back under that name) crashed the server at its first call.
meshkit checks a handler's trailing metadata before grpc.aio sends it
(:func:`meshkit._handlers._unsendable_trailers`, :func:`meshkit._metadata.check_metadata`
without ``request``): ``grpc-timeout`` is now refused there as other unsendable metadata
is, the call answered ``INTERNAL`` naming the key; so is a plain-function handler's
``abort`` or ``send_initial_metadata`` with it (meshkit's synchronous context). As request
metadata it stays accepted (grpc core leaves it out, the call's own deadline is sent)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit._metadata import check_metadata
from meshkit.discovery import LocalRegistry
from meshkit.errors import InvalidMetadataError

_TIMEOUT = (("grpc-timeout", "1S"),)


def test_check_metadata_refuses_grpc_timeout_in_a_handlers_metadata_only() -> None:
    for md in (_TIMEOUT, ((b"grpc-timeout", b"5m"),), (("x-a", "v"), ("grpc-timeout", "x"))):
        for _ in range(2):  # never remembered as legal
            with pytest.raises(InvalidMetadataError, match="grpc-timeout") as err:
                check_metadata(md)
            assert err.value.code() is grpc.StatusCode.INTERNAL
    check_metadata(_TIMEOUT, request=True)
    with pytest.raises(InvalidMetadataError):
        check_metadata(_TIMEOUT)


async def _unary(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata(_TIMEOUT)
    return b"r"


async def _stream(request: bytes, context: Any) -> Any:
    yield b"first"
    context.set_trailing_metadata(_TIMEOUT)


def _plain(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata(_TIMEOUT)
    return b"r"


def _plain_abort(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no", _TIMEOUT)
    return b"unreached"


def _plain_initial(request: bytes, context: Any) -> Iterator[bytes]:
    context.send_initial_metadata(_TIMEOUT)
    yield b"unreached"


def _plain_initial_metadata(request: bytes, context: Any) -> Iterator[bytes]:
    context.send_initial_metadata(grpc.aio.Metadata(*_TIMEOUT))
    yield b"unreached"


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Timeout", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Plain": grpc.unary_unary_rpc_method_handler(_plain),
        "PlainAbort": grpc.unary_unary_rpc_method_handler(_plain_abort),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "PlainInitial": grpc.unary_stream_rpc_method_handler(_plain_initial),
        "PlainInitialMetadata": grpc.unary_stream_rpc_method_handler(
            _plain_initial_metadata)}),))


@pytest.mark.parametrize("options", [{}, {"telemetry": None, "expose_exception_text": True}],
                         ids=["default", "bare"])
@pytest.mark.timeout(60)
async def test_a_handlers_trailing_grpc_timeout_is_answered_internal(
    registry: LocalRegistry, options: dict[str, Any],
) -> None:
    srv = meshkit.MeshServer("timeoutd", [(_add, None)], registry=registry,
                             options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                          grace_s=1.0, admin=None, **options))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for name in ("Unary", "Plain", "PlainAbort"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary(f"/t.Timeout/{name}")(b"x", timeout=10)
                assert err.value.code() is grpc.StatusCode.INTERNAL, (name, err.value)
                assert "'grpc-timeout'" in (err.value.details() or ""), (name, err.value)
            for name, before in (("Stream", [b"first"]), ("PlainInitial", []),
                                 ("PlainInitialMetadata", [])):
                got: list[bytes] = []
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for m in ch.unary_stream(f"/t.Timeout/{name}")(b"x", timeout=10):
                        got.append(m)
                assert got == before, name
                assert err.value.code() in (grpc.StatusCode.INTERNAL,
                                            grpc.StatusCode.UNKNOWN), (name, err.value)
                assert "grpc-timeout" in (err.value.details() or ""), (name, err.value)
    finally:
        await srv.drain()
