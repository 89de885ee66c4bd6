"""The process's registry of live channels and servers (channelz style).

A :class:`~meshkit.MeshChannel` or :class:`~meshkit.MeshServer` calls :func:`track` when it
is built; ``/metrics`` and ``/debug/mesh`` list what is live through
:func:`live_channel_stats` / :func:`live_server_stats`, as typed snapshots
(:mod:`meshkit._stats`). Weak references: a registered object that is garbage collected
leaves the registry by itself.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from meshkit._stats import ChannelStats, ServerStats

__all__ = ["ended", "final_stats", "live_channel_stats", "live_server_stats", "track",
           "tracked"]


class _HasChannelStats(Protocol):
    def stats(self) -> ChannelStats: ...


class _HasServerStats(Protocol):
    def stats(self) -> ServerStats: ...


_CHANNELS: weakref.WeakSet[Any] = weakref.WeakSet()
_SERVERS: weakref.WeakSet[Any] = weakref.WeakSet()


def track(obj: _HasChannelStats | _HasServerStats, *, kind: str) -> None:
    """Register a live channel (``kind="channel"``) or server (``kind="server"``); it stays
    listed while it is alive and ``obj.live`` is true."""
    (_CHANNELS if kind == "channel" else _SERVERS).add(obj)


# the last stats() of channels and servers that closed or stopped, by their (basic) weak
# reference: what a collector that saw one live retires, even when it is garbage collected
# before the collector's next scrape; the oldest dropped past _FINAL_MAX
_FINAL: dict[weakref.ref[Any], Any] = {}
_FINAL_MAX = 1024


def ended(obj: _HasChannelStats | _HasServerStats) -> None:
    """Record ``obj``'s final ``stats()`` as it closes or stops (a tracked channel or
    server calls this last), for :func:`final_stats`."""
    try:
        snapshot = obj.stats()
    except Exception:  # nothing more to say of it
        return
    # CPython hands out one weak reference (without a callback) per object: the key a
    # collector holds for it is this very object, equal to it after its referent is gone
    _FINAL[weakref.ref(obj)] = snapshot
    while len(_FINAL) > _FINAL_MAX:
        del _FINAL[next(iter(_FINAL))]


def final_stats(ref: weakref.ref[Any]) -> Any:
    """The final ``stats()`` recorded by :func:`ended` for the object ``ref`` refers (or
    referred) to, or ``None``."""
    return _FINAL.get(ref)


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


def live_server_stats() -> list[ServerStats]:
    """Snapshots of every live server of this process, by service."""
    return sorted((s.stats() for s in _live(_SERVERS)), key=lambda s: s.service)
