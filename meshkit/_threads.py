"""The threads a server runs its plain-function (``def``) handlers on.

:class:`HandlerThreads` is ``concurrent.futures.ThreadPoolExecutor``'s contract (threads
started on demand up to ``max_workers``, an idle one reused first, ``shutdown(wait,
cancel_futures)``) with one difference: its threads are daemon threads that interpreter
exit does not join. A ``ThreadPoolExecutor``'s workers are joined at exit (its
``threading._register_atexit`` hook and ``threading._shutdown``), so one handler still
blocked when its server's drain ran out (``grace_s``) kept the process alive after
``serve()`` and ``meshkit.run()`` had returned, until the supervisor's ``SIGKILL``
(exit 137 instead of 0). The drain has already ended that handler's call; nothing waits
for its result.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import structlog

from meshkit._fork import reset_in_forked_child

__all__ = ["HandlerThreads", "NoHandlerThread"]

_T = TypeVar("_T")

_log = structlog.get_logger("meshkit.server")

_Work = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]

_RETRY_FIRST_S = 0.05
"""Seconds before the first new try to start a thread for calls queued while none could
start (on the submitting event loop); doubled after each failed try, up to
:data:`_RETRY_MAX_S`."""
_RETRY_MAX_S = 0.5


class NoHandlerThread(RuntimeError):
    """:meth:`HandlerThreads.submit` found no thread in its pool and could not start one
    (``RuntimeError: can't start new thread``, its cause; its text the same): nothing was
    queued, so the work never runs. A server refuses the call as one none of whose code
    ran (see :func:`meshkit._handlers.refuse_no_thread`)."""


def _cpu_count() -> int | None:
    """The CPUs ``ThreadPoolExecutor`` sizes its default pool by: those this process may
    run on from Python 3.13 (``os.process_cpu_count()``), the machine's before."""
    count: Callable[[], int | None] = getattr(os, "process_cpu_count", os.cpu_count)
    return count()


class HandlerThreads(Executor):
    """A pool of up to ``max_workers`` daemon threads named ``<thread_name_prefix>_<n>``,
    each started when a submitted call finds no idle one.

    In a child made by ``os.fork()`` the pool starts afresh (:meth:`_forget_parent`):
    no thread of the parent's is there, so the child's calls get threads of its own.

    Args:
        max_workers: the most threads, an int >= 1 (the caller validates it,
            ``ServeOptions.handler_threads``); ``None``: ``ThreadPoolExecutor``'s default,
            ``min(32, cpus + 4)``, ``cpus`` the CPUs this process may run on from Python
            3.13 (``os.process_cpu_count()``: its CPU affinity), the machine's before.
        thread_name_prefix: the threads' name prefix, e.g. ``meshkit-handler-<service>``.
    """

    def __init__(self, max_workers: int | None, thread_name_prefix: str) -> None:
        self._max = (min(32, (_cpu_count() or 1) + 4) if max_workers is None
                     else max_workers)
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shutdown = False
        self._start_failing = False  # a thread start failed (warned) since one worked
        # calls queued with neither an idle thread's permit nor a thread of their own
        # (past max_workers, or no thread could start) not yet paid for by a thread
        # finishing a call: one that does takes such a call instead of counting itself
        # idle (ThreadPoolExecutor's count, released after every call, kept one permit
        # too many per such call for good: later calls took a permit and waited behind a
        # busy thread instead of starting one, the pool never grew back)
        self._owed = 0
        # the event loop timer that tries again to start threads for owed calls while
        # the pool is below max_workers (a start failed), and its loop: see _retry_starts
        self._retry: asyncio.TimerHandle | None = None
        self._retry_loop: asyncio.AbstractEventLoop | None = None
        _pools.add(self)

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()`` (:func:`~meshkit._fork.reset_in_forked_child`):
        only the forking thread exists there, so the parent's threads, the idle permits
        they released, the calls queued for them and the lock as it was at the fork (held,
        maybe, by a thread that is not there) are dropped, and the pool starts with no
        thread, as a new one (a call submitted then starts one). Kept: ``max_workers``,
        the name prefix and whether the pool was shut down. The parent's queued calls
        are the parent's; their futures here are never completed (nothing in the child
        waits for them)."""
        self._work = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = []
        self._start_failing = False
        self._owed = 0
        self._retry = None  # (a timer of the parent's loop)
        self._retry_loop = None

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` on a pool thread; its ``Future``.

        A thread the work needs is started before the work is queued. One that cannot
        be started (``RuntimeError: can't start new thread``: a container's
        ``pids.max``, ``RLIMIT_NPROC``): with other threads in the pool the work waits
        for one of them to finish a call, or for a start that works again, whichever
        comes first (the start is tried again on the submitting event loop, after 0.05 s
        doubling to 0.5 s, by a thread finishing a call while more work waits with
        none counted for it, and by a later call whose own thread starts; a warning of
        the ``meshkit.server`` logger with the error, once until a start works again);
        with none
        :class:`NoHandlerThread` is raised (the same warning, once) and nothing is
        queued, so the work never runs later (``ThreadPoolExecutor`` queues the work
        first: the error raised to the caller, the work still ran once a thread freed
        up, a call its caller was told had failed).

        Raises:
            NoHandlerThread: (a ``RuntimeError``) the pool has no thread and none can be
                started (nothing queued).
            RuntimeError: after :meth:`shutdown`, as ``ThreadPoolExecutor``.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle.acquire(blocking=False):
                pass
            elif len(self._threads) >= self._max:
                self._owed += 1
            else:
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"{self._prefix}_{len(self._threads)}")
                try:
                    thread.start()
                except RuntimeError as exc:
                    warn = not self._start_failing  # once until a start works again
                    self._start_failing = True
                    if not self._threads:
                        if warn:
                            _log.warning("could not start a handler thread: calls are "
                                         "refused 'server busy'", threads=0,
                                         error=str(exc) or repr(exc))
                        raise NoHandlerThread(*exc.args) from exc
                    if warn:
                        _log.warning("could not start another handler thread: calls wait "
                                     "for a busy one", threads=len(self._threads),
                                     error=str(exc) or repr(exc))
                    self._owed += 1
                    self._schedule_retry(_RETRY_FIRST_S)
                else:
                    self._start_failing = False
                    self._threads.append(thread)
                    # starts work again: the calls queued while they failed get a thread
                    # each now (else the new thread takes the oldest of them, first in
                    # first out, and this call waits in its place behind busy threads)
                    if self._owed and not self._start_owed():
                        self._schedule_retry(_RETRY_FIRST_S)
            future: Future[_T] = Future()
            self._work.put((future, fn, args, kwargs))
        return future

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            future, fn, args, kwargs = work
            del work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs
            with self._lock:
                if self._owed:  # a call waits with no thread counted for it: take it
                    self._owed -= 1
                    # more waiting while the pool is below max_workers (starts failed):
                    # a thread each now, not one after the other on this one
                    self._start_owed()
                else:  # idle (permits are only taken, and owed, under the lock)
                    self._idle.release()

    def _start_owed(self) -> bool:
        """With the lock held: start a thread for each call queued with none counted for
        it (``_owed``) while the pool is below ``max_workers``, each new thread paying
        one. False when a start failed (calls still owed; logged as in :meth:`submit`,
        once until a start works again), True otherwise."""
        while self._owed and not self._shutdown and len(self._threads) < self._max:
            thread = threading.Thread(target=self._run, daemon=True,
                                      name=f"{self._prefix}_{len(self._threads)}")
            try:
                thread.start()
            except RuntimeError as exc:
                if not self._start_failing:
                    self._start_failing = True
                    _log.warning("could not start another handler thread: calls wait "
                                 "for a busy one", threads=len(self._threads),
                                 error=str(exc) or repr(exc))
                return False
            self._start_failing = False
            self._threads.append(thread)
            self._owed -= 1
        return True

    def _schedule_retry(self, delay_s: float) -> None:
        """With the lock held: try :meth:`_start_owed` again in ``delay_s`` seconds on the
        calling thread's running event loop (a server submits from its loop); nothing
        without one (then a thread finishing a call, or the next :meth:`submit`, tries)
        or when a try is already scheduled on a loop that runs (one left on a loop that
        ended, whose timer never ran and asyncio does not cancel, does not count)."""
        if (self._retry is not None and not self._retry.cancelled()
                and self._retry_loop is not None and self._retry_loop.is_running()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._retry = loop.call_later(delay_s, self._retry_starts, loop, delay_s)
        self._retry_loop = loop

    def _retry_starts(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        """The event loop timer of :meth:`_schedule_retry`: start threads for the owed
        calls; while a start still fails, try again later (the delay doubled, up to
        :data:`_RETRY_MAX_S`)."""
        with self._lock:
            if self._retry_loop is not loop:  # replaced while this loop did not run:
                return  # the timer on the loop that ran tries
            self._retry = self._retry_loop = None
            if not self._start_owed() and not loop.is_closed():
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
                self._retry = loop.call_later(delay_s, self._retry_starts, loop, delay_s)
                self._retry_loop = loop

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``cancel_futures``, cancel the calls not yet started;
        each thread ends once its current call returns; ``wait``: join them."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        work = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if work is not None:
                        work[0].cancel()
            threads = list(self._threads)
            for _ in threads:
                self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


_pools = reset_in_forked_child(HandlerThreads)
