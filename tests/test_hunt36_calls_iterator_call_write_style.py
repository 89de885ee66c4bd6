"""``write()`` and ``done_writing()`` of a stream-stream call made with a request iterator
raise ``grpc.aio.UsageError`` whatever the call's state, as grpc.aio's (its style check
comes first), side by side with a raw grpc.aio channel to the same server. meshkit's
answered so only once the call was open: cancelled (or failed) before it opened, its
``write()`` raised ``InvalidStateError`` "RPC already finished." and its
``done_writing()`` returned, so the misuse went unnoticed until the timing changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshkit.discovery import LocalRegistry
from tests.support.echo import method
from tests.test_grpc_parity import side_by_side


async def _requests() -> AsyncIterator[bytes]:
    yield b"a"


async def _outcome(coro: Any) -> str:
    try:
        return f"ok {await asyncio.wait_for(coro, 5)!r}"
    except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
        return f"{type(exc).__name__} {exc}"


async def _uses(ch: Any) -> list[str]:
    bidi = ch.stream_stream(method("Bidi"))
    out = []
    call = bidi(_requests())
    assert call.cancel()  # before it opened
    out += [await _outcome(call.write(b"x")), await _outcome(call.done_writing())]
    call = bidi(_requests())  # not open yet
    out += [await _outcome(call.write(b"x"))]
    assert await call.read() == b"e1|a"  # open
    out += [await _outcome(call.write(b"x")), await _outcome(call.done_writing())]
    call.cancel()
    return out


async def test_write_on_a_call_made_with_a_request_iterator(
        registry: LocalRegistry) -> None:
    async with side_by_side(registry, {}) as (raw, mesh):
        expected = await _uses(raw)
        assert all(o.startswith("UsageError") for o in expected), expected
        assert await _uses(mesh) == expected
