"""``write()`` to a stream-stream call cancelled before it opened raises
``asyncio.InvalidStateError`` "RPC already finished.", as grpc.aio's (``_write``: ``if
self.done(): raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED_DETAILS)``), side by
side with a raw grpc.aio channel to the same server. meshkit's raised
``asyncio.CancelledError`` in the writing task, which nobody had cancelled: a writer in an
``asyncio.TaskGroup`` then ended as if cancelled, silently, its error never raised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.discovery import LocalRegistry
from tests.support.echo import method
from tests.test_grpc_parity import DIALS, side_by_side


async def _write_outcome(ch: Any, opened: bool) -> str:
    bidi = ch.stream_stream(method("Bidi"))()
    if opened:
        await asyncio.wait_for(bidi.write(b"a"), 10)
    assert bidi.cancel()
    try:
        await asyncio.wait_for(bidi.write(b"b"), 10)
    except asyncio.InvalidStateError as exc:
        return f"InvalidStateError {exc}"
    except asyncio.CancelledError:
        return "CancelledError"
    return "written"


async def _writer_in_a_task_group(ch: Any) -> str:
    bidi = ch.stream_stream(method("Bidi"))()
    bidi.cancel()
    outcome = "the group ended quietly"
    try:
        async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
            tg.create_task(bidi.write(b"b"))
    except* asyncio.InvalidStateError:
        outcome = "the group raised InvalidStateError"
    return outcome


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_write_to_a_stream_cancelled_before_it_opened(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (raw, mesh):
        for opened in (False, True):
            expected = await _write_outcome(raw, opened)
            assert expected == "InvalidStateError RPC already finished.", (opened, expected)
            assert await _write_outcome(mesh, opened) == expected, opened
        expected = await _writer_in_a_task_group(raw)
        assert expected == "the group raised InvalidStateError"
        assert await _writer_in_a_task_group(mesh) == expected
