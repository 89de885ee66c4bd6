"""meshkit._loop.LoopCache: the running task without asyncio's getpid per call, always
the answer asyncio itself gives (tasks, callbacks, loops one after another, threads
sharing one cache, no loop at all), on asyncio's loop and on uvloop's."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from meshkit import _loop
from meshkit._loop import LoopCache
from tests.support.skips import require_uvloop


def _factories() -> list[Any]:
    return [pytest.param(asyncio.new_event_loop, id="asyncio"),
            pytest.param("uvloop", id="uvloop")]


def _factory(which: Any) -> Callable[[], asyncio.AbstractEventLoop]:
    if which == "uvloop":
        require_uvloop()
        import uvloop

        made: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return made
    factory: Callable[[], asyncio.AbstractEventLoop] = which
    return factory


def _run(factory: Callable[[], asyncio.AbstractEventLoop], main: Any) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def test_the_fast_path_is_the_one_that_runs_here() -> None:
    """On CPython 3.11-3.13 asyncio's current-task table is a dict the cache can read."""
    if sys.version_info < (3, 14):
        assert isinstance(_loop._CURRENT_TASKS, dict)


@pytest.mark.parametrize("which", _factories())
def test_the_cache_answers_as_asyncio_in_tasks_callbacks_and_successive_loops(
    which: Any,
) -> None:
    """In each of several concurrent tasks, across awaits, the cache gives that task; in a
    plain callback, no task; after one loop has ended, the next loop's task in the same
    thread (not the old loop's); outside any loop, nothing."""
    factory = _factory(which)
    cache = LoopCache()

    async def main() -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()

        async def check() -> None:
            for _ in range(3):
                assert cache.current_task() is asyncio.current_task()
                await asyncio.sleep(0)

        await asyncio.gather(*(check() for _ in range(5)))
        seen: list[Any] = []
        done = loop.create_future()

        def callback() -> None:  # runs in the loop, outside every task
            seen.append(cache.current_task())
            done.set_result(None)

        loop.call_soon(callback)
        await done
        assert seen == [None]
        assert cache.current_task() is asyncio.current_task()
        return loop

    first = _run(factory, main())
    second = _run(factory, main())
    assert first is not second
    assert cache.current_task() is None


@pytest.mark.parametrize("which", _factories())
def test_threads_sharing_one_cache_each_get_their_own_loop_and_task(which: Any) -> None:
    """Two threads, each running its own loop, ask one cache in turn: each always gets
    its own task, never the other thread's (which is running meanwhile)."""
    factory = _factory(which)
    cache = LoopCache()
    turn = [threading.Event(), threading.Event()]
    wrong: list[str] = []

    async def worker(me: int) -> None:
        task = asyncio.current_task()
        for _ in range(50):
            # wait (inside this task, so it stays current) for this thread's turn
            while not turn[me].wait(0.001):
                pass
            turn[me].clear()
            if cache.current_task() is not task:
                wrong.append(f"thread {me}: another task")
            turn[1 - me].set()

    threads = [threading.Thread(target=_run, args=(factory, worker(i))) for i in (0, 1)]
    for t in threads:
        t.start()
    turn[0].set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
