"""Review of 3aa8ff0d (a handler call queued while no thread could start runs as soon as
a thread can start): two paths it left where such a call still waited for a busy thread.

* A call submitted once starts work again started a thread for itself only: that new
  thread took the oldest queued call (the queue is first in, first out), and the new
  call was left queued behind the busy threads, though a start had just worked. With no
  event loop (nothing retries on a timer) it waited for a busy thread to finish; on a
  loop, for the next retry (up to 0.5 s). Now a start that works pays the calls owed.
* The retry timer was one per pool, kept until it ran: a pool whose timer was left on a
  loop that ended (``asyncio.run`` returned, its timer never ran; asyncio does not
  cancel it) scheduled none on the next loop (the old handle still "pending"), so a call
  queued there waited for a busy thread again. Now a timer on a loop that no longer runs
  does not count.

The failing start is the one thing injected (``threading.Thread.start`` raising as
CPython's does, for the pool's threads only).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from meshkit._threads import HandlerThreads

pytestmark = pytest.mark.timeout(60)

_PREFIX = "hunt43-review-owed"
_WAIT_S = 10.0


class _Starts:
    """Whether the pool's thread starts fail, and how many did."""

    def __init__(self) -> None:
        self.failing = False
        self.refused = 0


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Starts]:
    state = _Starts()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(_PREFIX) and state.failing:
            state.refused += 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    yield state


def _hold(event: threading.Event) -> str:
    event.wait(_WAIT_S * 3)
    return "held"


def test_a_start_that_works_pays_the_calls_owed_a_thread(starts: _Starts) -> None:
    """No event loop: one busy thread, a second call owed a thread (its start failed);
    starts work again and a third call comes: the second and the third each get a
    thread, the third is not left behind the busy ones."""
    pool = HandlerThreads(4, _PREFIX)
    first, second_release = threading.Event(), threading.Event()
    try:
        busy = pool.submit(_hold, first)
        starts.failing = True
        second = pool.submit(_hold, second_release)
        assert starts.refused == 1
        starts.failing = False
        third = pool.submit(lambda: "ran")
        # TimeoutError: the third call waits behind the busy first and second
        assert third.result(timeout=_WAIT_S) == "ran"
        assert not busy.done() and not second.done()
    finally:
        first.set()
        second_release.set()
        pool.shutdown(wait=True)


def test_a_pool_whose_retry_was_left_on_an_ended_loop_retries_on_the_next(
        starts: _Starts) -> None:
    """A call owed a thread on one loop (its retry timer scheduled there), the loop ends
    before the timer runs; on a second loop another call's start fails: once starts
    work again both queued calls run while the first call still holds its thread."""
    pool = HandlerThreads(4, _PREFIX)
    release = threading.Event()
    try:
        busy = pool.submit(_hold, release)
        starts.failing = True

        async def owe_one() -> Future[Any]:
            return pool.submit(lambda: "first loop")  # its retry timer on this loop

        queued_first = asyncio.run(owe_one())  # ends before the timer's 0.05 s

        async def owe_another() -> tuple[Any, Any]:
            queued = pool.submit(lambda: "second loop")
            assert starts.refused >= 2
            await asyncio.sleep(0.2)
            assert not queued.done()  # no thread for it yet
            starts.failing = False
            # TimeoutError: no retry on this loop, both wait for the busy thread
            return await asyncio.wait_for(
                asyncio.gather(asyncio.wrap_future(queued_first),
                               asyncio.wrap_future(queued)), _WAIT_S)

        assert asyncio.run(owe_another()) == ["first loop", "second loop"]
        assert not busy.done()
    finally:
        release.set()
        pool.shutdown(wait=True)
