"""Review r4 of fd59a4aa: a bidi stream whose write met the server's end (its end held,
``meshkit._calls._HeldEnd``), its responses unread, no deadline. ``code()`` then waits
for the server's status (``_server_status``), which grpc core gives once the responses
are read. grpc.aio reports such an attempt done (its stand-in ``INTERNAL``), so the
call's ``cancel()`` did nothing (returned ``False``) and a ``code()`` already waiting
never ended: measured on a ``MeshServer``, still waiting 5 s after ``cancel()``. A
plain grpc.aio stream's ``cancel()`` ends its ``code()`` wait with ``CANCELLED``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from tests.support.held_end import ServedStack, answer_once, write_all

pytestmark = pytest.mark.timeout(120)

APP = "meshkit.test.R4HeldCancel"


def _add(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                APP, {"Once": grpc.stream_stream_rpc_method_handler(answer_once)}
            ),
        )
    )


async def _held(ch: Any) -> Any:
    """A stream (no deadline) whose write met the server's end, its answer unread."""
    for _ in range(20):
        call = ch.stream_stream(f"/{APP}/Once")()
        if await write_all(call):
            return call
        assert [m async for m in call] == [b"one"]
    raise AssertionError("no write met the server's end in 20 streams")


async def test_cancel_ends_a_code_wait_of_an_unread_held_stream(registry: LocalRegistry) -> None:
    """``cancel()`` of a stream whose end is held, its answer unread and no deadline:
    returns ``True`` and a ``code()`` already waiting ends ``CANCELLED`` (within 5 s),
    as a plain grpc.aio stream's cancel ends its ``code()``."""
    async with ServedStack(registry, "r4held", _add, "r4") as ch:
        call = await _held(ch)
        asked = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.3)
        assert not asked.done()  # waiting for the server's status (responses unread)
        assert call.cancel() is True
        done, _ = await asyncio.wait([asked], timeout=5)
        if not done:
            asked.cancel()
        assert done, "code() still waiting 5 s after cancel()"
        assert asked.result() is grpc.StatusCode.CANCELLED
        assert call.cancelled()
        assert call.cancel() is False  # once


async def test_closing_the_channel_ends_a_code_wait_of_an_unread_held_stream(
    registry: LocalRegistry,
) -> None:
    """The channel's ``close()`` ends a ``code()`` awaiting the server's status of a stream
    whose end is held, its answer unread, no deadline: ``CANCELLED`` within 5 s, as
    grpc.aio's channel close cancels a stream (measured before: still waiting 5 s after
    the close, looking every 50 ms for good)."""
    stack = ServedStack(registry, "r4held", _add, "r4")
    async with stack as ch:
        call = await _held(ch)
        asked = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.3)
        assert not asked.done()
        await asyncio.wait_for(ch.close(), 10)
        done, _ = await asyncio.wait([asked], timeout=5)
        if not done:
            asked.cancel()
        assert done, "code() still waiting 5 s after the channel's close()"
        assert asked.result() is grpc.StatusCode.CANCELLED
