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

The test steps the loop one turn at a time until the write waits on that event, then
cancels the call. The fix belongs in ``meshkit/_calls.py`` (``StreamResponseCall.write``,
``await call.write(request)``), owned by another helper of this session: see the xfail.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.discovery import LocalRegistry
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


@pytest.mark.xfail(strict=True, reason=(
    "meshkit/_calls.py StreamResponseCall.write awaits grpc.aio's call.write, which never "
    "returns for a call cancelled before its initial metadata was sent"))
@pytest.mark.parametrize("dial_kw", DIALS)
async def test_a_write_waiting_for_the_metadata_when_cancel_ends_the_call(
        registry: LocalRegistry, dial_kw: dict[str, Any]) -> None:
    async with side_by_side(registry, dial_kw) as (_raw, mesh):
        found = None
        for _ in range(20):  # the window is a few loop turns: try again when missed
            found = await _write_waiting_for_metadata(mesh)
            if found is not None:
                break
        if found is None:
            pytest.skip("the call's metadata always went out before the write waited for it")
        bidi, writer = found
        assert bidi.cancel()
        done, _ = await asyncio.wait({writer}, timeout=5)
        if not done:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        assert done, "the write still waits 5 s after cancel() ended the call"
        with pytest.raises(asyncio.InvalidStateError, match=r"RPC already finished\."):
            writer.result()
        assert bidi.cancelled()
