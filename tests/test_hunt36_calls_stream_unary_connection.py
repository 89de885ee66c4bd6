"""``wait_for_connection()`` of a stream-unary call returns once its request stream is open
(grpc.aio's: ``await self._metadata_sent.wait()``), side by side with a raw grpc.aio channel
to the same server. meshkit's waited for the call's end: a call sent with ``write()``
whose caller waited for the connection before writing (the documented use) waited for
ever, the call waiting for the writes that came after; one sent with a request iterator
waited until the whole upload was sent and answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshkit.discovery import LocalRegistry
from tests.support.echo import method
from tests.test_grpc_parity import DIALS, side_by_side


async def _written(ch: Any) -> Any:
    call = ch.stream_unary(method("ClientStream"))()
    await asyncio.wait_for(call.wait_for_connection(), 5)
    await call.write(b"a")
    await call.done_writing()
    return await asyncio.wait_for(call, 5)


async def _iterated(ch: Any) -> Any:
    more = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        await more.wait()  # sent only once the wait for the connection returned
        yield b"b"

    call = ch.stream_unary(method("ClientStream"))(requests())
    await asyncio.wait_for(call.wait_for_connection(), 5)
    assert not call.done()
    more.set()
    return await asyncio.wait_for(call, 5)


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_wait_for_connection_of_a_stream_unary_call_before_its_requests(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for ch in (raw, mesh):
            assert await _written(ch) == b"e1|a", ch
            assert await _iterated(ch) == b"e1|a,b", ch
        # a call that ended first raises its outcome, as the await (grpc.aio's 1.85 waits
        # for ever there: its _metadata_sent is never set)
        call = mesh.stream_unary(method("ClientStream"))()
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call.wait_for_connection(), 5)
