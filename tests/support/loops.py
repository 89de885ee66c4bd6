"""Event loops for tests of meshkit objects that outlive one loop: ``asyncio.run()`` more
than once in a process, and a loop in a thread of its own."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the suite's kind: uvloop's with ``MESHKIT_TEST_LOOP=uvloop``;
    asyncio's with ``asyncio.eager_task_factory`` with ``MESHKIT_TEST_LOOP=eager`` (Python
    3.12+; a ``RuntimeError`` before); else asyncio's."""
    kind = os.environ.get("MESHKIT_TEST_LOOP", "asyncio")
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    loop = asyncio.new_event_loop()
    if kind == "eager":
        eager = getattr(asyncio, "eager_task_factory", None)
        if eager is None:
            loop.close()
            raise RuntimeError("MESHKIT_TEST_LOOP=eager needs Python 3.12+ "
                               "(asyncio.eager_task_factory)")
        loop.set_task_factory(eager)
    return loop


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on a new loop of the suite's kind (closed after)."""
    factory: Callable[[], asyncio.AbstractEventLoop] = new_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


class LoopThread:
    """An event loop running in a thread of its own (e.g. a server the test's loops talk
    to, living across them)."""

    def __init__(self) -> None:
        self.loop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float = 10.0) -> _T:
        """Run ``coro`` on the thread's loop; its result within ``timeout_s``."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        """Stop the loop, join the thread and close the loop."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


#: The loop kinds a test of a per-loop fast path runs on: asyncio's loop, the same in
#: debug mode (``asyncio.Runner(debug=True)``), asyncio's loop with a ``call_soon`` of its
#: own (a subclass the test passes), and uvloop's.
LOOP_KINDS = ("asyncio", "asyncio-debug", "own-call_soon", "uvloop")


def loop_kind_factory(kind: str, own_call_soon: Callable[[], asyncio.AbstractEventLoop]
                      ) -> Callable[[], asyncio.AbstractEventLoop]:
    """The ``asyncio.Runner(loop_factory=...)`` of one of :data:`LOOP_KINDS`:
    ``own_call_soon`` for ``"own-call_soon"``, uvloop's (the test skipped with the reason
    when uvloop is not installed) for ``"uvloop"``, else asyncio's (debug mode is the
    Runner's ``debug=``)."""
    if kind == "uvloop":
        from tests.support.skips import require_uvloop

        require_uvloop()
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    if kind == "own-call_soon":
        return own_call_soon
    return asyncio.new_event_loop
