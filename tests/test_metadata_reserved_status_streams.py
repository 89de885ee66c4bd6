"""``grpc-status`` in request metadata is refused on every path of a meshkit call, not only
the two :mod:`tests.test_metadata_reserved_status` covers (unary inline, server stream).

The channel checks request metadata at three places (``check_metadata(md,
request=True)``): the unary attempt (inline or through grpc.aio's public path), the
request-stream attempt (client-streaming calls, ``_attempt_upload``) and the stream
attempt (server-streaming and bidi calls). Putting the default (``request=False``) back
at the request-stream one passed every test before this file: a client stream with
``grpc-status: 14`` then reached the endpoint, and grpc.aio ended it ``OK`` without its
response while the server ran the handler (the response ``None``, answered ``INTERNAL``
"no response message" through ``dial()`` and counted against the endpoint).
PROTOCOL-HTTP2.md sends ``grpc-status`` only in a response's trailers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.balancer import OutlierOptions
from meshkit.discovery import LocalRegistry
from meshkit.errors import InvalidMetadataError
from tests.conftest import EchoFactory
from tests.support.echo import method

_MD = (("grpc-status", "14"),)


class _PassThrough(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """An attempt interceptor that changes nothing: with one, unary attempts take
    grpc.aio's public path, not meshkit's inline one."""

    async def intercept_unary_unary(self, continuation: Any, details: Any,
                                    request: Any) -> Any:
        return await continuation(details, request)


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


@pytest.mark.timeout(60)
@pytest.mark.parametrize("public", [False, True], ids=["inline", "public-path"])
async def test_grpc_status_is_refused_on_every_call_shape_before_the_pick(
    registry: LocalRegistry, echo_servers: EchoFactory, public: bool,
) -> None:
    await echo_servers("e1")
    opts = meshkit.DialOptions(
        insecure=True, outlier=OutlierOptions(consecutive_failures=1),
        attempt_interceptors=(_PassThrough(),) if public else ())
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        await ch.wait_for_endpoints(1)
        with pytest.raises(InvalidMetadataError, match="'grpc-status'") as err:
            await ch.unary_unary(method("Unary"))(b"x", timeout=5, metadata=_MD)
        assert err.value.code() is grpc.StatusCode.INTERNAL
        with pytest.raises(InvalidMetadataError, match="'grpc-status'"):
            await ch.stream_unary(method("ClientStream"))(
                _requests(b"a", b"b"), timeout=5, metadata=_MD)
        with pytest.raises(InvalidMetadataError, match="'grpc-status'"):
            await ch.stream_unary(method("ClientStream"))(
                iter([b"a"]), timeout=5, metadata=(("x-ok", "1"), ("grpc-status", "0")))
        with pytest.raises(InvalidMetadataError, match="'grpc-status'"):
            async for _ in ch.stream_stream(method("Bidi"))(
                    _requests(b"a"), timeout=5, metadata=_MD):
                pass
        # an upper-case spelling is no legal key at all: refused too, named
        with pytest.raises(InvalidMetadataError, match="Grpc-Status"):
            await ch.stream_unary(method("ClientStream"))(
                _requests(b"a"), timeout=5, metadata=(("Grpc-Status", "14"),))
        st = ch.stats()
        # nothing was sent: no endpoint's call, failure or ejection
        assert st.ejections == 0, st
        assert [(e.calls, e.failures, e.ejected) for e in st.endpoints] == [(0, 0, False)]
        # the same calls without it are answered
        assert await ch.stream_unary(method("ClientStream"))(
            _requests(b"a", b"b"), timeout=5, metadata=(("x-ok", "1"),)) == b"e1|a,b"
        got = [m async for m in ch.stream_stream(method("Bidi"))(_requests(b"a"), timeout=5)]
        assert got == [b"e1|a"], got
        assert await ch.unary_unary(method("Unary"))(b"y", timeout=5) == b"e1|y"
