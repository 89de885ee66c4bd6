"""A registry request raced against the registry's close (``CloseRace.race``: Consul's
and etcd's blocking queries and backoffs) whose waiter is cancelled (the watch ends: the
channel closing) in the very loop turn its request fails (a request timeout firing as
the watch is cancelled, on a loaded loop): the request's task was left done with its
exception and nobody read it, so asyncio logged "Task exception was never retrieved"
with the whole traceback at ERROR when the task was collected. The race now reads the
outcome of the task it started whatever ends the wait."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from typing import Any

import pytest

from meshkit.discovery._shared import CloseRace

pytestmark = pytest.mark.timeout(10)


async def _times_out() -> None:
    raise TimeoutError  # as asyncio.timeout() ends a request that ran out


async def _turns(cond: Callable[[], bool]) -> None:
    """A few loop turns, until ``cond()`` (it holds within two or three)."""
    for _ in range(50):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


@pytest.mark.parametrize("ended_by", ["cancel", "close"])
async def test_a_failure_in_the_turn_the_race_ends_is_not_left_unread(ended_by: str) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        race = CloseRace()
        waiter = asyncio.ensure_future(race.race(_times_out()))
        await _turns(lambda: bool(race.inflight))  # the race has started its task
        (inner,) = race.inflight
        # it failed; the race has not woken yet (awaiting it would read its failure)
        await _turns(inner.done)
        if ended_by == "cancel":
            waiter.cancel()  # the watch ends in the same turn
            with pytest.raises(asyncio.CancelledError):
                await waiter
        else:
            race.close()
            with contextlib.suppress(TimeoutError):
                await waiter  # CLOSED or the error: either way it was read
        del inner, waiter
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    unread = [c for c in reported if "never retrieved" in str(c.get("message"))]
    assert not unread, unread
