"""Parity of the servicer context a plain (``def``) handler gets on a meshkit server with
grpc.aio's own synchronous context (``_SyncServicerContext``), side by side with a plain
grpc.aio server on loopback (see tests/test_server_parity.py)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import grpc

from meshkit.discovery import LocalRegistry
from tests.test_server_parity import _m, _side_by_side


def _writes_then_yields(request: bytes, context: Any) -> Iterator[bytes]:
    context.write(b"written")  # grpc.aio: AttributeError, its sync context has no write()
    yield b"yielded"


def _reads(requests: Any, context: Any) -> bytes:
    # the request stream taken first: a call that fails before the client's writes are
    # in can end INTERNAL "Internal error from Core" instead (grpc.aio's client-side race
    # of a write with the status arriving), on a plain grpc.aio server too
    got = list(requests)
    first = context.read()  # grpc.aio: AttributeError, its sync context has no read()
    return b"read:" + bytes(first) + b"|" + b",".join(got)


async def _answers(call: Any, streaming: bool) -> tuple[grpc.StatusCode, list[bytes]]:
    got: list[bytes] = []
    with contextlib.suppress(grpc.aio.AioRpcError):
        if streaming:
            async for message in call:
                got.append(message)
        else:
            got.append(await call)
    return await call.code(), got


async def test_a_plain_handlers_context_write_and_read_fail_as_on_grpc_aio(
    registry: LocalRegistry,
) -> None:
    """A plain handler calling ``context.write(msg)`` or ``context.read()`` fails the call
    ``UNKNOWN`` (``AttributeError``) as on grpc.aio, instead of getting an unawaited
    coroutine that silently dropped the message or handed back no request."""
    handlers = {
        "Write": grpc.unary_stream_rpc_method_handler(_writes_then_yields),
        "Read": grpc.stream_unary_rpc_method_handler(_reads),
    }
    async with _side_by_side(registry, handlers) as (plain, mesh):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for ch in (plain, mesh):
                code, got = await _answers(
                    ch.unary_stream(_m("Write"))(b"x", timeout=5), streaming=True)
                assert (code, got) == (grpc.StatusCode.UNKNOWN, []), ch
                code, got = await _answers(
                    ch.stream_unary(_m("Read"))(iter([b"a", b"b"]), timeout=5),
                    streaming=False)
                assert (code, got) == (grpc.StatusCode.UNKNOWN, []), ch
        assert not [w for w in caught if "never awaited" in str(w.message)]


async def _async_writer(request: bytes, context: Any) -> Any:
    await context.write(b"written")
    yield b"yielded"


def _decorated(request: bytes, context: Any) -> Any:
    return _async_writer(request, context)  # a plain decorator around an async handler


async def test_a_plain_decorator_around_an_async_handler_still_writes(
    registry: LocalRegistry,
) -> None:
    """A plain function returning an async handler's stream (a decorator) still gets a
    context whose ``write()`` the stream awaits on the loop: both messages arrive."""
    handlers = {"Deco": grpc.unary_stream_rpc_method_handler(_decorated)}
    async with _side_by_side(registry, handlers) as (_plain, mesh):
        code, got = await _answers(mesh.unary_stream(_m("Deco"))(b"x", timeout=5),
                                   streaming=True)
        assert (code, got) == (grpc.StatusCode.OK, [b"written", b"yielded"])
