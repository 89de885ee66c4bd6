"""Review of f34d375a (InlineUnaryUnary.__call__ writes grpc.aio's ``Call.__init__`` out,
checked at import by ``_plain_init``) and 52ee09ba (a cancelled later await of an inline
call cancels it).

``_plain_init`` reads ``Call.__init__.__code__``: an ``__init__`` wrapped by a proxy that
forwards attribute reads to the function it wraps (``wrapt.FunctionWrapper``, how
instrumentation libraries patch functions) shows the wrapped function's code, so the
wrapper would be skipped by every inline call. Only a plain function is written out.

The later awaits: one cancelled in the turn the call ends (its wait already woken)
leaves the call answered; the first awaiting task cancelled ends the later awaits
cancelled, as grpc.aio's own call. Real server, loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit import _inline
from meshkit._inline import InlineUnaryUnary, inline_unary_unary
from tests.conftest import EchoFactory
from tests.support.echo import method


class _Forwarding:
    """A function proxy reading every attribute from the function it wraps (as
    ``wrapt.ObjectProxy``), calling ``seen`` first."""

    def __init__(self, wrapped: Any, seen: list[Any]) -> None:
        self.__wrapped__ = wrapped
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:  # read from the class: the proxy itself, as wrapt's
            return self

        def bound(*args: Any, **kwargs: Any) -> Any:
            self._seen.append(args)
            return self.__wrapped__(instance, *args, **kwargs)
        return bound


def _same_shape() -> type:
    class Same:
        def __init__(self, cython_call: Any, metadata: Any, request_serializer: Any,
                     response_deserializer: Any, loop: Any) -> None:
            self._loop = loop
            self._cython_call = cython_call
            self._metadata = tuple(metadata)
            self._request_serializer = request_serializer
            self._response_deserializer = response_deserializer
    return Same


def test_a_proxied_call_init_is_not_written_out() -> None:
    same = _same_shape()
    assert _inline._plain_init(same)
    seen: list[Any] = []
    proxied = _same_shape()
    proxied.__init__ = _Forwarding(same.__init__, seen)  # type: ignore[misc]
    assert proxied.__init__.__code__ is same.__init__.__code__  # type: ignore[misc]
    proxied(1, (), None, None, None)
    assert seen, "the proxy is what the class calls"
    assert not _inline._plain_init(proxied)


def test_a_wrapt_wrapped_call_init_is_not_written_out() -> None:
    wrapt = pytest.importorskip("wrapt")
    same = _same_shape()
    wrapped = _same_shape()
    wrapped.__init__ = wrapt.FunctionWrapper(  # type: ignore[misc]
        same.__init__, lambda f, instance, args, kwargs: f(*args, **kwargs))
    assert not _inline._plain_init(wrapped)


@pytest.mark.skipif(_inline._FOUND is None, reason="grpc.aio internals of another shape")
async def test_a_later_await_cancelled_as_the_call_ends_leaves_it_answered(
        echo_servers: EchoFactory) -> None:
    server = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        start = inline_unary_unary(channel.unary_unary(method("Sleep")))
        assert isinstance(start, InlineUnaryUnary)
        call = start(b"3000", timeout=30)  # the handler sleeps 3 s
        later: list[asyncio.Future[Any]] = []

        async def first_await() -> Any:
            response = await call
            # its later await's wait is woken now; cancelled before it resumes
            later[0].cancel()
            return response

        async def later_await() -> Any:
            return await call

        first = asyncio.ensure_future(first_await())
        await asyncio.sleep(0.2)
        later.append(asyncio.ensure_future(later_await()))
        await asyncio.sleep(0.2)
        assert not first.done()
        assert call._waiters is not None and len(call._waiters) == 1
        assert await asyncio.wait_for(first, 20) == b"e1"
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(later[0], 10)
        assert not call.cancelled()
        assert await call.code() is grpc.StatusCode.OK
        assert await call == b"e1"


@pytest.mark.parametrize("path", ["grpc", "inline"], ids=["grpc", "inline"])
async def test_the_first_awaiter_cancelled_ends_the_later_ones_cancelled(
        echo_servers: EchoFactory, path: str) -> None:
    server = await echo_servers("e1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        public = channel.unary_unary(method("Sleep"))
        start = inline_unary_unary(public) if path == "inline" else public
        call = start(b"20000", timeout=30)  # the handler sleeps 20 s

        async def awaited() -> Any:
            return await call

        first = asyncio.ensure_future(awaited())
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(awaited())
        await asyncio.sleep(0.2)
        assert not second.done()
        first.cancel()
        done, _ = await asyncio.wait({first, second}, timeout=10)
        assert done == {first, second}, "an await ran on after the call was cancelled"
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                task.result()
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
