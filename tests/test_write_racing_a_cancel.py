"""A ``write()`` to a stream-stream call still opening, when another task's ``cancel()``
ends the call, raises ``asyncio.InvalidStateError`` "RPC already finished.", as grpc.aio's
intercepted stream call (``InterceptedStreamStreamCall.write``: ``await
self._interceptors_task`` raising ``CancelledError`` becomes ``InvalidStateError``), not
``asyncio.CancelledError`` in the writing task, which nobody cancelled: a writer in an
``asyncio.TaskGroup`` then ended as if cancelled, silently (the case 56e0b3b fixed for a
write made after the cancel, not one already waiting). A writer whose own task is
cancelled still ends with ``CancelledError``. (A raw grpc.aio call's write waiting for its
start in that race never returns at all; meshkit's is bounded here.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.discovery import LocalRegistry
from tests.support.echo import method
from tests.test_grpc_parity import DIALS, side_by_side


async def _outcome(fut: Any) -> str:
    try:
        await asyncio.wait_for(fut, 10)
    except (asyncio.InvalidStateError, asyncio.CancelledError) as exc:
        return f"{type(exc).__name__} {exc}".strip()
    return "written"


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_write_waiting_for_the_opening_when_cancel_ends_the_call(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        bidi = mesh.stream_stream(method("Bidi"))()
        writer = asyncio.ensure_future(bidi.write(b"a"))
        await asyncio.sleep(0)  # the write is waiting for the attempt to open
        assert not bidi.done()
        assert bidi.cancel()
        assert await _outcome(writer) == "InvalidStateError RPC already finished."

        bidi = mesh.stream_stream(method("Bidi"))()
        outcome = "the group ended quietly"
        try:
            async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
                tg.create_task(bidi.write(b"a"))
                await asyncio.sleep(0)
                bidi.cancel()
        except* asyncio.InvalidStateError:
            outcome = "the group raised InvalidStateError"
        assert outcome == "the group raised InvalidStateError"

        # the writer's own task cancelled while it waits: CancelledError, the call cancelled
        bidi = mesh.stream_stream(method("Bidi"))()
        writer = asyncio.ensure_future(bidi.write(b"a"))
        await asyncio.sleep(0)
        writer.cancel()
        assert await _outcome(writer) == "CancelledError"
        assert bidi.cancelled()
