"""A stream-stream ``write()`` the call refuses whatever the message (after
``done_writing()``, on a call made with a request iterator, once the call has ended) with
a message its serializer refuses: grpc.aio's ``write`` checks the call's state first and
raises ``InvalidStateError`` / ``UsageError``, the call going on as it was. meshkit's
serialized first and ended the call ``INTERNAL`` (``RequestSerializationError``): a
half-closed stream still answering lost its responses, an iterator's call was cut, a
cancelled call reported ``INTERNAL``. Side by side with a raw grpc.aio channel to the same
server; a refused message on a call that takes writes still ends it ``INTERNAL``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshkit.discovery import LocalRegistry
from meshkit.errors import RequestSerializationError
from tests.support.echo import method
from tests.test_grpc_parity import side_by_side


def _ser(message: Any) -> bytes:
    if not isinstance(message, bytes):
        raise TypeError("not bytes")
    return message


async def _outcome(coro: Any) -> str:
    try:
        return f"ok {await asyncio.wait_for(coro, 5)!r}"
    except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
        return f"{type(exc).__name__} {exc}"
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}"


async def _uses(ch: Any) -> list[str]:
    bidi = ch.stream_stream(method("Bidi"), request_serializer=_ser)
    out = []
    call = bidi()
    await call.write(b"a")
    await call.done_writing()
    out += [await _outcome(call.write(object())), await _outcome(call.read()),
            await _outcome(call.read()), await _outcome(call.code())]

    more = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        await more.wait()

    call = bidi(requests())
    out += [await _outcome(call.read()), await _outcome(call.write(object()))]
    more.set()
    out += [await _outcome(call.read()), await _outcome(call.code())]

    call = bidi()
    await call.write(b"a")
    assert await call.read() == b"e1|a"
    call.cancel()
    out += [await _outcome(call.write(object())), await _outcome(call.code())]
    return out


async def test_a_refused_write_a_call_refuses_anyway_leaves_the_call(
        registry: LocalRegistry) -> None:
    async with side_by_side(registry, {}) as (raw, mesh):
        expected = await _uses(raw)
        assert expected[0].startswith("InvalidStateError RPC is half closed"), expected
        assert await _uses(mesh) == expected
        # a call that takes the write: the refused message ends it INTERNAL, as before
        call = mesh.stream_stream(method("Bidi"), request_serializer=_ser)()
        await call.write(b"a")
        try:
            await call.write(object())
        except RequestSerializationError:
            pass
        else:
            raise AssertionError("the refused message was written")
        assert await _outcome(call.read()) == "INTERNAL"
        assert await call.code() is grpc.StatusCode.INTERNAL
