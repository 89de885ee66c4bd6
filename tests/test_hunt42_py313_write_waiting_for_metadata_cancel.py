"""A stream-stream write that waits inside grpc.aio for the call's opening (its initial
metadata not sent yet) when :meth:`cancel` ends the call must end, not hang.

meshkit bounds a write made before the attempt's grpc.aio call exists (it waits for the
call in meshkit, and a ``cancel()`` there raises ``asyncio.InvalidStateError`` "RPC
already finished.": tests/test_write_racing_a_cancel.py). A few loop turns later the
attempt's call exists but has not sent its initial metadata yet, and the write is in
grpc.aio's ``_StreamRequestMixin._write``, waiting on ``_metadata_sent``: grpc.aio never
sets that event for a call cancelled before its metadata went out, so the write waited
forever (no deadline bounds it; the writing task stays pending until someone cancels it).
Seen on Python 3.11 and 3.13, asyncio's loop and uvloop alike; with
``asyncio.eager_task_factory`` (Python 3.12+) every first write of a stream-stream call
is in that window, and tests/test_write_racing_a_cancel.py's first test hung for its
whole 10 s bound.

The tests step the loop one turn at a time until the write waits on that event, then
end the call: ``cancel()`` (``InvalidStateError``), the channel's ``close()``
(``MeshRpcError`` ``CANCELLED``; on 3.11 the close's cancel usually comes after the
metadata went out, under eager tasks before it), or the writing task's own cancellation
(``CancelledError``, and the call cancelled, as documented: before, only
``cancelled()`` said so while the attempt went on). ``wait_for_connection()`` of a
stream-stream or stream-unary call waited on the same event for good after ``cancel()``,
through attempt interceptors too (grpc.aio's intercepted call waits for its inner call's);
it raises ``CancelledError`` now. The fix (``meshkit/_calls.py``): those waits also end
at the attempt's end (``_metadata_sent_or_end``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshkit.discovery import LocalRegistry
from meshkit.errors import MeshRpcError
from tests.support.attempts import PassAll
from tests.support.echo import method
from tests.test_grpc_parity import DIALS, side_by_side


async def _write_waiting_for_metadata(mesh: Any) -> tuple[Any, asyncio.Future[None]] | None:
    """A bidi call and a write of it that waits in grpc.aio for the call's initial metadata
    to be sent; ``None`` when the metadata went out before the write got there."""
    bidi = mesh.stream_stream(method("Bidi"))()
    writer: asyncio.Future[None] = asyncio.ensure_future(bidi.write(b"a"))
    for _ in range(200):
        await asyncio.sleep(0)
        call = bidi._call
        sent = None if call is None else getattr(call, "_metadata_sent", None)
        if sent is not None:
            if sent.is_set():
                break
            if sent._waiters:  # the write waits in grpc.aio's _write
                return bidi, writer
    bidi.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    return None


async def _in_the_window(mesh: Any) -> tuple[Any, asyncio.Future[None]]:
    for _ in range(20):  # the window is a few loop turns: try again when missed
        found = await _write_waiting_for_metadata(mesh)
        if found is not None:
            return found
    pytest.skip("the call's metadata always went out before the write waited for it")


async def _ended(writer: asyncio.Future[None], what: str) -> None:
    done, _ = await asyncio.wait({writer}, timeout=5)
    if not done:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    assert done, f"still waiting 5 s after {what}"


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_write_waiting_for_the_metadata_when_cancel_ends_the_call(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        bidi, writer = await _in_the_window(mesh)
        assert bidi.cancel()
        await _ended(writer, "cancel() ended the call")
        with pytest.raises(asyncio.InvalidStateError, match=r"RPC already finished\."):
            writer.result()
        assert bidi.cancelled()


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_write_waiting_for_the_metadata_when_the_channel_closes(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """The channel's close() cancels the attempt: the write raises ``CANCELLED``
    (``MeshRpcError``, as a write in flight at the close), it does not wait for good."""
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        bidi, writer = await _in_the_window(mesh)
        await mesh.close()
        await _ended(writer, "the channel's close()")
        with pytest.raises(MeshRpcError) as caught:
            writer.result()
        assert caught.value.code() is grpc.StatusCode.CANCELLED
        assert bidi.done()


@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_write_cancelled_while_waiting_for_the_metadata_cancels_the_call(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    """Cancelling the writing task there raises ``CancelledError`` and cancels the call,
    as documented (``write``: "the writing task was cancelled (the call is too)"): not a
    call reporting ``cancelled()`` while its attempt goes on (``done()`` false, its
    server's handler left waiting for requests)."""
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        bidi, writer = await _in_the_window(mesh)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        assert bidi.cancelled()
        assert bidi.done()
        assert await asyncio.wait_for(bidi.code(), 5) is grpc.StatusCode.CANCELLED


async def _connection_wait_in_the_window(mesh: Any, kind: str) -> tuple[Any, Any]:
    """A call of ``kind`` and its ``wait_for_connection()``, which waits in grpc.aio
    (the attempt's ``wait_for_connection``) for the attempt's initial metadata to go out."""
    for _ in range(40):  # the window is a few loop turns: try again when missed
        call = (mesh.stream_stream(method("Bidi"))() if kind == "bidi"
                else mesh.stream_unary(method("ClientStream"))())
        waiter = asyncio.ensure_future(call.wait_for_connection())
        for _ in range(200):
            await asyncio.sleep(0)
            attempt = call._details.last_call
            task = getattr(attempt, "_interceptors_task", None)
            if task is not None:  # grpc.aio's intercepted call: the one it made
                attempt = task.result() if task.done() and not task.cancelled() else None
            sent = None if attempt is None else getattr(attempt, "_metadata_sent", None)
            if sent is not None:
                if sent.is_set():
                    break
                if sent._waiters:
                    return call, waiter
        call.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    pytest.skip("the call's metadata always went out before the wait got there")


@pytest.mark.parametrize("kind", ["bidi", "stream_unary"])
@pytest.mark.parametrize("dial_kw", [*DIALS, pytest.param(
    {"attempt_interceptors": (PassAll(),)}, id="attempt-interceptor")])
async def test_a_wait_for_connection_waiting_for_the_metadata_when_cancel_ends_the_call(
        registry: LocalRegistry, dial_kw: dict[str, Any], kind: str) -> None:
    """``wait_for_connection()`` of a stream-stream or stream-unary call waits in grpc.aio
    for the attempt's metadata too: ``cancel()`` there ends it with ``CancelledError``
    (as documented, and as grpc.aio's for a call cancelled once connected), it does not
    wait for good."""
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        call, waiter = await _connection_wait_in_the_window(mesh, kind)
        assert call.cancel()
        await _ended(waiter, "cancel() ended the call")
        with pytest.raises(asyncio.CancelledError):
            waiter.result()
        assert call.cancelled()
