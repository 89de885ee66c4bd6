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
cannot send."""

from __future__ import annotations

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import LocalRegistry
from meshkit.errors import InvalidMetadataError
from tests.conftest import EchoFactory
from tests.support.echo import method

_MD = (("grpc-status", "14"),)


@pytest.mark.timeout(60)
async def test_grpc_status_as_request_metadata_is_refused_before_the_pick(
    registry: LocalRegistry, echo_servers: EchoFactory,
) -> None:
    served: list[str] = []
    srv = await echo_servers("e1", served=served)
    # what grpc.aio does with it: the handler runs, its messages never reach the caller
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as plain:
        call = plain.unary_stream(method("ServerStream"))(b"2", timeout=5, metadata=_MD)
        got = [m async for m in call]
        assert (got, await call.code()) == ([], grpc.StatusCode.OK)
        assert await plain.unary_unary(method("Unary"))(b"x", timeout=5, metadata=_MD) is None
    assert served == ["Unary"], served  # (the echo's ServerStream records nothing)
    served.clear()

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
