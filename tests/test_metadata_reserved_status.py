"""``grpc-status`` given as request metadata: a meshkit call refuses it before the pick.

gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md) sends ``grpc-status`` only in a
response's *Trailers* (``Status → "grpc-status" 1*DIGIT``), and reserves ``grpc-`` header
names: "Header names starting with "grpc-" but not listed here are reserved for future
GRPC use and should not be used by applications as Custom-Metadata" (grpc-go drops it
from request headers). grpcio sends it anyway, and a non-zero one breaks the call
silently: the server runs the handler, but the client gets ``OK`` with no messages: a
unary call's response is ``None``, a server stream yields nothing and ends ``OK`` (its
messages lost). Through ``meshkit.dial`` the unary call then failed ``INTERNAL`` "no
response message", counted against a healthy endpoint (ejecting it), and the server
stream lost its messages under ``OK``. Now it is ``InvalidMetadataError`` (``INTERNAL``
naming the key), raised before any endpoint is picked, as for other metadata gRPC
cannot send.

The check is ``check_metadata(md, request=True)`` (:mod:`meshkit._metadata`); a handler's
*trailing* metadata keeps the default (``request=False``): there grpc core's own status
replaces a ``grpc-status`` a handler set, and a plain grpc.aio server answers as if it
were not there. The channel (``meshkit/channel.py``, three ``check_metadata(md)`` calls:
unary, server-stream and request-stream paths) must pass ``request=True``; until it does,
the end-to-end test is an expected failure."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit._metadata import check_metadata
from meshkit.balancer import OutlierOptions
from meshkit.discovery import LocalRegistry
from meshkit.errors import InvalidMetadataError
from tests.conftest import EchoFactory
from tests.support.echo import method

_MD = (("grpc-status", "14"),)


def test_request_metadata_check_refuses_grpc_status_and_trailers_keep_it() -> None:
    for md in (_MD, (("grpc-status", "0"),), ((b"grpc-status", b"5"),),
               (("x-ok", "v"), ("grpc-status", "2"))):
        with pytest.raises(InvalidMetadataError, match=r"grpc-status.*trailers") as err:
            check_metadata(md, request=True)
        assert err.value.code() is grpc.StatusCode.INTERNAL
    # seen once as a trailer (legal there), still refused as a request's, every time
    check_metadata(_MD)
    for _ in range(3):
        with pytest.raises(InvalidMetadataError):
            check_metadata(_MD, request=True)
    check_metadata((("grpc-foo", "1"), ("grpc-message", "m")), request=True)


@pytest.mark.timeout(60)
async def test_a_handlers_trailing_grpc_status_is_answered_as_grpc_aio_answers_it(
    registry: LocalRegistry,
) -> None:
    """The server side keeps grpc.aio's answer: the handler's status, ``OK`` here."""
    async def trailing(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("grpc-status", "5"),))
        return b"r"

    handlers = {"T": grpc.unary_unary_rpc_method_handler(trailing)}
    plain = grpc.aio.server()
    plain.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    port = plain.add_insecure_port("127.0.0.1:0")
    await plain.start()

    def add(_servicer: Any, server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))

    mesh = meshkit.MeshServer("t", [(add, None)], registry=registry,
                              options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0,
                                                           grace_s=1.0, admin=None))
    await mesh.start()
    got = []
    try:
        for p in (port, mesh.port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{p}") as ch:
                call = ch.unary_unary("/t.T/T")(b"x", timeout=5)
                got.append((await call, await call.code()))
    finally:
        await plain.stop(None)
        await mesh.drain()
    assert got == [(b"r", grpc.StatusCode.OK)] * 2, got


@pytest.mark.timeout(60)
async def test_grpc_aio_loses_the_answer_of_a_call_with_grpc_status_metadata(
    echo_servers: EchoFactory,
) -> None:
    """Why it is refused: grpc.aio sends it, the handler runs, and its answer never
    reaches the caller, which is told ``OK`` (grpcio 1.85)."""
    served: list[str] = []
    srv = await echo_servers("e1", served=served)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as plain:
        call = plain.unary_stream(method("ServerStream"))(b"2", timeout=5, metadata=_MD)
        got = [m async for m in call]
        assert (got, await call.code()) == ([], grpc.StatusCode.OK)
        assert await plain.unary_unary(method("Unary"))(b"x", timeout=5, metadata=_MD) is None
        # without it, the same calls are answered
        call = plain.unary_stream(method("ServerStream"))(b"2", timeout=5)
        assert len([m async for m in call]) == 2
    assert served == ["Unary"], served  # (the echo's ServerStream records nothing)


@pytest.mark.timeout(60)
async def test_grpc_status_as_request_metadata_is_refused_before_the_pick(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    served: list[str] = []
    await echo_servers("e1", served=served)
    opts = meshkit.DialOptions(insecure=True, outlier=OutlierOptions(consecutive_failures=1))
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        unary = ch.unary_unary(method("Unary"))
        for _ in range(3):
            with pytest.raises(InvalidMetadataError) as err:
                await unary(b"x", timeout=5, metadata=_MD)
            assert err.value.code() is grpc.StatusCode.INTERNAL
            assert "'grpc-status'" in (err.value.details() or ""), err.value.details()
        with pytest.raises(InvalidMetadataError, match="'grpc-status'"):
            async for _ in ch.unary_stream(method("ServerStream"))(b"2", timeout=5,
                                                                   metadata=_MD):
                pass
        # a bytes key is the same key
        with pytest.raises(InvalidMetadataError, match="grpc-status"):
            await unary(b"x", timeout=5, metadata=((b"grpc-status", b"14"),))
        st = ch.stats()
        assert st.ejections == 0
        assert [(e.calls, e.failures, e.ejected) for e in st.endpoints] == [(0, 0, False)]
        # the handler never ran; the channel still serves, other grpc- keys pass
        assert served == []
        assert await unary(b"y", timeout=5, metadata=(("grpc-foo", "1"),)) == b"e1|y"
