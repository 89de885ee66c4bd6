"""Plumbing shared by the network registries (Consul, etcd): ending waits at close, retry
backoff and error text (their options are built with :mod:`meshkit.discovery._options`).
No policy lives here."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import re
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["CLOSED", "SLICE_S", "CloseRace", "Closed", "decoded_in_slices", "describe",
           "full_jitter", "outlast_the_sweep", "same_in_slices"]

_T = TypeVar("_T")

SLICE_S = 0.002
"""Seconds of event-loop time a watch's update runs at most before it lets the loop run
other callbacks (decoding, building and comparing the instances of an answer): a Consul
answer of 2,000 instances (about 2.8 MB) took about 80 ms on a quiet box in one callback,
every call and heartbeat of the process waiting behind it."""


class Closed(enum.Enum):
    """The sentinel type of :data:`CLOSED`."""

    CLOSED = enum.auto()


#: What :meth:`CloseRace.race` returns when the registry closed first.
CLOSED = Closed.CLOSED


def _read_outcome(task: asyncio.Future[Any]) -> None:
    """Mark ``task``'s exception (if any) as read (:meth:`CloseRace.race`)."""
    if not task.cancelled():
        task.exception()


class CloseRace:
    """Lets a registry's waits (a blocking query, a backoff sleep) end when it is closed.

    Safe across event loops: a registry kept from one ``asyncio.run()`` to the next, or
    used by loops of several threads at once. Each wait has a future of its own loop
    (no event bound to the first loop that waited), and :meth:`close` wakes each in its
    loop."""

    __slots__ = ("_waiters", "closed", "inflight")

    def __init__(self) -> None:
        self.closed = False
        self.inflight: set[asyncio.Future[Any]] = set()
        self._waiters: set[asyncio.Future[None]] = set()

    async def race(self, aw: Coroutine[Any, Any, _T]) -> _T | Closed:
        """Await ``aw`` unless :meth:`close` comes first (then cancel it, return CLOSED).

        Raises:
            whatever ``aw`` raises.
        """
        if self.closed:
            aw.close()
            return CLOSED
        loop = asyncio.get_running_loop()
        task = loop.create_task(aw)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        # its failure read whatever ends the wait: one in the very turn this waiter was
        # cancelled (the watch ended as a request timed out) was left unread, and
        # asyncio logged "Task exception was never retrieved" when it was collected
        task.add_done_callback(_read_outcome)
        closed: asyncio.Future[None] = loop.create_future()
        self._waiters.add(closed)
        if self.closed:  # closed by another thread since the check above
            closed.set_result(None)
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.discard(closed)
            closed.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        return CLOSED

    def close(self) -> list[asyncio.Future[Any]]:
        """Mark closed and wake every race, each in its event loop; return the in-flight
        tasks of the running loop (for the caller to cancel and gather with its own).
        Those of another loop still running are cancelled in it; those of a closed loop
        ended with it."""
        self.closed = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for waiter in list(self._waiters):
            _in_loop_of(waiter, running, _wake, waiter)
        mine: list[asyncio.Future[Any]] = []
        for task in list(self.inflight):
            if task.get_loop() is running:
                mine.append(task)
            else:
                _in_loop_of(task, running, task.cancel)
        return mine


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _in_loop_of(fut: asyncio.Future[Any], running: asyncio.AbstractEventLoop | None,
                call: Callable[..., object], *args: Any) -> None:
    """``call(*args)`` now when ``fut`` is of the ``running`` loop, else soon in its own
    loop (thread-safe); nothing when that loop is closed."""
    loop = fut.get_loop()
    if loop is running:
        call(*args)
    elif not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(call, *args)


#: The tasks of :func:`hold_until_cancelled`: left out of each other's waits.
_OWNERS: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


async def outlast_the_sweep(race: CloseRace, bound_s: float) -> None:
    """In the task that owns an event loop's HTTP client, cancelled: before it closes the
    client, wait up to ``bound_s`` seconds for the loop's other tasks being cancelled with
    it to end (not a task that cancelled them and waits for them, nor another registry's
    owner: each would wait for the other for ``bound_s``), unless the registry is closed
    (``race``: its :class:`CloseRace`, closed by its ``close()`` before it cancels the
    owners: no wait).

    ``asyncio.run()`` (and ``asyncio.Runner``) cancel every task left in one sweep as the
    loop ends and run them all to their end: a ``serve()`` task among them drains and
    deregisters with this client, so closing it at once failed that deregister ("Session
    is closed") and left the instance registered for its TTL. The sweep waits for those
    tasks anyway, so this wait delays nothing; ``bound_s`` (the registry's longest write)
    only keeps a task that never ends from holding the client open for good. Another
    cancel (the registry's ``close()`` from one of those tasks) ends the wait."""
    if race.closed:
        return
    me = asyncio.current_task()
    # only tasks being cancelled with this one (the sweep cancels every task left): a
    # task that cancelled the others and waits for them (a shutdown's gather) is not one,
    # nor another registry's owner (they never use each other's clients): either would
    # wait for this one while this one waited for it, for bound_s
    others = {t for t in asyncio.all_tasks()
              if t is not me and not t.done() and t.cancelling() and t not in _OWNERS}
    if others:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(others, timeout=bound_s)


async def hold_until_cancelled(close: Callable[[], Coroutine[Any, Any, Any]],
                               race: CloseRace, bound_s: float,
                               ignore: tuple[type[BaseException], ...]) -> None:
    """The task that owns an event loop's HTTP client (etcd's aiohttp session, Consul's
    py-consul client): hold it until cancelled, then ``close()`` it, ignoring the client's
    own errors (``ignore``): by the registry's ``close()`` (at once), or as the loop ends
    (``asyncio.run()``, and ``asyncio.Runner`` under pytest-asyncio, cancel the tasks left
    and run them to their end while the loop still runs), so no client of an ended loop is
    left unclosed; then once the other tasks cancelled with it have ended, at most
    ``bound_s`` seconds later (:func:`outlast_the_sweep`: a ``serve()`` task among them
    deregisters with it as it drains).

    Its loop closed with it pending (stopped, not run to its end), the garbage collector
    later closes its coroutine (``GeneratorExit``), where nothing may be awaited: the
    client is then closed synchronously (:func:`_close_without_loop`), never awaited
    (that raised ``RuntimeError: coroutine ignored GeneratorExit`` and left the client
    unclosed)."""
    me = asyncio.current_task()
    if me is not None:
        _OWNERS.add(me)
    awaitable = True
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        await outlast_the_sweep(race, bound_s)
        raise
    except GeneratorExit:  # collected, its loop gone: no await from here on
        awaitable = False
        _close_without_loop(close, ignore)
        raise
    finally:
        if awaitable:
            with contextlib.suppress(*ignore):
                await close()


def _close_without_loop(close: Callable[[], Coroutine[Any, Any, Any]],
                        ignore: tuple[type[BaseException], ...]) -> None:
    """Close a client (``close``: the bound ``close`` of an aiohttp ``ClientSession``, or
    of a py-consul client holding one as ``http._session``) where nothing can be awaited
    (:func:`hold_until_cancelled`'s coroutine closed by the garbage collector): the
    session's connections are shut down (``shutdown(SHUT_RDWR)``, as
    :func:`~meshkit.discovery._resolver.abandon_session` does: the server sees them end),
    then ``close()``'s coroutine is run up to its first suspension (aiohttp's close marks
    its connector closed and drops its pool synchronously; with the loop closed it
    suspends nowhere) and closed there if it would wait. Errors in ``ignore``, and
    ``RuntimeError`` (a closed loop), are swallowed: this runs in a finaliser."""
    owner = getattr(close, "__self__", None)
    session = owner if hasattr(owner, "connector") else getattr(
        getattr(owner, "http", None), "_session", None)
    with contextlib.suppress(Exception):
        from meshkit.discovery._resolver import _shut_down, session_sockets
        for sock in session_sockets(session) if session is not None else ():
            with contextlib.suppress(OSError):
                _shut_down(sock)
    with contextlib.suppress(*ignore, RuntimeError):
        coro = close()
        try:
            coro.send(None)
        except StopIteration:
            return
        coro.close()  # it would wait (its loop still open, a connection to end)


def foreign_task(task: asyncio.Task[Any] | None) -> bool:
    """Whether a registry's background ``task`` (a keep-alive) belongs to another event
    loop than the running one, or has ended: then it is cancelled in its own loop if that
    is still open (another thread's) and is not to be awaited here; an earlier
    ``asyncio.run()``'s ended with its loop, and one of a loop closed with it pending
    never ends. ``None``: ``False``."""
    if task is None:
        return False
    loop = task.get_loop()
    if loop is asyncio.get_running_loop() and not task.done():
        return False
    if not task.done() and not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(task.cancel)
    return True


def full_jitter(rng: random.Random, attempt: int, base_s: float, max_s: float) -> float:
    """Full-jitter exponential backoff, seconds: ``uniform(0, min(max_s, base_s *
    2**(attempt-1)))`` for the ``attempt``-th retry (1-based)."""
    cap = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    return rng.uniform(0.0, cap)


def kept_count(kept: dict[tuple[str, int], int], service: str | None) -> int:
    """How many instances the watches keep after a fault (``kept``: ``{(service, watch
    number): count}``, what a registry's ``status()`` reports as ``kept_endpoints``):
    all of them, or those of ``service``'s watches only. Safe with loops of other
    threads changing ``kept`` (read as one copy)."""
    items = list(kept.items())
    return sum(n for (name, _), n in items if service is None or name == service)


def due_to_log(logged: dict[Any, float], key: object, every_s: float) -> bool:
    """Whether a warning about ``key`` is due (once per key, then at most every
    ``every_s`` seconds while it repeats), noting it in ``logged`` (``{key: monotonic
    seconds of its last warning}``) when it is; entries older than ``every_s`` are
    dropped, so ``logged`` holds only keys warned about within the last ``every_s``.
    Safe with loops of other threads reading the same dict (each step one operation
    under the GIL)."""
    now = time.monotonic()
    if now - logged.get(key, -float("inf")) < every_s:
        return False
    for stale, at in list(logged.items()):
        if now - at >= every_s:
            logged.pop(stale, None)
    logged[key] = now
    return True


def describe(exc: BaseException) -> str:
    """``"Type: message"`` of a foreign error, at most 500 characters."""
    detail = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "no detail")
    return f"{type(exc).__name__}: {detail}"[:500]


async def same_in_slices(new: frozenset[_T], last: frozenset[_T] | None) -> bool:
    """``new == last``, compared a slice (:data:`SLICE_S`) at a time (2,000 instances
    compared at once: several milliseconds of the loop, at each update)."""
    if last is None or len(new) != len(last):
        return False
    clock = time.perf_counter
    until = clock() + SLICE_S
    for n, item in enumerate(new):
        if item not in last:
            return False
        if not n & 63 and clock() >= until:
            await asyncio.sleep(0)
            until = clock() + SLICE_S
    return True


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def _skip(text: str, pos: int) -> int:
    """The position of the first character at or after ``pos`` that is no whitespace."""
    return _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # (matches "" too)


async def decoded_in_slices(text: str) -> Any:
    """``json.loads(text)``, decoding a top-level array, or the arrays that are a
    top-level object's values (an etcd range answer's ``kvs``), one element at a time
    with the event loop let run every :data:`SLICE_S`; any other value in one go
    (small). A registry's answer of 2,000 instances decoded at once held the loop for
    tens of milliseconds.

    Raises:
        ValueError: ``text`` is not JSON (``json.JSONDecodeError``, as ``json.loads``).
    """
    pos = _skip(text, 0)
    value: Any
    if text.startswith("[", pos):
        value, pos = await _array_in_slices(text, pos)
    elif text.startswith("{", pos):
        value, pos = await _object_in_slices(text, pos)
    else:
        return json.loads(text)
    if _skip(text, pos) != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)
    return value


def _after_value(text: str, pos: int, close: str) -> tuple[int, bool]:
    """After an array's element or an object's member that ends at ``pos``: the next
    one's position and ``False`` (a ``,`` came), or the position after ``close`` (``"]"``,
    ``"}"``) and ``True``; else ``JSONDecodeError`` "Expecting ',' delimiter", as
    :func:`json.loads` raises it."""
    pos = _skip(text, pos)
    if text.startswith(",", pos):
        return _skip(text, pos + 1), False
    if text.startswith(close, pos):
        return pos + 1, True
    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)


async def _array_in_slices(text: str, pos: int) -> tuple[list[Any], int]:
    """The array at ``pos`` (its ``[``) and the position after it, in slices."""
    items: list[Any] = []
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return items, pos + 1
    decode, clock = _DECODER.raw_decode, time.perf_counter
    until = clock() + SLICE_S
    while True:
        item, pos = decode(text, pos)
        items.append(item)
        pos, closed = _after_value(text, pos, "]")
        if closed:
            return items, pos
        if clock() >= until:
            await asyncio.sleep(0)
            until = clock() + SLICE_S


async def _object_in_slices(text: str, pos: int) -> tuple[dict[str, Any], int]:
    """The object at ``pos`` (its ``{``) and the position after it, its array values in
    slices (:func:`_array_in_slices`), its others in one go."""
    members: dict[str, Any] = {}
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        return members, pos + 1
    decode = _DECODER.raw_decode
    while True:
        if not text.startswith('"', pos):
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, pos)
        key, pos = decode(text, pos)
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        pos = _skip(text, pos + 1)
        if text.startswith("[", pos):
            members[key], pos = await _array_in_slices(text, pos)
        else:
            members[key], pos = decode(text, pos)
        pos, closed = _after_value(text, pos, "}")
        if closed:
            return members, pos
