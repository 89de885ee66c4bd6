"""meshkit._loop.LoopCache when a loop moves to another thread while its old thread runs
another loop.

The cache kept (the loop found last, the id of the thread it was found in) and, while
the caller was that thread, answered with the loop's entry in asyncio's current-task
table. A loop can stop in one thread and run again in another (``run_until_complete``
from a new thread) while the old thread starts a loop of its own: a task of the old
thread then got the task the moved loop was running in the *other* thread (a mesh
call's ``cancel()`` took it as the call's task and cancelled it instead). The cache now
checks that the loop found runs in the caller's thread by its asynchronous-generator
hooks (``sys.get_asyncgen_hooks()``, set per thread by every running asyncio or uvloop
loop, bound to that loop).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from meshkit._loop import LoopCache

pytestmark = pytest.mark.timeout(60)

_WAIT_S = 10.0  # a step's bound (each step takes microseconds)


def _factory(which: str) -> Any:
    if which == "uvloop":
        from tests.support.skips import require_uvloop

        require_uvloop()
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


@pytest.mark.parametrize("which", ["asyncio", "uvloop"])
def test_a_thread_whose_loop_moved_away_gets_its_own_task(which: str) -> None:
    """Thread A finds loop 1 in the cache, loop 1 moves to thread B, where a task of it
    holds the thread; thread A, now in a task of loop 2, gets that task, not B's."""
    factory = _factory(which)
    cache = LoopCache()
    first = factory()
    second = factory()
    b_running, a_done = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}
    b: list[threading.Thread] = []

    async def found() -> None:  # in thread A: the cache finds loop 1 there
        assert cache.current_task() is asyncio.current_task()

    async def hold() -> None:  # in thread B: loop 1's task, holding B until A asked
        seen["b"] = asyncio.current_task()
        b_running.set()
        a_done.wait(_WAIT_S)

    async def ask() -> None:  # in thread A, loop 2
        seen["a"] = asyncio.current_task()
        seen["a answered"] = cache.current_task()

    def thread_a() -> None:
        first.run_until_complete(found())
        b.append(threading.Thread(target=first.run_until_complete, args=(hold(),)))
        b[0].start()
        try:
            if b_running.wait(_WAIT_S):
                second.run_until_complete(ask())
        finally:
            a_done.set()

    a = threading.Thread(target=thread_a)
    try:
        a.start()
        a.join(30)
        assert b_running.is_set() and not a.is_alive()
        b[0].join(30)  # loop 1 stops in thread B
        assert not b[0].is_alive()
        assert seen["a answered"] is seen["a"]
        assert seen["a answered"] is not seen["b"]
    finally:
        a_done.set()
        for thread in b:
            thread.join(30)
        for loop in (first, second):
            if not loop.is_running():
                loop.close()
