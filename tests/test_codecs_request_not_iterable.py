"""A stream's request that cannot be iterated ends the call as the iterator's own failure.

A client- or bidi-streaming call's request is an iterable (sync or async) of messages.
One that is none (an ``int``, a message given where a list of them was meant), or whose
``__iter__`` / ``__aiter__`` raises or returns no iterator, failed the call
``MeshRpcError(CANCELLED)`` "... cancelled: the channel was closed or its endpoint left",
blaming the channel for the caller's argument (the ``iter()`` ran inside the mesh's
serializing generator but outside its ``try``, so grpc.aio's request consumer saw a bare
exception and cancelled the call); a stream-unary call whose ``__iter__`` raised something
other than ``TypeError`` raised that exception bare. Now each is
:class:`~meshkit.errors.RequestIteratorError` (``UNKNOWN``, naming the exception type, the
exception as ``__cause__``), as for an iterator that raises mid-stream.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import RequestIteratorError
from tests.conftest import EchoFactory
from tests.support.attempts import PassAll
from tests.support.echo import method


class _IterRaises:
    def __iter__(self) -> Any:
        raise LookupError("no messages")


class _AIterRaises:
    def __aiter__(self) -> Any:
        raise LookupError("no messages")


class _AIterNoIterator:
    def __aiter__(self) -> Any:
        return 5


_REQUESTS = {"int": (5, TypeError), "iter-raises": (_IterRaises(), LookupError),
             "aiter-raises": (_AIterRaises(), LookupError),
             "aiter-no-iterator": (_AIterNoIterator(), TypeError)}


@pytest.mark.parametrize("attempts", [{}, {"attempt_interceptors": (PassAll(),)}],
                         ids=["in-mesh", "attempt-interceptors"])
@pytest.mark.timeout(60)
async def test_a_request_that_cannot_be_iterated_is_the_callers_error(
    registry: LocalRegistry, echo_servers: EchoFactory, attempts: dict[str, Any],
) -> None:
    await echo_servers("e1")
    opts = meshkit.DialOptions(insecure=True, retry=None, **attempts)
    async with meshkit.dial("echo", registry=registry, options=opts) as ch:
        upload = ch.stream_unary(method("ClientStream"))
        bidi = ch.stream_stream(method("Bidi"))
        for name, (request, cause) in _REQUESTS.items():
            with pytest.raises(RequestIteratorError) as err:
                await upload(request, timeout=10)
            assert err.value.code() is grpc.StatusCode.UNKNOWN, (name, err.value)
            assert isinstance(err.value.__cause__, cause), (name, err.value.__cause__)
            assert cause.__name__ in (err.value.details() or ""), name
            call = bidi(request, timeout=10)
            with pytest.raises(RequestIteratorError) as err:
                async for _ in call:
                    pass
            assert isinstance(err.value.__cause__, cause), (name, err.value.__cause__)
            assert await call.code() is grpc.StatusCode.UNKNOWN, name
        # the channel still serves
        assert await upload(iter([b"a", b"b"]), timeout=10) == b"e1|a,b"
