"""The live dashboard at the admin server's ``/``: a picture of this process's mesh.

``/`` serves one self-contained HTML page (``dashboard.html`` beside this module: inline
CSS and JavaScript, no external resource, no build step) that polls
``/debug/dashboard.json`` every second (a poll not answered within 5 s is given up: the
page shows "stale" and polls again, so a server that holds requests open does not leave
it showing its last picture as live) and draws tables with inline SVG sparklines and
bars: the services this process serves and dials, each endpoint's state (and under it
why an mTLS endpoint cannot be connected, ``EndpointStats.connect_error``), P2C load, EWMA
latency, calls and failures, ejections, the retry budget's balance, each server's and
channel's registry health ("registry failing" while its latest read or write failed, the
error in the badge's title), the calls each server's request gate refused (they start no
method row), and RED per method over the window (rate, errors by status code and their
share, p50/p99 latency). The page builds
its DOM with ``textContent`` and attributes only, never HTML from data, and is served with
a Content Security Policy that allows its own inline script (by hash) and requests to its
own origin only.

The JSON comes from :class:`DashboardFeed`: the typed snapshots of the live channels and
servers (:mod:`meshkit.observability._live`) and the per-method RPC records of the admin
server's registry (:class:`~meshkit.observability.RpcMetrics`). Rates and quantiles are
over a sliding window (default 10 s) of samples the feed keeps per method, like
Prometheus's ``rate()`` and ``histogram_quantile()`` over ``[10s]``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from meshkit._stats import ChannelStats, ServerStats, json_safe
from meshkit.errors import ConfigError
from meshkit.observability._live import (
    live_channel_stats,
    live_channel_stats_async,
    live_server_stats,
    live_server_stats_async,
)
from meshkit.observability._metrics import GRPC_CODE_LABELS, RpcMetrics

__all__ = ["DASHBOARD_JSON_PATH", "DASHBOARD_PATH", "DashboardFeed", "Offload",
           "histogram_quantile"]

DASHBOARD_PATH = "/"
"""Where the admin server serves the dashboard page."""
DASHBOARD_JSON_PATH = "/debug/dashboard.json"
"""Where the page reads its data (:meth:`DashboardFeed.build`)."""

_MAX_SAMPLES = 64

Offload = Callable[[Callable[[], str]], Awaitable[str]]
"""Runs a JSON encoding (``() -> str``) off the event loop and answers its text: the admin
server's JSON thread (:meth:`~meshkit.observability.AdminServer._off_loop`)."""


def histogram_quantile(q: float, bounds_s: Sequence[float], counts: Sequence[int],
                       ) -> float | None:
    """Estimate the ``q`` quantile from histogram buckets, as Prometheus's
    ``histogram_quantile`` does: linear interpolation inside the bucket the rank falls in
    (the first bucket starts at 0); a rank in the overflow bucket answers the highest
    finite bound.

    Args:
        q: the quantile, 0..1 (0.99 for p99).
        bounds_s: the buckets' upper bounds in seconds, ascending, without +Inf.
        counts: observations per bucket (not cumulative), ``len(bounds_s) + 1`` of them
            (the last: above the highest bound).

    Returns:
        The estimate in seconds, or ``None`` with no observations or no finite bound
        (a histogram of the ``+Inf`` bucket only: Prometheus answers NaN).

    Raises:
        ValueError: ``q`` outside 0..1 or ``counts`` of the wrong length.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    if len(counts) != len(bounds_s) + 1:
        raise ValueError(f"expected {len(bounds_s) + 1} counts, got {len(counts)}")
    total = sum(counts)
    if total <= 0 or not bounds_s:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i == len(bounds_s):
                return bounds_s[-1]
            lower = bounds_s[i - 1] if i else 0.0
            return lower + (bounds_s[i] - lower) * (rank - below) / n
        below += n
    return bounds_s[-1]


class _Sample:
    __slots__ = ("by_code", "counts", "errors", "finished", "t_s")

    def __init__(self, t_s: float, finished: int, errors: int, counts: tuple[int, ...],
                 by_code: dict[str, int]) -> None:
        self.t_s = t_s
        self.finished = finished
        self.errors = errors
        self.counts = counts
        self.by_code = by_code  # errors by code name, since the record's creation


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class DashboardFeed:
    """Builds the dashboard's JSON and serves the page (one per admin server).

    :meth:`build` answers ``{"time_unix_s", "window_s", "servers", "channels",
    "methods"}``: ``servers`` and ``channels`` are the live snapshots
    (``ServerStats.as_dict()``, ``ChannelStats.as_dict()``: endpoints with state, P2C
    ``load_ms``/``pending``, EWMA ``rtt_ms``, ejection, retry counters and
    ``budget_left``); ``methods`` has one row per method and side (``"server"``,
    ``"client"``): ``started``, ``in_flight``, ``finished``, ``ok``, ``errors`` (finished
    non-OK calls by go-grpc-prometheus code name, e.g. ``{"Unavailable": 3}``),
    ``error_total``, ``mean_ms`` (since start), and over the window: ``rate_per_s``
    (finished calls), ``error_rate_per_s``, ``window_errors`` (the window's non-OK calls
    by code name, as ``errors``), ``p50_ms`` / ``p99_ms`` (from the histogram
    buckets; ``None`` without calls in the window) and ``window_s``, the span actually
    covered (shorter just after the method's first call, longer until a sample is
    ``window_s`` old when the page was not watched).

    Samples: each :meth:`build` keeps at most one sample per ``window_s / 20`` per method,
    so many pollers cost no memory; a method's first sample is all zeros at its record's
    creation time (or now, if that is ahead of the clock).

    The windows are durations: by default they are timed on the monotonic clock
    (:func:`time.monotonic`), so a step of the wall clock (NTP ``makestep``, a VM snapshot
    restored, ``date -s``) moves none; ``time_unix_s`` and the records' ``created`` are on
    the wall clock (:func:`time.time`). An injected ``clock`` times both (tests drive
    it); should it go back, each method's window starts again from that moment (one
    build then reads as just after a first call: ``rate_per_s`` ``None``).

    Args:
        rpc: the RPC records to read (the admin server's :func:`rpc_metrics`).
        window_s: the rate/quantile window, seconds (default 10).
        clock: wall-clock seconds for ``time_unix_s`` and the windows (default ``None``:
            :func:`time.time` for ``time_unix_s``, :func:`time.monotonic` for the
            windows; the records' ``created`` is wall-clock).

    Raises:
        ConfigError: ``window_s`` not a positive finite number (quoted).
    """

    def __init__(self, rpc: RpcMetrics, *, window_s: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        if (not isinstance(window_s, int | float) or isinstance(window_s, bool)
                or not math.isfinite(window_s) or window_s <= 0):
            raise ConfigError(f"window_s must be a positive number of seconds, got {window_s!r}")
        self._rpc = rpc
        self.window_s = float(window_s)
        self._step_s = self.window_s / 20
        self._clock = clock
        self._rings: dict[tuple[str, str, str, str], deque[_Sample]] = {}
        self._page = _page()
        self._csp = _content_security_policy(self._page)

    def follow(self, rpc: RpcMetrics) -> None:
        """Read the records of ``rpc`` from now on (the registry shown left the admin
        server); the windows start again (samples of another registry's records would
        make its rates negative). Call on the event loop :meth:`build` runs on."""
        if rpc is not self._rpc:
            self._rpc = rpc
            self._rings.clear()

    def routes(self, *, offload: Offload | None = None) -> list[web.RouteDef]:
        """The aiohttp routes: ``GET /`` (the page) and ``GET /debug/dashboard.json``.

        Args:
            offload: where the JSON answer is made (the snapshots turned into dicts and
                encoded: ~35 ms on the loop for a channel to 2,000 endpoints, once a
                second while the page is open); default on the event loop. The
                snapshots and the per-method rows are taken on the loop either way."""
        if offload is None:
            return [web.get(DASHBOARD_PATH, self.page), web.get(DASHBOARD_JSON_PATH, self.data)]
        return [web.get(DASHBOARD_PATH, self.page),
                web.get(DASHBOARD_JSON_PATH, functools.partial(self.data, offload=offload))]

    async def page(self, request: web.Request) -> web.Response:
        """The dashboard page (HTML, never cached, under a strict Content Security Policy)."""
        resp = web.Response(body=self._page, content_type="text/html", charset="utf-8")
        resp.headers.update({"Cache-Control": "no-store", "Content-Security-Policy": self._csp,
                             "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer"})
        return resp

    async def data(self, request: web.Request, *,
                   offload: Offload | None = None) -> web.Response:
        """:meth:`build` as JSON (never cached): the snapshots and rows taken here, on the
        event loop; turned into dicts and encoded by ``offload`` (default: here too)."""
        # the snapshots of another thread's loop read there, awaited
        servers = await live_server_stats_async()
        channels = await live_channel_stats_async()
        encode = functools.partial(_encode, self.window_s, *self._collect(servers, channels))
        text = encode() if offload is None else await offload(encode)
        resp = web.Response(text=text, content_type="application/json")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def build(self) -> dict[str, Any]:
        """The dashboard's data now (see the class docstring for its shape)."""
        return _document(self.window_s, *self._collect())

    def _collect(self, servers: list[ServerStats] | None = None,
                 channels: list[ChannelStats] | None = None
                 ) -> tuple[float, list[dict[str, Any]], list[ServerStats],
                            list[ChannelStats]]:
        """What :meth:`build` answers, read now on the event loop: ``time_unix_s``, the
        per-method rows (the windows move on) and the live servers' and channels' typed
        snapshots (``stats()`` reads state only their loop may touch; ``servers`` and
        ``channels`` when the caller read them already), not yet turned into dicts
        (:func:`_document`), which costs as much again and needs no loop."""
        if self._clock is None:  # read when called (a test may patch them)
            now, t_s = time.time(), time.monotonic()
        else:
            now = t_s = self._clock()
        methods = []
        rpc = self._rpc
        for side, records in (("server", list(rpc.servers.values())),
                              ("client", list(rpc.clients.values()))):
            for rec in records:
                grpc_type, service, name = rec.labels
                errors = {GRPC_CODE_LABELS[c]: n for c, n in list(rec.handled.items()) if n}
                error_total = sum(errors.values())
                finished = rec.ok + error_total
                cur = _Sample(t_s, finished, error_total, tuple(rec.counts), errors)
                # created on the windows' clock: (t_s - now) is 0.0 with an injected clock
                base = self._advance((side, *rec.labels), t_s - now + rec.created, cur)
                span_s = t_s - base.t_s
                window = [a - b for a, b in zip(cur.counts, base.counts, strict=True)]
                window_errors = {c: n - base.by_code.get(c, 0) for c, n in errors.items()
                                 if n > base.by_code.get(c, 0)}
                row: dict[str, Any] = {
                    "side": side, "type": grpc_type, "service": service, "method": name,
                    "path": f"/{service}/{name}", "started": rec.started,
                    "in_flight": rec.in_flight, "finished": finished, "ok": rec.ok,
                    "errors": dict(sorted(errors.items())), "error_total": error_total,
                    "mean_ms": _ms(rec.sum_s / finished) if finished else None,
                    "window_s": round(span_s, 6),
                    "rate_per_s": (round((finished - base.finished) / span_s, 6)
                                   if span_s > 0 else None),
                    "error_rate_per_s": (round((error_total - base.errors) / span_s, 6)
                                         if span_s > 0 else None),
                    "window_errors": dict(sorted(window_errors.items())),
                    "p50_ms": _ms(histogram_quantile(0.5, rec.bounds, window)),
                    "p99_ms": _ms(histogram_quantile(0.99, rec.bounds, window)),
                }
                extra = "rate_limited" if side == "server" else "attempts"
                row[extra] = getattr(rec, extra, None)
                methods.append(row)
        methods.sort(key=lambda m: (m["side"] != "server", m["path"]))
        return (now, methods, live_server_stats() if servers is None else servers,
                live_channel_stats() if channels is None else channels)

    def _advance(self, key: tuple[str, str, str, str], created_s: float,
                 cur: _Sample) -> _Sample:
        """Store ``cur`` (at most one sample per step) and return the window's base: the
        newest sample at least ``window_s`` old, else the oldest kept. A ring whose newest
        sample is ahead of ``cur`` (the clock went back) starts again at ``cur``: its
        samples' times tell nothing of how long ago they were taken."""
        ring = self._rings.get(key)
        if ring is None:
            zeros = (0,) * len(cur.counts)
            ring = self._rings[key] = deque([_Sample(min(created_s, cur.t_s), 0, 0, zeros, {})],
                                            maxlen=_MAX_SAMPLES)
        elif cur.t_s < ring[-1].t_s:
            ring.clear()
            ring.append(cur)
            return cur
        start = cur.t_s - self.window_s
        while len(ring) > 1 and ring[1].t_s <= start:
            ring.popleft()
        base = ring[0]
        if cur.t_s - ring[-1].t_s >= self._step_s:
            ring.append(cur)
        return base


def _document(window_s: float, now: float, methods: list[dict[str, Any]],
              servers: list[ServerStats], channels: list[ChannelStats]) -> dict[str, Any]:
    """:meth:`DashboardFeed.build`'s answer from what :meth:`DashboardFeed._collect` read
    (safe in any thread: the snapshots are the caller's own)."""
    return {
        "time_unix_s": round(now, 3),
        "window_s": window_s,
        "servers": [s.as_dict() for s in servers],
        "channels": [c.as_dict() for c in channels],
        "methods": methods,
    }


def _encode(window_s: float, now: float, methods: list[dict[str, Any]],
            servers: list[ServerStats], channels: list[ChannelStats]) -> str:
    """:func:`_document` as the JSON text of ``/debug/dashboard.json`` (no ``Infinity``:
    :func:`~meshkit._stats.json_safe`)."""
    return json.dumps(json_safe(_document(window_s, now, methods, servers, channels)),
                      default=repr)


def _page() -> bytes:
    """The page, read once from the package data."""
    return resources.files("meshkit.observability").joinpath("dashboard.html").read_bytes()


def _content_security_policy(page: bytes) -> str:
    """Only the page's own inline script (by its SHA-256) and style, and requests to its
    own origin (``connect-src 'self'``); nothing loads from elsewhere."""
    script = page.split(b"<script>", 1)[1].split(b"</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    return ("default-src 'none'; connect-src 'self'; img-src 'self' data:; "
            f"style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
