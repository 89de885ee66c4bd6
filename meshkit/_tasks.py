"""Ending the background tasks meshkit owns (heartbeats, keep-alives, watches).

A low-level module (standard library only), so any meshkit package may use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, keeping a cancellation of the caller.

    ``contextlib.suppress(asyncio.CancelledError)`` around ``await task`` (the usual way)
    also swallows the caller's own cancellation when it arrives during that wait, so a
    ``close()`` or ``drain()`` cancelled there (``asyncio.wait_for`` running out, a
    ``TaskGroup`` failing) goes on with its next steps as if nothing had happened, and a
    ``wait_for`` waits for all of them. Here the ``CancelledError`` is swallowed only
    when it is the task's, not the caller's (``Task.cancelling()``, Python 3.11).

    Raises:
        asyncio.CancelledError: the caller was cancelled meanwhile.
        Exception: whatever ``task`` raised other than its cancellation.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
