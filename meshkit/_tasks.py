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
    when it is the task's, not the caller's (``Task.cancelling()``, Python 3.11): a
    cancellation of the caller that arrives during the wait, or was requested before the
    call and not yet delivered, is raised; one the caller was already handling when it
    called this (clean-up in a ``finally:`` of a task ``asyncio.run()`` cancelled on
    Ctrl-C: its ``cancelling()`` stays 1) is not raised again, so that clean-up goes on.
    A cancellation of the caller during the wait is raised even when ``task`` swallows
    it and returns (asyncio hands it to the awaited task).

    Raises:
        asyncio.CancelledError: the caller was cancelled meanwhile.
        Exception: whatever ``task`` raised other than its cancellation.
    """
    current = asyncio.current_task()
    # the caller's cancellations before this call: those it handles already, less one
    # requested and not yet delivered (CPython's Task._must_cancel), which the await
    # below delivers as the task's CancelledError
    before = 0
    if current is not None:
        before = current.cancelling() - bool(getattr(current, "_must_cancel", False))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > before:
            raise
    else:
        # a cancel of the caller while it waited went to ``task`` (asyncio cancels the
        # future a task awaits): one that ``task`` swallowed is the caller's still (one
        # still pending, ``task`` done before the call, asyncio delivers itself)
        if (current is not None and current.cancelling() > before
                and not getattr(current, "_must_cancel", False)):
            raise asyncio.CancelledError
