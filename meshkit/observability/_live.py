"""The process's registry of live channels and servers (channelz style).

A :class:`~meshkit.MeshChannel` or :class:`~meshkit.MeshServer` calls :func:`track` when it
is built; ``/metrics`` and ``/debug/mesh`` list what is live through
:func:`live_channel_stats` / :func:`live_server_stats`, as typed snapshots
(:mod:`meshkit._stats`). Weak references: a registered object that is garbage collected
leaves the registry by itself.

A channel or server tracked from a coroutine belongs to that event loop: its ``stats()``
reads what only that loop may touch (its balancer, pool, retry budget), so a reader on
another thread (the admin server of another loop, a scrape's render thread) has it read
there (:func:`read_stats`, :func:`read_stats_async`): read from outside, while the loop
changes its endpoints, a snapshot raised ``dictionary changed size during iteration`` or
``KeyError`` and the channel was left out of ``/debug/mesh`` and the dashboard.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from meshkit._stats import ChannelStats, ServerStats
from meshkit.errors import ConfigError

__all__ = ["OWN_LOOP_READ_S", "UnreadServer", "ended", "ended_since", "final_stats",
           "last_ended", "live_channel_stats", "live_channel_stats_async",
           "live_server_loops", "live_server_stats", "live_server_stats_async",
           "live_servers", "live_servers_async", "read_stats", "read_stats_async",
           "track", "tracked"]

_log = structlog.get_logger("meshkit.observability.live")


class _HasChannelStats(Protocol):
    def stats(self) -> ChannelStats: ...


class _HasServerStats(Protocol):
    def stats(self) -> ServerStats: ...


_CHANNELS: weakref.WeakSet[Any] = weakref.WeakSet()
_SERVERS: weakref.WeakSet[Any] = weakref.WeakSet()
# held to add to those sets and to list them: a channel built in another thread (its own
# event loop) added one while a reader iterated, which raised "Set changed size during
# iteration" (/metrics, /readyz and /debug/mesh answered 500); re-made in a forked child
_tracked_lock = threading.RLock()


# the event loop each channel and server was tracked on (a server's start()'s): where its
# stats() is read (read_stats), and for servers what /livez pings
_LOOPS: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def track(obj: _HasChannelStats | _HasServerStats, *, kind: str) -> None:
    """Register a live channel (``kind="channel"``) or server (``kind="server"``); it stays
    listed while it is alive and ``obj.live`` is true. One tracked from a coroutine is
    remembered with the running event loop: its ``stats()`` is read there
    (:func:`read_stats`), and a server's loop is pinged by ``/livez``
    (:func:`live_server_loops`).

    Raises:
        ConfigError: ``kind`` is neither ``"channel"`` nor ``"server"`` (another would be
            taken for a server, which ``/readyz`` then counts), or ``obj`` has no
            ``stats()`` method (quoted).
    """
    if kind not in ("channel", "server"):
        raise ConfigError(f'kind must be "channel" or "server", got {kind!r}')
    if isinstance(obj, type) or not callable(getattr(obj, "stats", None)):
        raise ConfigError(f"track() needs a channel or server with a stats() method, "
                          f"got {obj!r}")
    with _tracked_lock:
        (_CHANNELS if kind == "channel" else _SERVERS).add(obj)
    try:
        _LOOPS[obj] = asyncio.get_running_loop()
    except RuntimeError:  # not from a coroutine: no loop to read it on, or to watch
        _LOOPS.pop(obj, None)


OWN_LOOP_READ_S = 0.5
"""Seconds a reader waits for another event loop to read the ``stats()`` of its channels
and servers (:func:`read_stats`); a loop busy longer (a handler blocking it) has them
read from the reader's thread, as before there was a wait, rather than a snapshot
missing or a ``/readyz`` probe (Kubernetes' default timeout: 1 s) timing out."""


def _stats_or_error(obj: Any) -> Any:
    """``obj.stats()``, or the exception it raised."""
    try:
        return obj.stats()
    except Exception as exc:
        return exc


def _read_group(group: list[Any], done: concurrent.futures.Future[list[Any]]) -> None:
    """On the objects' own loop: their snapshots (or exceptions), unless given up on."""
    if done.set_running_or_notify_cancel():
        done.set_result([_stats_or_error(o) for o in group])


def _send_reads(objs: Iterable[Any], here: asyncio.AbstractEventLoop | None
                ) -> tuple[list[Any], list[tuple[list[Any], concurrent.futures.Future[list[Any]]]]]:
    """The objects to read directly (of ``here``, of no loop known, or of a loop not
    running), and for each other running loop its objects with the future of the
    callback sent it to read them."""
    direct: list[Any] = []
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for obj in objs:
        loop = _LOOPS.get(obj)
        if loop is None or loop is here or loop.is_closed() or not loop.is_running():
            direct.append(obj)
        else:
            by_loop.setdefault(loop, []).append(obj)
    sent = []
    for loop, group in by_loop.items():
        done: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(_read_group, group, done)
        except RuntimeError:  # closed meanwhile: nothing runs there any more
            direct.extend(group)
            continue
        sent.append((group, done))
    return direct, sent


def read_stats(objs: Iterable[Any], *, here: asyncio.AbstractEventLoop | None = None,
               rest: bool = True) -> dict[int, Any]:
    """Each of ``objs``' ``stats()`` (or the exception it raised), by ``id()``, read on the
    event loop it was tracked on while that loop runs, in one callback per loop (the
    calling thread waits for them together, at most :data:`OWN_LOOP_READ_S`; those of a
    loop that does not answer in time are read here); those of ``here`` (the loop this
    thread reads for, e.g. a scrape's owner loop), of no loop, or of a loop not running
    are read here, or with ``rest=False`` left out of the answer (for the caller to read
    on ``here``).

    From a thread that runs an event loop every object is read here (``rest=False``:
    none): that loop must not wait for another (:func:`read_stats_async` reads the
    others on their loops without blocking)."""
    objs = list(objs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        direct, sent = _send_reads(objs, here)
    else:
        direct, sent = objs, []
    if not rest:
        direct = []
    out: dict[int, Any] = {}
    deadline = time.monotonic() + OWN_LOOP_READ_S
    for group, done in sent:
        try:
            results = done.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            if done.cancel():  # never to run: read here instead
                if rest:
                    direct.extend(group)
                continue
            results = done.result()  # running now: done in a moment
        out.update(zip(map(id, group), results, strict=True))
    for obj in direct:
        out[id(obj)] = _stats_or_error(obj)
    return out


async def read_stats_async(objs: Iterable[Any]) -> dict[int, Any]:
    """:func:`read_stats` for a coroutine: the objects of other running loops read on
    their loops, awaited (at most :data:`OWN_LOOP_READ_S`; this loop goes on meanwhile);
    those of this loop, of no loop or of a loop not running read here, one per turn of
    the loop, so that it serves its calls between two snapshots (``/debug/mesh`` and the
    dashboard hold it for one channel's ``stats()`` at a time: about 10 ms for a channel
    to 2,000 endpoints, not that for every channel at once)."""
    objs = list(objs)
    direct, sent = _send_reads(objs, asyncio.get_running_loop())
    out: dict[int, Any] = {}
    if sent:
        waits = [asyncio.wrap_future(done) for _, done in sent]
        await asyncio.wait(waits, timeout=OWN_LOOP_READ_S)
        for (group, done), wait in zip(sent, waits, strict=True):
            if not wait.done() and done.cancel():  # never to run: read here instead
                direct.extend(group)
                continue
            out.update(zip(map(id, group), await wait, strict=True))
    for i, obj in enumerate(direct):
        if i:
            await asyncio.sleep(0)  # the loop's other work runs between two reads
        out[id(obj)] = _stats_or_error(obj)
    return out


# the last stats() of channels and servers that closed or stopped, by their (basic) weak
# reference, each with the sequence number of its recording: what a collector retires once,
# whether it saw the object live or not, even when it is garbage collected before the
# collector's next scrape; the oldest dropped past _FINAL_MAX. In the order recorded (the
# numbers increase along it); a lock, as scrapes read it from other threads
_FINAL: dict[weakref.ref[Any], tuple[int, Any]] = {}
_FINAL_MAX = 1024
_final_lock = threading.Lock()
_final_seq = 0


def _new_final_lock() -> None:
    """In a child made by ``os.fork()``: a new :data:`_final_lock` and
    :data:`_tracked_lock` (a scrape in another thread of the parent may have held one at
    the fork, and would never release it: the child's first scrape, run on its event
    loop, blocked that loop for ever)."""
    global _final_lock, _tracked_lock
    _final_lock = threading.Lock()
    _tracked_lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_new_final_lock)


def ended(obj: _HasChannelStats | _HasServerStats) -> None:
    """Record ``obj``'s final ``stats()`` as it closes or stops (a tracked channel or
    server calls this last), for :func:`final_stats` and :func:`ended_since`."""
    global _final_seq
    try:
        snapshot = obj.stats()
    except Exception:  # nothing more to say of it
        return
    # CPython hands out one weak reference (without a callback) per object: the key a
    # collector holds for it is this very object, equal to it after its referent is gone
    ref = weakref.ref(obj)
    with _final_lock:
        _final_seq += 1
        _FINAL.pop(ref, None)  # recorded again (a server started anew): the newest last
        _FINAL[ref] = (_final_seq, snapshot)
        while len(_FINAL) > _FINAL_MAX:
            del _FINAL[next(iter(_FINAL))]


def final_stats(ref: weakref.ref[Any]) -> Any:
    """The final ``stats()`` recorded by :func:`ended` for the object ``ref`` refers (or
    referred) to, or ``None``."""
    entry = _FINAL.get(ref)
    return None if entry is None else entry[1]


def last_ended() -> int:
    """The number of :func:`ended`'s latest recording (``0``: none yet): where a reader of
    :func:`ended_since` starts to see only what ends from now on."""
    return _final_seq


def ended_since(seq: int) -> tuple[list[tuple[weakref.ref[Any], Any]], int]:
    """The ``(weak reference, final stats())`` pairs :func:`ended` recorded after the one
    numbered ``seq`` (see :func:`last_ended`), oldest first (those still kept: at most
    the latest 1024), and the number of the latest recording, to pass next time."""
    with _final_lock:
        out = []
        for ref, (n, snapshot) in reversed(_FINAL.items()):
            if n <= seq:
                break
            out.append((ref, snapshot))
        out.reverse()
        return out, _final_seq


def tracked(kind: str) -> list[Any]:
    """Every registered channel (``kind="channel"``) or server (``kind="server"``) still
    in memory, live or not (closed, stopped): what :class:`~meshkit.observability.
    _metrics.MeshCollector` reads to keep the counters of those that ended."""
    with _tracked_lock:
        return list(_CHANNELS if kind == "channel" else _SERVERS)


def _live(objs: weakref.WeakSet[Any]) -> list[Any]:
    with _tracked_lock:  # (an object's ``live`` is read after: a property may do anything)
        listed = list(objs)
    return [o for o in listed if getattr(o, "live", False)]


def live_channel_stats() -> list[ChannelStats]:
    """Snapshots of every live channel of this process, by service (a channel that fails
    to answer, e.g. closing during the call, is left out); each read on its own event
    loop (:func:`read_stats`)."""
    channels = _live(_CHANNELS)
    return _channels_read(channels, read_stats(channels))


async def live_channel_stats_async() -> list[ChannelStats]:
    """:func:`live_channel_stats` for a coroutine: a channel of another event loop is
    read there, awaited (:func:`read_stats_async`)."""
    channels = _live(_CHANNELS)
    return _channels_read(channels, await read_stats_async(channels))


def _channels_read(channels: list[Any], read: dict[int, Any]) -> list[ChannelStats]:
    out = [s for s in (read[id(ch)] for ch in channels) if not isinstance(s, Exception)]
    return sorted(out, key=lambda s: s.service)


@dataclass(frozen=True, slots=True)
class UnreadServer:
    """A live server whose ``stats()`` raised (a custom registry whose ``status()``
    throws, say): what ``/readyz`` reports not ready.

    Attributes:
        service: its mesh service name.
        instance_id: the instance id it registered (``None``: not registered, or unknown).
        error: the exception's class name (never its message, which may hold a secret).
        ready: always ``False``.
    """

    service: str
    instance_id: str | None
    error: str
    ready: bool = False


# servers whose stats() failed and were warned about: warned again only after it answered
_UNREAD_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def live_servers() -> tuple[list[ServerStats], list[UnreadServer]]:
    """Snapshots of every live server of this process, by service, and (by service too)
    those whose ``stats()`` raised, each logged once as a warning with its exception (of
    logger ``meshkit.observability.live``; again only after it has answered since); each
    read on its own event loop (:func:`read_stats`)."""
    servers = _live(_SERVERS)
    return _servers_read(servers, read_stats(servers))


async def live_servers_async() -> tuple[list[ServerStats], list[UnreadServer]]:
    """:func:`live_servers` for a coroutine: a server of another event loop is read
    there, awaited (:func:`read_stats_async`)."""
    servers = _live(_SERVERS)
    return _servers_read(servers, await read_stats_async(servers))


def _servers_read(servers: list[Any], read: dict[int, Any]
                  ) -> tuple[list[ServerStats], list[UnreadServer]]:
    out: list[ServerStats] = []
    unread: list[UnreadServer] = []
    for srv in servers:
        snapshot = read[id(srv)]
        if isinstance(snapshot, Exception):
            exc = snapshot
            service = str(getattr(srv, "service", "?"))
            try:
                instance_id = getattr(getattr(srv, "instance", None), "instance_id", None)
            except Exception:
                instance_id = None
            unread.append(UnreadServer(
                service=service, instance_id=instance_id if isinstance(instance_id, str)
                else None, error=type(exc).__name__))
            if srv not in _UNREAD_WARNED:
                _UNREAD_WARNED.add(srv)
                _log.warning("server stats() failed: reported not ready", service=service,
                             exc_info=exc)
        else:
            out.append(snapshot)
            _UNREAD_WARNED.discard(srv)
    return (sorted(out, key=lambda s: s.service),
            sorted(unread, key=lambda u: (u.service, u.instance_id or "")))


def live_server_stats() -> list[ServerStats]:
    """Snapshots of every live server of this process, by service (a server whose
    ``stats()`` raises is left out, and warned about: see :func:`live_servers`)."""
    return live_servers()[0]


async def live_server_stats_async() -> list[ServerStats]:
    """:func:`live_server_stats` for a coroutine (:func:`live_servers_async`)."""
    return (await live_servers_async())[0]


def live_server_loops() -> dict[asyncio.AbstractEventLoop, list[str]]:
    """The event loops the live servers of this process were started on, each with the
    (sorted) mesh service names of its servers."""
    out: dict[asyncio.AbstractEventLoop, list[str]] = {}
    for srv in _live(_SERVERS):
        loop = _LOOPS.get(srv)
        if loop is not None:
            out.setdefault(loop, []).append(str(getattr(srv, "service", "?")))
    return {loop: sorted(names) for loop, names in out.items()}
