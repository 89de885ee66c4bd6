"""Running a service's event loop: uvloop's when it is installed, else asyncio's.

grpc.aio runs on any asyncio event loop (its poller hands completions to the loop with
``call_soon_threadsafe``). On asyncio's own loop every turn is Python code (``_run_once``,
``selectors``, a ``Handle`` per callback), and grpc.aio takes about a dozen turns per unary
call; uvloop (libuv, the loop uvicorn runs on) does the same in C. Measured with callgrind
(``benchmarks/RESULTS.md``, one caller, client and server in one process), uvloop took
raw grpc.aio from about 742k to 527k instructions per call and ``dial()``/``serve()``
with their defaults from about 947k to 693k: below raw grpc.aio on asyncio's loop. It
also takes the per-turn cost of pending timers (``loop.call_later``: meshkit's registry
watch and access log hold one) out of Python. One thing works differently there: uvloop
does not show its ready queue, so a server judges by its request gate's count of calls
instead whether to capture a JSON access record after the answer, in the loop's next turn
(:class:`~meshkit.observability.TelemetryServerInterceptor`): when the finishing call is
the only one.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from meshkit._fork import reset_in_forked_child
from meshkit.errors import ConfigError

__all__ = ["LoopCache", "run", "uvloop_installed"]

_T = TypeVar("_T")


def _uvloop() -> Any:
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


def uvloop_installed() -> bool:
    """Whether uvloop can be imported (``pip install 'meshkit[fast]'`` installs it)."""
    return _uvloop() is not None


def run(main: Coroutine[Any, Any, _T], *, use_uvloop: bool | None = None,
        debug: bool | None = None) -> _T:
    """Run ``main`` to completion on a new event loop and close it, as :func:`asyncio.run`
    does; the loop is uvloop's when uvloop is installed, else asyncio's.

    Args:
        main: the coroutine to run (e.g. the service's ``main()``).
        use_uvloop: ``None`` (default): uvloop when installed; ``True``: uvloop or a
            :class:`~meshkit.errors.ConfigError`; ``False``: asyncio's own loop.
        debug: asyncio debug mode (default: from ``PYTHONASYNCIODEBUG``, as asyncio).

    Returns:
        what ``main`` returns.

    Raises:
        ConfigError: ``use_uvloop=True`` and uvloop is not installed, or ``use_uvloop``
            or ``debug`` is not ``None``, ``True`` or ``False`` (a string such as
            ``"false"``, ``0``: quoted); ``main`` is closed, not run.
        RuntimeError: called from a running event loop (as :func:`asyncio.run`; ``main``
            is closed, no loop is made and the running one is left as it is).
        BaseException: whatever ``main`` raises.
    """
    if asyncio._get_running_loop() is not None:
        # before any loop is made (asyncio.run's check): asyncio.Runner made and set a new
        # one first, then failed shutting it down, and left the thread's loop unset
        _close(main)
        raise RuntimeError("meshkit.run() cannot be called from a running event loop")
    for name, flag in (("use_uvloop", use_uvloop), ("debug", debug)):
        if flag is not None and not isinstance(flag, bool):
            _close(main)
            raise ConfigError(f"run(): {name} must be None, True or False, got {flag!r}")
    uvloop = _uvloop() if use_uvloop is not False else None
    if use_uvloop and uvloop is None:
        _close(main)
        raise ConfigError("run(use_uvloop=True): uvloop is not installed "
                          "(pip install 'meshkit[fast]')")
    factory = uvloop.new_event_loop if uvloop is not None else None
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


def _close(main: Any) -> None:
    """Close the coroutine :func:`run` will not run (no "never awaited" warning); anything
    else it was given is left for :class:`asyncio.Runner` to refuse."""
    close = getattr(main, "close", None)
    if close is not None:
        close()


# asyncio's {loop: the task running on it now}, which current_task() reads (CPython 3.11 to
# 3.13); where asyncio keeps it elsewhere, an empty table: asked, it always sends the
# cache to asyncio
_tasks_table = getattr(asyncio.tasks, "_current_tasks", None)
_CURRENT_TASKS: dict[Any, asyncio.Task[Any]] = (
    _tasks_table if isinstance(_tasks_table, dict) else {})
_tasks_get = _CURRENT_TASKS.get
# this thread's asynchronous-generator hooks: a running asyncio or uvloop loop sets them,
# bound to itself, in the thread it runs in (run_forever), and puts back the old ones
# when it stops; a C function reading the thread's state, no system call
_hooks = sys.get_asyncgen_hooks


class LoopCache:
    """``asyncio.current_task()`` for code that asks on every call, without its
    ``get_running_loop()``.

    On CPython 3.11 every ``asyncio.get_running_loop()`` checks the process id with a
    ``getpid`` system call (``strace``: the only system call the mesh added per call);
    ``current_task()`` is a Python function around it: 0.29-0.72 us on the benchmarks'
    VM, depending on its load, against about 0.2 us here. This keeps the loop found last
    and the first-iteration asynchronous-generator hook it had set in the thread it was
    found in (``sys.get_asyncgen_hooks()``: asyncio's and uvloop's ``run_forever`` set
    a method bound to the loop, per thread, for as long as the loop runs there), and reads
    asyncio's current-task table for that loop while the caller's thread holds that same
    hook: the loop runs in the caller's thread, and a thread runs one loop at a time, so
    a task running on it is the caller's. Kept by thread id instead, a loop that stopped
    in one thread and ran again in another while the first thread ran a loop of its own
    gave the first thread's tasks the task the moved loop ran in the other thread.
    Anything else (another thread, another loop, a callback outside any task, a loop
    that stopped, hooks the application set itself, a Python that keeps the table
    elsewhere) asks asyncio and remembers the answer. The loop and its hook are kept as
    one pair, read and written whole: threads running loops of their own share a cache
    (``meshkit._calls`` keeps one per process), and kept as two attributes a thread
    switch between their writes let a thread read another thread's loop with its own
    thread's key, and get that thread's task (a mesh call's ``cancel()`` then cancelled
    a task of another thread's loop instead).
    A cache per user (the request gate keeps one). In a child
    made by ``os.fork()`` it forgets the loop found (``os.register_at_fork``): forked
    while that loop ran a task (a ``ProcessPoolExecutor`` worker, forked from inside
    the loop by ``run_in_executor``), the child inherits the table's entry for it, the
    thread's hooks stay the same, and the cache answered with the parent's task, a copy
    that never runs there, in every task of the child's own loop.
    """

    __slots__ = ("__weakref__", "_found")

    def __init__(self) -> None:
        # (the loop found last, the hook it had set in the thread it was found in): one
        # pair; (None, None) matches a thread outside any loop, where no task runs
        self._found: tuple[asyncio.AbstractEventLoop | None, object] = (None, None)
        _caches.add(self)

    def _forget_parent(self) -> None:
        """In a forked child: ask asyncio again (see the class)."""
        self._found = (None, None)

    def current_task(self) -> asyncio.Task[Any] | None:
        """The task running now (``None`` outside a task or outside a loop)."""
        loop, hook = self._found
        if hook == _hooks().firstiter:  # bound methods: equal when bound to one loop
            task = _tasks_get(loop)
            if task is not None:
                return task
        loop = asyncio._get_running_loop()
        hook = _hooks().firstiter
        # only a hook bound to the loop says where it runs: one the application set
        # may be the same in every thread (then asyncio is asked every time)
        self._found = (loop, hook) if getattr(hook, "__self__", None) is loop \
            else (None, None)
        return None if loop is None else asyncio.current_task(loop)


# every cache forgets its loop in a forked child (LoopCache._forget_parent)
_caches = reset_in_forked_child(LoopCache)
