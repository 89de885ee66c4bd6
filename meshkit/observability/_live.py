"""The process's registry of live channels and servers (channelz style).

A :class:`~meshkit.MeshChannel` or :class:`~meshkit.MeshServer` calls :func:`track` when it
is built; ``/metrics`` and ``/debug/mesh`` list what is live through
:func:`live_channel_stats` / :func:`live_server_stats`, as typed snapshots
(:mod:`meshkit._stats`). Weak references: a registered object that is garbage collected
leaves the registry by itself.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from meshkit._stats import ChannelStats, ServerStats

__all__ = ["UnreadServer", "ended", "ended_since", "final_stats", "last_ended",
           "live_channel_stats", "live_server_loops", "live_server_stats", "live_servers",
           "track", "tracked"]

_log = structlog.get_logger("meshkit.observability.live")


class _HasChannelStats(Protocol):
    def stats(self) -> ChannelStats: ...


class _HasServerStats(Protocol):
    def stats(self) -> ServerStats: ...


_CHANNELS: weakref.WeakSet[Any] = weakref.WeakSet()
_SERVERS: weakref.WeakSet[Any] = weakref.WeakSet()


# the event loop each server was tracked on (its start()'s): what /livez pings
_LOOPS: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def track(obj: _HasChannelStats | _HasServerStats, *, kind: str) -> None:
    """Register a live channel (``kind="channel"``) or server (``kind="server"``); it stays
    listed while it is alive and ``obj.live`` is true. A server tracked from a coroutine
    is remembered with the running event loop (:func:`live_server_loops`)."""
    (_CHANNELS if kind == "channel" else _SERVERS).add(obj)
    if kind == "server":
        try:
            _LOOPS[obj] = asyncio.get_running_loop()
        except RuntimeError:  # not from a coroutine: no loop to watch
            _LOOPS.pop(obj, None)


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
    """In a child made by ``os.fork()``: a new :data:`_final_lock` (a scrape in another
    thread of the parent may have held it at the fork, and would never release it: the
    child's first scrape, run on its event loop, blocked that loop for ever)."""
    global _final_lock
    _final_lock = threading.Lock()


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
    return list(_CHANNELS if kind == "channel" else _SERVERS)


def _live(objs: weakref.WeakSet[Any]) -> list[Any]:
    return [o for o in list(objs) if getattr(o, "live", False)]


def live_channel_stats() -> list[ChannelStats]:
    """Snapshots of every live channel of this process, by service (a channel that fails
    to answer, e.g. closing during the call, is left out)."""
    out = []
    for ch in _live(_CHANNELS):
        try:
            out.append(ch.stats())
        except Exception:  # closing while we looked
            continue
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
    logger ``meshkit.observability.live``; again only after it has answered since)."""
    out: list[ServerStats] = []
    unread: list[UnreadServer] = []
    for srv in _live(_SERVERS):
        try:
            out.append(srv.stats())
        except Exception as exc:
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
            _UNREAD_WARNED.discard(srv)
    return (sorted(out, key=lambda s: s.service),
            sorted(unread, key=lambda u: (u.service, u.instance_id or "")))


def live_server_stats() -> list[ServerStats]:
    """Snapshots of every live server of this process, by service (a server whose
    ``stats()`` raises is left out, and warned about: see :func:`live_servers`)."""
    return live_servers()[0]


def live_server_loops() -> dict[asyncio.AbstractEventLoop, list[str]]:
    """The event loops the live servers of this process were started on, each with the
    (sorted) mesh service names of its servers."""
    out: dict[asyncio.AbstractEventLoop, list[str]] = {}
    for srv in _live(_SERVERS):
        loop = _LOOPS.get(srv)
        if loop is not None:
            out.setdefault(loop, []).append(str(getattr(srv, "service", "?")))
    return {loop: sorted(names) for loop, names in out.items()}
