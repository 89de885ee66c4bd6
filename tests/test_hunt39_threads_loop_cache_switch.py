"""meshkit._loop.LoopCache shared by threads that each run an event loop (asyncio.run in
a worker thread while another thread runs its own loop, both calling through mesh
channels: ``meshkit._calls`` keeps one cache for the whole process).

The cache kept the loop found last and the thread it was found in as two attributes,
written one after the other: a thread switch between the two writes (CPython may switch
threads at the call that reads the thread id) left the other thread reading one
thread's loop with its own thread id, and the cache answered it with the task the
*other* thread was running. A mesh call takes that task as the one to cancel: its
``cancel()`` then cancelled an unrelated task of another thread's loop (from the wrong
thread) and not the call.

Here the thread switch is made to happen at every read of one thread's key in the cache
(its thread id then; since, its asynchronous-generator hooks, ``_loop._hooks``): each
time it reads it, the other thread asks the cache once. Each must always get its own
task.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from meshkit import _loop
from meshkit._loop import LoopCache

pytestmark = pytest.mark.timeout(60)

_ROUNDS = 20
_WAIT_S = 10.0  # a step's bound (each step takes microseconds)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_thread_switch_inside_the_cache_never_hands_out_another_threads_task(
    monkeypatch: pytest.MonkeyPatch, loop_kind: str,
) -> None:
    if loop_kind == "uvloop":
        from tests.support.skips import require_uvloop

        require_uvloop()
        import uvloop

        factory: Any = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    cache = LoopCache()
    real_ident = threading.get_ident
    real_hooks = _loop._hooks
    switching: dict[str, int] = {}  # {"ident": the switching thread's id}
    ask, answered, ready = threading.Event(), threading.Event(), threading.Event()
    finished = threading.Event()
    wrong: list[str] = []
    asked = [0]

    def switching_hooks() -> Any:
        if real_ident() == switching.get("ident") and not finished.is_set():
            # a thread switch here: the other thread asks the cache once, then back
            answered.clear()
            ask.set()
            if not answered.wait(_WAIT_S):
                wrong.append("the other thread did not answer")
        return real_hooks()

    monkeypatch.setattr(_loop, "_hooks", switching_hooks)

    async def other() -> None:  # thread A: answers each switch with one question
        task = asyncio.current_task()
        ready.set()
        while True:
            if not ask.wait(_WAIT_S):
                wrong.append("thread A was never asked")
                return
            ask.clear()
            if finished.is_set():
                return
            asked[0] += 1
            if cache.current_task() is not task:
                wrong.append("thread A got another thread's task")
            answered.set()

    async def switcher() -> None:  # thread B: asks, switching at each read of its key
        task = asyncio.current_task()
        switching["ident"] = real_ident()
        try:
            for _ in range(_ROUNDS):
                if cache.current_task() is not task:
                    wrong.append("thread B got another thread's task")
                await asyncio.sleep(0)
        finally:
            finished.set()
            ask.set()

    def run(main: Any) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)

    a = threading.Thread(target=run, args=(other(),))
    a.start()
    assert ready.wait(_WAIT_S)
    b = threading.Thread(target=run, args=(switcher(),))
    b.start()
    b.join(30)
    a.join(30)
    assert not a.is_alive() and not b.is_alive()
    assert asked[0] > 0  # the switch did happen inside the cache
    assert sorted(set(wrong)) == []
