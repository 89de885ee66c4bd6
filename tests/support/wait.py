"""Polling helpers: wait for a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(cond: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0,
                interval_s: float = 0.02, what: str = "condition") -> float:
    """Poll ``cond`` until true; return the seconds it took.

    Raises:
        AssertionError: not true within ``timeout_s``.
    """
    t0 = time.monotonic()
    while True:
        r = cond()
        if not isinstance(r, bool):
            r = await r
        if r:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(interval_s)
