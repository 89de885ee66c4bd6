"""meshkit._loop.LoopCache under ``asyncio.eager_task_factory`` (Python 3.12+): an eager
task runs its first step inside ``create_task()``, in the creating task's (or callback's)
loop step, and asyncio's current-task table names it only for that step. The cache (keyed
by the loop's first-iteration asyncgen hook since 30e72feb, which 3.12+ asyncio sets in
``_run_forever_setup``) must read the table each time, never keep a task: in the eager
step it gives the eager task, right after ``create_task()`` the creator again (or none in
a callback), as asyncio does. Checked on 3.12.1 and 3.13.0, asyncio's loop and (3.12)
uvloop; uvloop 0.23 passes ``eager_start`` to a task factory, which 3.13's eager factory
does not take, so that pairing fails in asyncio itself and is not run here."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from meshkit._loop import LoopCache
from tests.support.skips import require_uvloop

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.version_info < (3, 12),
                       reason="asyncio.eager_task_factory is new in Python 3.12"),
]


def _factory(which: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if which == "uvloop":
        if sys.version_info >= (3, 13):
            pytest.skip("uvloop 0.23's create_task passes eager_start, which 3.13's "
                        "eager_task_factory does not take (TypeError in asyncio)")
        require_uvloop()
        import uvloop

        made: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return made
    return asyncio.new_event_loop


def _eager_run(factory: Callable[[], asyncio.AbstractEventLoop], cache: LoopCache,
               wrong: list[str]) -> None:
    """Run tasks created eagerly (nested, finished inside ``create_task()``, from a
    callback), comparing the cache with asyncio at every step; mismatches in ``wrong``."""

    def check(where: str) -> None:
        if cache.current_task() is not asyncio.current_task():
            wrong.append(where)

    async def leaf(depth: int) -> None:
        check(f"eager first step, depth {depth}")
        if depth < 3:
            child = asyncio.create_task(leaf(depth + 1))  # runs its first step now
            check(f"creator after an eager create, depth {depth}")
            await child
        await asyncio.sleep(0)
        check(f"after an await, depth {depth}")

    async def done_at_once() -> int:
        check("a task finished inside create_task()")
        return 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        check("main")
        finished = asyncio.create_task(done_at_once())
        check("main after a task finished inside create_task()")
        assert finished.done()
        await asyncio.gather(*(leaf(0) for _ in range(4)))
        ended = loop.create_future()

        def callback() -> None:  # outside every task
            check("callback")
            task = loop.create_task(leaf(0))
            check("callback after an eager create")
            task.add_done_callback(lambda _: ended.set_result(None))

        loop.call_soon(callback)
        await ended
        check("main at its end")

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("which", ["asyncio", "uvloop"], ids=["asyncio", "uvloop"])
def test_the_cache_follows_eager_tasks(which: str) -> None:
    """In an eager task's first step, right after its create_task() and in a callback
    that creates one, the cache gives what asyncio.current_task() gives; loops one after
    another and four threads running their own loops share one cache."""
    factory = _factory(which)
    cache = LoopCache()
    wrong: list[str] = []
    for _ in range(2):
        _eager_run(factory, cache, wrong)
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            _eager_run(factory, cache, wrong)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads: list[Any] = [threading.Thread(target=in_thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert wrong == []
