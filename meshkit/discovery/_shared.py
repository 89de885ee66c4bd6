"""Plumbing shared by the network registries (Consul, etcd): ending waits at close, retry
backoff and error text (their options are built with :mod:`meshkit.discovery._options`).
No policy lives here."""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["CLOSED", "CloseRace", "Closed", "describe", "full_jitter"]

_T = TypeVar("_T")


class Closed(enum.Enum):
    """The sentinel type of :data:`CLOSED`."""

    CLOSED = enum.auto()


#: What :meth:`CloseRace.race` returns when the registry closed first.
CLOSED = Closed.CLOSED


class CloseRace:
    """Lets a registry's waits (a blocking query, a backoff sleep) end when it is closed."""

    __slots__ = ("_event", "closed", "inflight")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False
        self.inflight: set[asyncio.Future[Any]] = set()

    async def race(self, aw: Coroutine[Any, Any, _T]) -> _T | Closed:
        """Await ``aw`` unless :meth:`close` comes first (then cancel it, return CLOSED).

        Raises:
            whatever ``aw`` raises.
        """
        if self.closed:
            aw.close()
            return CLOSED
        task = asyncio.ensure_future(aw)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        closed = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        return CLOSED

    def close(self) -> list[asyncio.Future[Any]]:
        """Mark closed, wake every race; return the in-flight tasks (for the caller to
        cancel and gather with its own)."""
        self.closed = True
        self._event.set()
        return list(self.inflight)


def full_jitter(rng: random.Random, attempt: int, base_s: float, max_s: float) -> float:
    """Full-jitter exponential backoff, seconds: ``uniform(0, min(max_s, base_s *
    2**(attempt-1)))`` for the ``attempt``-th retry (1-based)."""
    cap = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    return rng.uniform(0.0, cap)


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of a foreign error, at most 500 characters."""
    detail = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "no detail")
    return f"{type(exc).__name__}: {detail}"[:500]
