"""A ``close()`` after the channel's close task was cancelled (the loop-ending sweep of
``asyncio.run()``, which cancels every task left, ``MeshChannel``'s shielded close task
among them; a helper cancelling every task) returns, and finishes the closing
(meshkit/channel.py).

``close()`` awaited the shielded task the first ``close()`` made; once that task was
cancelled, every later ``close()`` raised ``CancelledError`` into its caller, which no
one had cancelled (an ``async with`` exit, a shutdown hook: the caller's own task then
looked cancelled), and the rest of the closing (an owned registry's close, the final
counters, the access log's flush) never ran."""

from __future__ import annotations

import asyncio

import pytest

import meshkit
from meshkit.discovery import LocalRegistry


async def test_a_close_after_the_close_task_was_cancelled_returns(
        registry: LocalRegistry) -> None:
    ch = meshkit.dial("nobody", registry=registry,
                      options=meshkit.DialOptions(insecure=True))
    first = asyncio.ensure_future(ch.close())
    await asyncio.sleep(0)  # the close task is made
    task = ch._closing
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(ch.close(), 3)  # CancelledError before
    assert ch._closing is not None and ch._closing.done()
    assert not ch._closing.cancelled()

