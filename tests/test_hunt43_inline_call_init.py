"""InlineUnaryUnary.__call__ writes grpc.aio's ``Call.__init__`` out (no frame per call):
the call it makes holds what that ``__init__`` would have set, and an ``__init__`` of
another shape (another grpcio) turns the inline path off (:func:`_plain_init`)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit import _inline


class _FakeAioChannel:
    def call(self, method: bytes, deadline: Any, credentials: Any, wait_for_ready: Any,
             handle: Any) -> Any:
        return ("cython-call", method, deadline, wait_for_ready)


def _public(loop: asyncio.AbstractEventLoop) -> Any:
    class Public:
        _channel = _FakeAioChannel()
        _method = b"/pkg.Svc/M"
        _request_serializer = None
        _response_deserializer = None
        _registered_call_handle = 0

    Public._loop = loop  # type: ignore[attr-defined]
    return Public()


@pytest.mark.skipif(_inline._FOUND is None, reason="grpc.aio internals of another shape")
@pytest.mark.parametrize("metadata", [None, (), [("k", "v")], (("a", "1"), ("b-bin", b"x"))],
                         ids=["none", "empty", "list", "tuple"])
def test_the_call_holds_what_call_init_sets(metadata: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        multi = _inline.InlineUnaryUnary(_public(loop))
        call = multi(b"req", metadata=metadata)
        want = object.__new__(_inline.InlineUnaryUnaryCall)
        _inline._Call.__init__(want, call._cython_call, metadata or (), None, None, loop)
        for name in ("_loop", "_cython_call", "_metadata", "_request_serializer",
                     "_response_deserializer"):
            assert getattr(call, name) == getattr(want, name), name
        assert type(call._metadata) is tuple
        assert call._request == b"req"
        assert call in multi._active
        multi._active.clear()
        del call._cython_call  # (the fake is no cygrpc call: __del__ must not cancel it)
        del want._cython_call
    finally:
        loop.close()


def test_an_init_of_another_shape_is_not_written_out() -> None:
    assert _inline._plain_init(grpc.aio._call.Call) is (_inline._FOUND is not None)

    class MoreInit:
        def __init__(self, cython_call: Any, metadata: Any, request_serializer: Any,
                     response_deserializer: Any, loop: Any) -> None:
            self._loop = loop
            self._cython_call = cython_call
            self._metadata = tuple(metadata)
            self._request_serializer = request_serializer
            self._response_deserializer = response_deserializer
            self._extra = loop  # something more than grpc 1.85's

    class Same:
        def __init__(self, cython_call: Any, metadata: Any, request_serializer: Any,
                     response_deserializer: Any, loop: Any) -> None:
            self._loop = loop
            self._cython_call = cython_call
            self._metadata = tuple(metadata)
            self._request_serializer = request_serializer
            self._response_deserializer = response_deserializer

    class OwnNew(Same):
        def __new__(cls, *args: Any) -> Any:
            return super().__new__(cls)

    assert _inline._plain_init(Same)
    assert not _inline._plain_init(MoreInit)
    assert not _inline._plain_init(OwnNew)
    assert not _inline._plain_init(object)
