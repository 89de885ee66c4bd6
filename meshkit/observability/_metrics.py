"""Prometheus metrics: RPC counters and histograms (hot path) and mesh internals (at scrape).

Why prometheus-client rather than the OpenTelemetry SDK with a Prometheus exporter: the
per-call cost. Each method's counts live in one record bound once
(:class:`BoundServer`/:class:`BoundClient`) as plain numbers, rendered into the
prometheus-client families at scrape: a call costs a few integer adds and a bisect. The OTel SDK's
``counter.add(1, attributes)`` hashes the attribute set on every call to find its
aggregation, and needs a reader/exporter pipeline in the process; the exposition format
and names (go-grpc-prometheus) are what Prometheus dashboards already know.

Mesh internals (retries, hedges, ejections, endpoints...) are not counted on the hot path
at all: :class:`MeshCollector` reads the typed snapshots of the live channels and servers
(:mod:`meshkit.observability._live`) when ``/metrics`` is scraped: on their event loop when
the scrape renders in a worker thread (:func:`reading_on`), as the admin server's does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import queue
import threading
import time
import weakref
from bisect import bisect_left as _bisect
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from meshkit._config import check_instance
from meshkit._fork import reset_in_forked_child
from meshkit._stats import ChannelStats, ServerStats
from meshkit.errors import ConfigError
from meshkit.observability._live import ended_since, final_stats, last_ended, read_stats, tracked
from meshkit.observability._semconv import MethodNames

__all__ = [
    "DURATION_BUCKETS_S",
    "LOOP_READ_TIMEOUT_S",
    "MAX_CLIENT_METHODS",
    "MAX_SERVER_METHODS",
    "OTHER_METHOD",
    "RETIRED_ENDPOINTS_MAX",
    "BoundClient",
    "BoundServer",
    "MeshCollector",
    "RpcMetrics",
    "default_registry",
    "publish_certificate",
    "reading_on",
    "rpc_metrics",
    "set_certificate_expiry",
]

_R = TypeVar("_R", bound="_Record")
_T = TypeVar("_T")

DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
"""Latency histogram bounds, seconds: 100 µs to 10 s (+Inf is added), for loopback calls
well under a millisecond up to multi-second ones."""

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

MAX_SERVER_METHODS = 1000
"""Server methods (``grpc_type``, ``grpc_service``, ``grpc_method`` label sets) counted
under their own names per registry, a backstop: a method the server did not register is
counted under :data:`OTHER_METHOD` from its first call (gRFC A66: a server with a
catch-all generic handler serves any method name a caller makes up, and each would be a
set of series kept for ever), so only registered methods, those named by
``ServeOptions.generic_methods`` and those of a telemetry interceptor that no ``serve()``
told what its server registered count here; past the bound, further ones are
:data:`OTHER_METHOD` too."""

MAX_CLIENT_METHODS = MAX_SERVER_METHODS
"""Client methods counted under their own names per registry; calls of any further method
are counted under :data:`OTHER_METHOD`. A client labels every method by its name up to
this bound: the names are the calling code's (its own ``ch.unary_unary("/pkg.S/M")``,
which grpc's registered-method flag does not mark, as generated stubs' calls are marked),
and only a generic proxy or gateway calls whatever names its own callers send, which the
bound keeps from growing without end (gRFC A66's client records a method not marked
registered as ``"other"``; meshkit keeps the hand-written calls' names)."""

OTHER_METHOD = "other"
"""The ``grpc_service`` and ``grpc_method`` label of calls of methods a server did not
register, and of methods beyond :data:`MAX_SERVER_METHODS` (server) or
:data:`MAX_CLIENT_METHODS` (client) (gRFC A66's ``grpc.method="other"``)."""

_DEFAULT = CollectorRegistry(auto_describe=True)
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics] = (
    weakref.WeakKeyDictionary()
)


def default_registry() -> CollectorRegistry:
    """The process's meshkit :class:`~prometheus_client.CollectorRegistry` (one per process,
    separate from prometheus-client's global ``REGISTRY``); ``/metrics`` serves it."""
    return _DEFAULT


def rpc_metrics(registry: CollectorRegistry | None = None) -> RpcMetrics:
    """The :class:`RpcMetrics` of ``registry`` (default :func:`default_registry`), created
    and registered (with a :class:`MeshCollector`) on first use.

    Raises:
        ConfigError: ``registry`` is no ``CollectorRegistry`` instance nor ``None``
            (quoted).
    """
    check_instance("registry", registry, CollectorRegistry)
    reg = _DEFAULT if registry is None else registry
    found = _BY_REGISTRY.get(reg)
    if found is None:
        # made once: two threads asking at once (servers or channels starting on two
        # threads' event loops) each made one, and the second's registration raised
        # prometheus-client's DuplicateTimeseries out of serve()/dial()
        with _CREATING.lock:
            found = _BY_REGISTRY.get(reg)
            if found is None:
                found = _BY_REGISTRY[reg] = RpcMetrics(reg)
    return found


class _CreationLock:
    """A process-wide lock (:func:`rpc_metrics` makes a registry's :class:`RpcMetrics`
    under one, :meth:`_Record.finished` counts a non-OK code under another); a new one
    in a forked child: a thread of the parent may have held it at the fork.

    Reentrant: a garbage collection may run while a thread holds it (from Python 3.12
    one that is due runs at the eval breaker of ``StatusCode.__hash__``, Python code
    called to count the code) and finalize a stream handler's generator, whose telemetry
    finishes that call ``CANCELLED`` on the same thread, under the same lock: with a
    plain lock the thread waited for itself for ever."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        # _count_code's: whether a count runs, and the counts nested in it (a finalizer's)
        self.counting = False
        self.nested: list[tuple[dict[grpc.StatusCode, int], grpc.StatusCode]] = []

    def _forget_parent(self) -> None:
        self.lock = threading.RLock()
        self.counting = False
        self.nested = []


def set_certificate_expiry(service: str, not_after_unix_s: float, *,
                           not_before_unix_s: float | None = None,
                           registry: CollectorRegistry | None = None) -> None:
    """Publish the validity period of ``service``'s workload certificate, for alerting.

    Sets ``meshkit_certificate_expiry_timestamp_seconds{service=...}`` (``notAfter``) and,
    given ``not_before_unix_s``, ``meshkit_certificate_not_before_timestamp_seconds``
    (``notBefore``), until :func:`remove_certificate_expiry`: for a certificate the
    application serves with itself. A TLS ``serve()`` publishes its own certificate's
    period in the same families (:func:`publish_certificate`: at start and whenever the
    certificate on disk changes, which it looks at every ``TLSOptions.reload_interval_s``)
    for as long as the server is live: a server that stops leaves them. Both are
    rendered by meshkit's collector at scrape, as its other gauges (never written to
    prometheus-client's multiprocess directory, ``PROMETHEUS_MULTIPROC_DIR``, where a
    stopped server's or a dead worker's series could never be removed); for one service,
    the period published last is shown. deploy/prometheus's
    ``MeshkitCertificateExpiringSoon`` fires when less than a third of the validity
    period is left (``expiry - time() < (expiry - not_before) / 3``, for 10 minutes):
    renewal did not happen, since cert-manager renews at two thirds of a certificate's
    lifetime (its default ``renewBefore``), and short-lived certificates are renewed far
    ahead of ``notAfter``; a fixed threshold (``< 86400``) would fire for the whole life
    of a 24 h certificate. Without ``not_before_unix_s`` the rule falls back to 8 hours
    left (a third of meshkit's default 24 h lifetime).

    Args:
        service: mesh service name the certificate identifies, e.g. ``"orderd"``.
        not_after_unix_s: the certificate's ``notAfter``, Unix epoch seconds.
        not_before_unix_s: its ``notBefore``, Unix epoch seconds (default: not published).
        registry: default :func:`default_registry`.

    Raises:
        ConfigError: empty ``service``, a non-finite / negative time, or ``notBefore``
            after ``notAfter`` (quoted).
    """
    if not isinstance(service, str) or not service:
        raise ConfigError(f"service must be a non-empty string, got {service!r}")
    if not isinstance(not_after_unix_s, int | float) or not 0 <= not_after_unix_s < 1e11:
        raise ConfigError(f"not_after_unix_s must be epoch seconds, got {not_after_unix_s!r}")
    if not_before_unix_s is not None and not (
            isinstance(not_before_unix_s, int | float)
            and 0 <= not_before_unix_s <= not_after_unix_s):
        raise ConfigError(f"not_before_unix_s must be epoch seconds up to not_after_unix_s="
                          f"{not_after_unix_s!r}, got {not_before_unix_s!r}")
    certs = rpc_metrics(registry).certificates
    with certs.lock:
        certs.set[service] = (next(_published), not_before_unix_s, float(not_after_unix_s))


def remove_certificate_expiry(service: str, *,
                              registry: CollectorRegistry | None = None) -> None:
    """Withdraw the certificate gauges of ``service`` that :func:`set_certificate_expiry`
    set (``meshkit_certificate_expiry_timestamp_seconds`` and
    ``meshkit_certificate_not_before_timestamp_seconds``) from ``registry`` (default
    :func:`default_registry`): nothing serves with that certificate any more, so
    ``MeshkitCertificateExpiringSoon`` must not fire for it. Nothing happens for a
    service without them; a live server of ``service`` publishing into ``registry`` keeps
    showing its own certificate (it leaves when the server stops)."""
    certs = rpc_metrics(registry).certificates
    with certs.lock:
        certs.set.pop(service, None)


def publish_certificate(server: Any, service: str, not_before_unix_s: float,
                        not_after_unix_s: float, *,
                        registry: CollectorRegistry | None = None) -> None:
    """``server`` (an object with a ``live`` property: a :class:`~meshkit.MeshServer`)
    serves ``service`` with a certificate valid from ``not_before_unix_s`` to
    ``not_after_unix_s`` (Unix s): the certificate gauges of ``registry`` (default
    :func:`default_registry`) show it at scrape while ``server`` is live and nothing was
    published for ``service`` after it (see :func:`set_certificate_expiry`); it replaces
    what ``server`` published before. Held weakly: nothing to withdraw when the server
    stops. Thread-safe (the TLS reloader calls it on grpc's threads)."""
    certs = rpc_metrics(registry).certificates
    with certs.lock:
        certs.servers[server] = (service, next(_published), not_before_unix_s,
                                 not_after_unix_s)


_published = itertools.count(1)  # the order of publication (next() is atomic in CPython)
# the collectors whose locks a forked child makes again (_Certificates, MeshCollector)
_locked: weakref.WeakSet[Any] = reset_in_forked_child(object)
_CREATING = _CreationLock()
_locked.add(_CREATING)
_CODES = _CreationLock()  # _Record.finished's count of a non-OK code
_locked.add(_CODES)

_CERTIFICATE_DOCS = {
    "expiry": ("meshkit_certificate_expiry_timestamp_seconds",
               "notAfter of the workload certificate, Unix seconds."),
    "not_before": ("meshkit_certificate_not_before_timestamp_seconds",
                   "notBefore of the workload certificate, Unix seconds."),
}


class _Certificates:
    """The certificate periods published into one registry (:func:`set_certificate_expiry`,
    :func:`publish_certificate`), rendered at scrape as
    ``meshkit_certificate_expiry_timestamp_seconds`` and
    ``meshkit_certificate_not_before_timestamp_seconds`` (label ``service``): per service,
    the period published last among those set by hand and those of live servers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        _locked.add(self)  # a lock of its own in a forked child (_forget_parent)
        # service -> (publication number, notBefore or None, notAfter), by hand
        self.set: dict[str, tuple[int, float | None, float]] = {}
        # server -> (service, publication number, notBefore, notAfter)
        self.servers: weakref.WeakKeyDictionary[Any, tuple[str, int, float, float]] = (
            weakref.WeakKeyDictionary())

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()``: a new lock (a scrape in another thread of
        the parent may have held this one at the fork, and would never release it)."""
        self.lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """No fixed description (what is published changes; the names never clash)."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            latest = dict(self.set)
            published = list(self.servers.items())
        for server, (service, n, since_s, until_s) in published:
            if getattr(server, "live", False) and n > latest.get(service, (0,))[0]:
                latest[service] = (n, since_s, until_s)
        expiry = GaugeMetricFamily(*_CERTIFICATE_DOCS["expiry"], labels=["service"])
        since = GaugeMetricFamily(*_CERTIFICATE_DOCS["not_before"], labels=["service"])
        for service in sorted(latest):
            _, not_before, not_after = latest[service]
            expiry.add_metric([service], not_after)
            if not_before is not None:
                since.add_metric([service], not_before)
        yield expiry
        yield since


_OK = grpc.StatusCode.OK

#: ``grpc_code`` label values, spelled as go-grpc-prometheus writes them (Go's
#: ``codes.Code.String()``: ``OK``, ``Canceled``, ``InvalidArgument``, ``NotFound``,
#: ``Unauthenticated``...), so dashboards and alerts written for it match meshkit's series.
GRPC_CODE_LABELS: dict[grpc.StatusCode, str] = {
    c: "OK" if c is _OK else "Canceled" if c is grpc.StatusCode.CANCELLED
    else "".join(part.capitalize() for part in c.name.split("_"))
    for c in grpc.StatusCode
}


class _Record:
    """One method's RPC counts as plain numbers, read by :class:`_RpcCollector` at scrape
    (the per-call hot path: a few integer adds and one bisect, no lock).

    Updates are not locked but one: a record is updated from the event loop thread(s)
    that run the interceptors (one record per method and registry, whatever the loop);
    CPython's GIL makes each ``+=`` on these slots effectively atomic for the int/float
    values used here in practice; a non-OK code's count in ``handled`` (a dict whose
    ``StatusCode`` keys hash in Python, where a thread may switch between the read and
    the write) is updated under a process-wide lock. A scrape reads a snapshot that may
    be one call apart between families (as a scrape always may be)."""

    __slots__ = ("bounds", "counts", "created", "extra", "handled", "in_flight", "labels",
                 "msg_received", "msg_sent", "ok", "started", "sum_s")

    def __init__(self, labels: tuple[str, str, str], bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self.bounds = bounds
        self.started = 0
        self.in_flight = 0
        self.ok = 0  # calls that ended OK (kept apart: an Enum key hashes in Python)
        # messages of the streaming directions, counted per message where meshkit sees them;
        # a unary direction's count is derived at scrape (see _message_counts)
        self.msg_sent = 0
        self.msg_received = 0
        self.handled: dict[grpc.StatusCode, int] = {}  # the other codes
        self.counts = [0] * (len(bounds) + 1)  # last: above the highest bound (+Inf)
        self.sum_s = 0.0
        self.created = time.time()
        # the side's own count: calls rate-limited (server), attempts (client)
        self.extra = 0

    def start(self) -> None:
        """Count one call started (and in flight); the server telemetry's ``_start`` and
        the client's unary call count the same inline."""
        self.started += 1
        self.in_flight += 1

    def finished(self, code: grpc.StatusCode, duration_s: float, extra: int = 0) -> None:
        """Count one finished call with its status and duration (seconds), and ``extra``
        in the side's own count: on a server, 1 (or ``True``) when the rate limiter
        refused it (:attr:`BoundServer.rate_limited`); on a client, the logical call's
        attempts (:attr:`BoundClient.attempts`). One method for both sides, its frame the
        only one per call; the server telemetry's ``_finish`` counts the same inline
        (a change here is one there)."""
        if code is _OK:
            self.ok += 1
        else:
            # under a lock: a StatusCode hashes in Python, and a thread switch between
            # the read and the write lost another thread's count (one method's record
            # is shared by the channels and servers of every event loop of the process)
            _count_code(self.handled, code)
        self.counts[_bisect(self.bounds, duration_s)] += 1
        self.sum_s += duration_s
        self.in_flight -= 1
        self.extra += extra

    def count_code(self, code: grpc.StatusCode) -> None:
        """Count one finished call's non-OK ``code`` in ``handled``
        (``grpc_*_handled_total``), thread-safe: what :meth:`finished` does for a non-OK
        code, for a caller that counts a call's other parts inline (the server telemetry's
        ``_finish``). ``code``: a ``grpc.StatusCode`` other than ``OK``."""
        _count_code(self.handled, code)


def _count_code(handled: dict[grpc.StatusCode, int], code: grpc.StatusCode) -> None:
    """Add one to ``handled[code]`` under ``_CODES``' lock. The lock is reentrant (see
    :class:`_CreationLock`): a finalizer run by a collection inside a count (at a hash of
    ``code``, the read's or the write's) counts on the same thread. Such a nested count
    is queued and added by the outer one after its own write: made in place, between the
    outer read and write, the outer write put back the value read plus one, and the
    nested count was lost."""
    with _CODES.lock:
        if _CODES.counting:  # nested in a count of this thread: the outer one adds it
            _CODES.nested.append((handled, code))
            return
        _CODES.counting = True
        try:
            handled[code] = handled.get(code, 0) + 1
            nested = _CODES.nested
            while nested:
                more, again = nested.pop()
                more[again] = more.get(again, 0) + 1
        finally:
            _CODES.counting = False


class BoundServer(_Record):
    """One server method's counts (``grpc_server_*`` and ``meshkit_server_rate_limited``),
    bound once per method and label set; :meth:`RpcMetrics.bind_server` returns the same
    record for the same labels, so a shared registry counts each call once.
    :meth:`~_Record.finished`'s ``extra``: whether the rate limiter refused the call."""

    __slots__ = ()

    @property
    def rate_limited(self) -> int:
        """Calls the rate limiter refused (``meshkit_server_rate_limited_total``)."""
        return self.extra


class BoundClient(_Record):
    """One client method's counts (``grpc_client_*``, ``meshkit_client_attempts``);
    :meth:`~_Record.finished`'s ``extra``: the logical call's attempts."""

    __slots__ = ()

    @property
    def attempts(self) -> int:
        """Attempts of the calls finished (``meshkit_client_attempts``)."""
        return self.extra


_RPC_DOCS = {
    "server_started": ("grpc_server_started", "RPCs started on the server."),
    "server_handled": ("grpc_server_handled", "RPCs completed on the server, by status code."),
    "server_handling": ("grpc_server_handling_seconds",
                        "Time from the handler's start to its end (last response), seconds."),
    "server_in_flight": ("grpc_server_in_flight", "RPCs being handled now."),
    "server_rate_limited": ("meshkit_server_rate_limited",
                            "RPCs refused by the rate limiter (RESOURCE_EXHAUSTED over a rule)."),
    "client_started": ("grpc_client_started",
                       "Logical RPCs started by clients (retries not counted)."),
    "client_handled": ("grpc_client_handled",
                       "Logical RPCs completed by clients, by final status code."),
    "client_handling": ("grpc_client_handling_seconds",
                        "Logical call duration seen by the caller, retries included, seconds."),
    "client_in_flight": ("grpc_client_in_flight", "Logical RPCs in progress."),
    "client_attempts": ("meshkit_client_attempts",
                        "Attempts made by finished logical RPCs (retries and hedges included)."),
    "server_msg_received": ("grpc_server_msg_received",
                            "RPC stream messages received by the server."),
    "server_msg_sent": ("grpc_server_msg_sent", "RPC stream messages sent by the server."),
    "client_msg_received": ("grpc_client_msg_received",
                            "RPC stream messages received by the client."),
    "client_msg_sent": ("grpc_client_msg_sent", "RPC stream messages sent by the client."),
}

# grpc_type values whose request / response is a single message
_UNARY_REQUEST = frozenset({"unary", "server_stream"})
_UNARY_RESPONSE = frozenset({"unary", "client_stream"})


def _message_counts(side: str, r: _Record) -> tuple[int, int]:
    """``(received, sent)`` messages of a record, as go-grpc-prometheus counts them: a unary
    request is one message per started call (the server received it before the handler
    ran; the client sent it), a unary response one per call that ended ``OK``; a streaming
    direction is counted per message (:class:`_Record` ``msg_sent``/``msg_received``)."""
    grpc_type = r.labels[0]
    requests_ = r.started if grpc_type in _UNARY_REQUEST else None
    responses_ = r.ok if grpc_type in _UNARY_RESPONSE else None
    if side == "server":
        return (r.msg_received if requests_ is None else requests_,
                r.msg_sent if responses_ is None else responses_)
    return (r.msg_received if responses_ is None else responses_,
            r.msg_sent if requests_ is None else requests_)


def _created_series() -> bool:
    """Whether prometheus-client prints ``_created`` series: false once the application
    called ``prometheus_client.disable_created_metrics()`` or set
    ``PROMETHEUS_DISABLE_CREATED_SERIES=True`` (read at each scrape, as its own
    Counter and Histogram read it; true for a version without the setting)."""
    return bool(getattr(_prometheus_metrics, "_use_created", True))


class _RpcCollector:
    """Renders the bound records of one :class:`RpcMetrics` as the go-grpc-prometheus
    families at scrape time (counters with ``_total``/``_created``, histograms with
    cumulative ``_bucket{le}``, ``_count``, ``_sum``, ``_created``), exactly as
    prometheus-client's own Counter/Gauge/Histogram would: without the ``_created``
    samples while prometheus-client's are disabled (:func:`_created_series`)."""

    def __init__(self, rpc: RpcMetrics) -> None:
        self._rpc = rpc

    def describe(self) -> list[Metric]:
        """The families' names (so a second registration of them is refused)."""
        return list(self._families(()))

    def collect(self) -> Iterator[Metric]:
        """Every family with the current counts."""
        rpc = self._rpc
        return iter(self._families((list(rpc.servers.values()), list(rpc.clients.values()))))

    def _families(self, records: tuple[list[BoundServer], list[BoundClient]] | tuple[()],
                  ) -> Iterator[Metric]:
        servers, clients = records if records else ([], [])
        lbl = list(_RPC_LABELS)
        with_created = _created_series()
        for side, recs in (("server", servers), ("client", clients)):
            started = CounterMetricFamily(*_RPC_DOCS[f"{side}_started"], labels=lbl)
            handled = CounterMetricFamily(*_RPC_DOCS[f"{side}_handled"],
                                          labels=[*lbl, "grpc_code"])
            name, doc = _RPC_DOCS[f"{side}_handling"]
            handling = HistogramMetricFamily(name, doc, labels=lbl)
            in_flight = GaugeMetricFamily(*_RPC_DOCS[f"{side}_in_flight"], labels=lbl)
            for r in recs:
                labels = list(r.labels)
                created = r.created if with_created else None
                started.add_metric(labels, r.started, created=created)
                if r.ok:
                    handled.add_metric([*labels, "OK"], r.ok, created=created)
                for code, n in list(r.handled.items()):
                    handled.add_metric([*labels, GRPC_CODE_LABELS[code]], n, created=created)
                counts = list(r.counts)
                cumulative, buckets = 0, []
                for le, n in zip(self._rpc.le, counts, strict=True):
                    cumulative += n
                    buckets.append((le, cumulative))
                handling.add_metric(labels, buckets, r.sum_s)
                if with_created:
                    handling.samples.append(Sample(f"{name}_created", dict(zip(
                        _RPC_LABELS, labels, strict=True)), r.created))
                in_flight.add_metric(labels, r.in_flight)
            received = CounterMetricFamily(*_RPC_DOCS[f"{side}_msg_received"], labels=lbl)
            sent = CounterMetricFamily(*_RPC_DOCS[f"{side}_msg_sent"], labels=lbl)
            for r in recs:
                n_received, n_sent = _message_counts(side, r)
                created = r.created if with_created else None
                received.add_metric(list(r.labels), n_received, created=created)
                sent.add_metric(list(r.labels), n_sent, created=created)
            yield from (started, handled, handling, in_flight, received, sent)
            if side == "server":
                limited = CounterMetricFamily(*_RPC_DOCS["server_rate_limited"],
                                              labels=["grpc_service", "grpc_method"])
                # one series per (service, method): the records of one labelled with
                # several grpc types (OTHER_METHOD's) are summed, from the oldest's time
                by_method: dict[tuple[str, str], tuple[int, float]] = {}
                for r in servers:
                    key = (r.labels[1], r.labels[2])
                    n, first = by_method.get(key, (0, r.created))
                    by_method[key] = (n + r.rate_limited, min(first, r.created))
                for (service, method), (n, since) in by_method.items():
                    limited.add_metric([service, method], n,
                                       created=since if with_created else None)
                yield limited
            else:
                attempts = CounterMetricFamily(*_RPC_DOCS["client_attempts"], labels=lbl)
                for r in clients:
                    attempts.add_metric(list(r.labels), r.attempts,
                                        created=r.created if with_created else None)
                yield attempts


class RpcMetrics:
    """Every meshkit metric family on one registry; get it with :func:`rpc_metrics`.

    The RPC families (``grpc_server_*``, ``grpc_client_*``, ``meshkit_server_rate_limited``,
    ``meshkit_client_attempts``) are counted as plain numbers in one record per method and
    label set (:meth:`bind_server`, :meth:`bind_client`) and rendered at scrape by a
    collector: a call costs a few integer adds, no lock and no label lookup.

    Made directly (to choose ``buckets_s``) before :func:`rpc_metrics` was asked for
    ``registry``, it is the one :func:`rpc_metrics` answers for it from then on: what
    the telemetry of a ``serve()`` or ``dial()`` counting into ``registry``
    (``TelemetryOptions(registry=...)``) and an admin server serving it use.

    Args:
        registry: where the families are registered (with a :class:`MeshCollector`).
        buckets_s: histogram bounds in seconds (default :data:`DURATION_BUCKETS_S`), in
            any order; the ``+Inf`` bucket is added (a ``+inf`` bound given is that one,
            as prometheus-client's ``Histogram`` takes it).

    Raises:
        ConfigError: ``buckets_s`` not a collection of numbers (one string, a bool), a
            bound that is NaN or negative (``-inf`` too), ``+inf`` twice, or one given
            twice (each would write a ``_bucket`` sample Prometheus cannot ingest: a
            series twice, ``le="NaN"``; or, negative, a histogram without ``_sum`` and
            ``_count``, as OpenMetrics wants then); the value quoted. Nothing is
            registered then.
        ValueError: (prometheus-client) the families already exist on ``registry``; use
            :func:`rpc_metrics`, which creates them once per registry.

    ``registry`` no ``CollectorRegistry`` instance (``None``, the class) is a
    ``ConfigError`` too, quoted.
    """

    def __init__(self, registry: CollectorRegistry,
                 buckets_s: Iterable[float] = DURATION_BUCKETS_S) -> None:
        check_instance("registry", registry, CollectorRegistry, optional=False)
        self.buckets_s = _checked_buckets(buckets_s)
        # the ``le`` label values, as prometheus-client writes them (``0.0001``, ``1.0``)
        self.le: tuple[str, ...] = (*(floatToGoString(b)  # type: ignore[no-untyped-call]
                                      for b in self.buckets_s), "+Inf")
        # weakly: rpc_metrics() maps each registry to its RpcMetrics in a
        # WeakKeyDictionary, whose entry would otherwise keep its own key alive for ever
        self._registry = weakref.ref(registry)
        self.servers: dict[tuple[str, str, str], BoundServer] = {}
        self.clients: dict[tuple[str, str, str], BoundClient] = {}
        # a method's record is made under it (threads binding one method at once)
        self._bind_lock = threading.Lock()
        _locked.add(self)  # its registry's lock made again in a forked child
        registry.register(_RpcCollector(self))
        # rendered at scrape, not prometheus-client Gauges: under its multiprocess mode a
        # Gauge's values go to PROMETHEUS_MULTIPROC_DIR, where none can be removed
        self.certificates = _Certificates()
        registry.register(self.certificates)
        self.mesh = MeshCollector()
        registry.register(self.mesh)
        # made here to choose buckets_s: the one rpc_metrics() answers for the registry
        # (the telemetry interceptors' and the admin server's), not a second set
        _BY_REGISTRY.setdefault(registry, self)

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()``: a new lock for its registry
        (prometheus-client's ``CollectorRegistry`` holds one while a scrape copies its
        collectors, and registers no fork handler: a scrape in another thread of the
        parent at the fork left the child's first scrape blocked for ever)."""
        self._bind_lock = threading.Lock()
        registry = self._registry()
        if registry is not None and hasattr(registry, "_lock"):
            registry._lock = threading.Lock()

    @property
    def registry(self) -> CollectorRegistry | None:
        """The registry the families are registered on; ``None`` once the application
        has dropped it (held weakly, so that a registry no one uses is freed)."""
        return self._registry()

    def bind_server(self, names: MethodNames, *, registered: bool = True) -> BoundServer:
        """The server-side record of one method (the same one for the same labels): a
        method the server did not register (``registered`` false: its name is the
        callers' choice when a generic handler serves it) is counted in the record of its
        ``grpc_type`` labelled :data:`OTHER_METHOD`, and so is one not among the first
        :data:`MAX_SERVER_METHODS` records of the registry."""
        if not registered:
            return self._other(self.servers, BoundServer, names.grpc_type)
        return self._bind(self.servers, BoundServer, names, MAX_SERVER_METHODS)

    def bind_client(self, names: MethodNames) -> BoundClient:
        """The client-side record of one method (the same one for the same labels); once
        the registry has :data:`MAX_CLIENT_METHODS` records, a method not among them is
        counted in the record of its ``grpc_type`` labelled :data:`OTHER_METHOD` (a
        generic proxy calls the method names its own callers send), and so is one whose
        name cannot be written in UTF-8 (a lone surrogate: no exposition could carry
        it, and every scrape of the registry would fail)."""
        return self._bind(self.clients, BoundClient, names, MAX_CLIENT_METHODS)

    def _bind(self, records: dict[tuple[str, str, str], _R], record: type[_R],
              names: MethodNames, limit: int) -> _R:
        """The record of ``names`` in ``records``; past ``limit`` records, a method not
        among them gets its ``grpc_type``'s :data:`OTHER_METHOD` record (gRFC A66)."""
        labels = (names.grpc_type, names.service, names.name)
        rec = records.get(labels)
        if rec is None:
            if len(records) >= limit or not _encodable(labels):
                return self._other(records, record, names.grpc_type)
            # made once, under the lock: a second thread binding the method at once
            # made one too and stored it over the first, whose calls (its interceptor
            # keeps the record it got) were never rendered
            with self._bind_lock:
                rec = records.get(labels)
                if rec is None:
                    if len(records) >= limit:
                        return self._other_locked(records, record, names.grpc_type)
                    rec = records[labels] = record(labels, self.buckets_s)
        return rec

    def _other(self, records: dict[tuple[str, str, str], _R], record: type[_R],
               grpc_type: str) -> _R:
        """The :data:`OTHER_METHOD` record of ``grpc_type`` in ``records``."""
        rec = records.get((grpc_type, OTHER_METHOD, OTHER_METHOD))
        if rec is None:
            with self._bind_lock:
                rec = self._other_locked(records, record, grpc_type)
        return rec

    def _other_locked(self, records: dict[tuple[str, str, str], _R], record: type[_R],
                      grpc_type: str) -> _R:
        """:meth:`_other` with the bind lock held."""
        labels = (grpc_type, OTHER_METHOD, OTHER_METHOD)
        rec = records.get(labels)
        if rec is None:
            rec = records[labels] = record(labels, self.buckets_s)
        return rec


def _encodable(labels: tuple[str, ...]) -> bool:
    """Whether every label value can be written in an exposition (UTF-8): a lone
    surrogate (a method name decoded with ``surrogateescape``, which grpc then refuses to
    send) would make every later scrape of the registry fail with
    ``UnicodeEncodeError``."""
    try:
        "".join(labels).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_buckets(buckets_s: Iterable[float]) -> tuple[float, ...]:
    """``buckets_s`` sorted, a ``+inf`` bound left out (the ``+Inf`` bucket is always
    added); :class:`ConfigError` quoting the value for what :class:`RpcMetrics` refuses."""
    if isinstance(buckets_s, str | bytes) or not isinstance(buckets_s, Iterable):
        raise ConfigError(f"buckets_s must be a collection of numbers (seconds), "
                          f"got {buckets_s!r}")
    given = tuple(buckets_s)
    if any(isinstance(b, bool) or not isinstance(b, int | float) for b in given):
        raise ConfigError(f"buckets_s must be numbers (seconds), got {given!r}")
    bounds = sorted(float(b) for b in given if b != math.inf)
    # a negative bound: prometheus-client then leaves out _sum and _count (OpenMetrics:
    # no sum with negative thresholds), and no call lasts less than 0 s; NaN fails b >= 0
    if (not all(b >= 0 for b in bounds)
            or len(given) - len(bounds) > 1 or len(set(bounds)) != len(bounds)):
        raise ConfigError(f"buckets_s must be distinct numbers >= 0, none NaN (+Inf is "
                          f"added), got {given!r}")
    return tuple(bounds)


_COMBINE = ("sum", "max", "min", "mean")


class _Family:
    """Samples of one scrape-time family, one per label set: what several live channels
    (or servers) report for the same labels (two channels dialing one service in one
    process) is combined by ``combine``, so no series is duplicated:

    ``"sum"`` (counters, and gauges that count work in progress: the process's total),
    ``"max"`` (a 0/1 flag that is 1 while any reports it, e.g. ejected or draining; a
    count of endpoints, the largest any channel sees), ``"min"`` (a 0/1 flag that is 1
    only while all report it, e.g. registry healthy or server ready; a balance, the
    smallest) or ``"mean"`` (an estimate, e.g. an endpoint's EWMA latency).
    """

    __slots__ = ("combine", "counts", "doc", "kind", "labels", "name", "values")

    def __init__(self, kind: str, name: str, doc: str, labels: tuple[str, ...],
                 combine: str = "sum") -> None:
        if combine not in _COMBINE:
            raise ValueError(f"combine must be one of {_COMBINE}, got {combine!r}")
        self.kind = kind
        self.name = name
        self.doc = doc
        self.labels = labels
        self.combine = combine
        self.values: dict[tuple[str, ...], float] = {}
        self.counts: dict[tuple[str, ...], int] = {}  # reports per label set ("mean")

    def add(self, labels: tuple[str, ...], value: float) -> None:
        """Combine ``value`` into the sample of ``labels`` (see the class docstring)."""
        old = self.values.get(labels)
        combine = self.combine
        if old is None:
            self.values[labels] = value
        elif combine == "sum" or combine == "mean":
            self.values[labels] = old + value
        elif combine == "max":
            self.values[labels] = max(old, value)
        else:
            self.values[labels] = min(old, value)
        if combine == "mean":
            self.counts[labels] = self.counts.get(labels, 0) + 1

    def metric(self) -> Metric:
        """The prometheus-client family of the combined samples, sorted by labels."""
        fam: CounterMetricFamily | GaugeMetricFamily
        if self.kind == "counter":
            fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        else:
            fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            if self.combine == "mean":
                value /= self.counts[labels]
            fam.add_metric(list(labels), value)
        return fam


_Sample = tuple[str, tuple[str, ...], float]  # (family key, label values, value)


def _families() -> dict[str, _Family]:
    """The scrape-time families, empty, by key."""
    t = ("target",)
    ti = ("target", "instance_id")
    return {
        "endpoints": _Family("gauge", "meshkit_client_endpoints",
                             "Endpoints of the dialed service, by connection state.",
                             ("target", "state"), "max"),
        "ejected": _Family("gauge", "meshkit_client_endpoints_ejected",
                           "Endpoints out of rotation by outlier ejection now.", t,
                           "max"),
        "unconnectable": _Family("gauge", "meshkit_client_endpoints_unconnectable",
                                 "Endpoints of the dialed service that cannot be connected "
                                 "and whose TLS probe found why (EndpointStats."
                                 "connect_error, mTLS channels: a handshake refused, a "
                                 "connection refused or not answered).", t, "max"),
        "ejections": _Family("counter", "meshkit_client_ejections",
                             "Outlier ejections since the channel opened.", t),
        "panic_picks": _Family("counter", "meshkit_client_panic_picks",
                               "Calls sent to an ejected endpoint because no endpoint in "
                               "rotation could take them (panic routing).", t),
        "retries": _Family("counter", "meshkit_client_retries",
                           "Retries granted after a failed attempt (each spent a retry-budget "
                           "token), sent or not: one that finds no endpoint, or whose channel "
                           "closes in its backoff, sends nothing (attempts sent: "
                           "meshkit_client_attempts_total).", t),
        "hedges": _Family("counter", "meshkit_client_hedges",
                          "Hedged attempts granted (each spent a retry-budget token), sent "
                          "or not.", t),
        "budget_exhausted": _Family("counter", "meshkit_client_retry_budget_exhausted",
                                    "Retries or hedges refused by the retry budget.", t),
        "gave_up": _Family("counter", "meshkit_client_retry_deadline_giveups",
                           "Retries not sent because the deadline was too close.", t),
        "budget": _Family("gauge", "meshkit_client_retry_budget_available",
                          "Retries the budget still allows in its window.", t,
                          "min"),
        "watch_errors": _Family("counter", "meshkit_registry_watch_errors",
                                "Discovery watch failures (the channel kept its "
                                "last endpoints).", t),
        "ep_calls": _Family("counter", "meshkit_client_endpoint_calls",
                            "Attempts sent to each endpoint.", ti),
        "ep_failures": _Family("counter", "meshkit_client_endpoint_failures",
                               "Failed attempts per endpoint.", ti),
        "ep_in_flight": _Family("gauge", "meshkit_client_endpoint_in_flight",
                                "Attempts in progress per endpoint.", ti),
        "ep_ejected": _Family("gauge", "meshkit_client_endpoint_ejected",
                              "1 while the endpoint is ejected, else 0.", ti, "max"),
        "ep_rtt": _Family("gauge", "meshkit_client_endpoint_rtt_seconds",
                          "Balancer's EWMA latency estimate per endpoint, seconds.", ti,
                          "mean"),
        # a channel's registry (target: the dialed service) or a server's (service: the
        # served one, whose registration the registry holds); the other label is empty,
        # which Prometheus stores as no label
        "registry_ok": _Family("gauge", "meshkit_registry_healthy",
                               "1 while the registry (of the dialed service, target; or "
                               "the one a server registers in, service) can be read and "
                               "written, else 0.", ("target", "service"), "min"),
        "registry_kept": _Family("gauge", "meshkit_registry_kept_endpoints",
                                 "Endpoints kept through a registry fault although the "
                                 "registry does not list them now.", t, "max"),
        "registry_errors": _Family("counter", "meshkit_registry_errors",
                                   "Failed registry reads and writes.",
                                   ("target", "service", "op")),
        "ready": _Family("gauge", "meshkit_server_ready",
                         "1 when the server is registered and serving, not draining.",
                         ("service",), "min"),
        "draining": _Family("gauge", "meshkit_server_draining",
                            "1 while the server drains.", ("service",), "max"),
        "deadline_rejected": _Family("counter", "meshkit_server_deadline_rejections",
                                     "Calls refused because their deadline had passed.",
                                     ("service",)),
        "gate": _Family("counter", "meshkit_server_gate_refusals",
                        "Calls the request gate refused before any of their code ran: "
                        "shed RESOURCE_EXHAUSTED (reason shed), request not in time "
                        "(timed_out), slot given to a newer call (evicted) or no "
                        "request message or more than one, UNIMPLEMENTED (cardinality).",
                        ("service", "reason")),
        "tls_handshakes": _Family("counter", "meshkit_server_tls_handshakes",
                                  "TLS handshakes started (grpcio does not report their "
                                  "outcome; refused ones are not followed by calls).",
                                  ("service",)),
        "ratelimit_evicted": _Family("counter", "meshkit_ratelimit_keys_evicted",
                                     "Callers a memory:// rate limiter forgot to keep at "
                                     "most RateLimitOptions.max_keys (each starts a fresh "
                                     "window at its next call).", ("service",)),
        "ratelimit_storage_errors": _Family(
            "counter", "meshkit_ratelimit_storage_errors",
            "Failures of the rate limiter's storage (an error or a round trip over "
            "storage_timeout_s): limits not enforced, or calls refused UNAVAILABLE with "
            "on_storage_error=deny.", ("service",)),
    }


def _channel_samples(ch: ChannelStats) -> list[_Sample]:
    """The scrape-time samples of one channel's snapshot."""
    out: list[_Sample] = []

    def add(fam: str, labels: tuple[str, ...], value: float) -> None:
        out.append((fam, labels, value))

    target = (ch.service,)
    states: dict[str, int] = {"READY": 0, "IDLE": 0, "FAILING": 0}
    ejected = unconnectable = 0
    for ep in ch.endpoints:
        key = (ch.service, ep.instance_id)
        add("ep_calls", key, ep.calls)
        add("ep_failures", key, ep.failures)
        if not ep.present:  # left (or the channel is closing): its attempts still running
            if ep.in_flight:
                add("ep_in_flight", key, ep.in_flight)
            continue
        states[ep.state] = states.get(ep.state, 0) + 1
        ejected += ep.ejected
        unconnectable += ep.connect_error is not None
        add("ep_in_flight", key, ep.in_flight)
        add("ep_ejected", key, float(ep.ejected))
        if ep.rtt_ms is not None:
            add("ep_rtt", key, ep.rtt_ms / 1000)
    for state, n in states.items():
        add("endpoints", (ch.service, state), n)
    add("ejected", target, ejected)
    add("unconnectable", target, unconnectable)
    add("ejections", target, ch.ejections)
    add("panic_picks", target, ch.panic_picks)
    retry = ch.retry
    if retry is not None:
        add("retries", target, retry.retries)
        add("hedges", target, retry.hedges)
        add("budget_exhausted", target, retry.budget_exhausted)
        add("gave_up", target, retry.gave_up_deadline)
        add("budget", target, retry.budget_left)
    add("watch_errors", target, ch.watch_errors)
    reg = ch.registry
    if reg is not None:
        add("registry_ok", (ch.service, ""), float(bool(reg.get("ok", True))))
        add("registry_kept", target, reg.get("kept_endpoints", 0))
        add("registry_errors", (ch.service, "", "read"), reg.get("read_errors", 0))
        add("registry_errors", (ch.service, "", "write"), reg.get("write_errors", 0))
    return out


def _server_samples(srv: ServerStats) -> list[_Sample]:
    """The scrape-time samples of one server's snapshot."""
    out: list[_Sample] = []

    def add(fam: str, labels: tuple[str, ...], value: float) -> None:
        out.append((fam, labels, value))

    svc = (srv.service,)
    add("ready", svc, float(srv.ready))
    add("draining", svc, float(srv.draining))
    add("deadline_rejected", svc, srv.deadline_rejections)
    add("gate", (srv.service, "shed"), srv.gate_shed)
    add("gate", (srv.service, "timed_out"), srv.gate_timed_out)
    add("gate", (srv.service, "evicted"), srv.gate_evicted)
    add("gate", (srv.service, "cardinality"), srv.gate_cardinality)
    add("tls_handshakes", svc, srv.tls_handshakes)
    add("ratelimit_evicted", svc, srv.rate_limit_keys_evicted)
    add("ratelimit_storage_errors", svc, srv.rate_limit_storage_errors)
    reg = srv.registry
    if reg is not None:  # its registration's health (a heartbeat, a keep-alive failing)
        add("registry_ok", ("", srv.service), float(bool(reg.get("ok", True))))
        add("registry_errors", ("", srv.service, "read"), reg.get("read_errors", 0))
        add("registry_errors", ("", srv.service, "write"), reg.get("write_errors", 0))
    return out


RETIRED_ENDPOINTS_MAX = 256
"""Endpoints per target whose counters :class:`MeshCollector` keeps after the channels that
reported them ended (beside those live channels report); the same bound as the endpoints
that left that a live channel keeps (``meshkit._pool``)."""

_ENDPOINT_COUNTERS = ("ep_calls", "ep_failures")  # the per-endpoint counter families

LOOP_READ_TIMEOUT_S = 5.0
"""Longest wait, seconds, of a scrape rendering in a worker thread for the event loop to
take each of its reads of the live channels and servers (:func:`reading_on`): a loop
blocked that long could not send the answer either (Prometheus' default scrape timeout
is 10 s)."""

_OWNER_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "meshkit_metrics_owner_loop", default=None)


@contextlib.contextmanager
def reading_on(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Within the block (in the calling thread's context), :class:`MeshCollector` reads the
    live channels and servers on ``loop`` (their ``stats()``, one per turn of the loop,
    each within :data:`LOOP_READ_TIMEOUT_S`) and builds their samples and the families,
    and keeps its own bookkeeping, in the calling thread; the rest of the registry is
    collected and rendered there too. For a
    scrape rendered off the event loop (the admin server's own thread) so that it does not stall
    the calls the loop serves: a channel's ``stats()`` reads its balancer, pool and retry
    budget, which only their loop may touch (the budget's window moves as it is read)."""
    token = _OWNER_LOOP.set(loop)
    try:
        yield
    finally:
        _OWNER_LOOP.reset(token)


_MESH_READ_ELSEWHERE: ContextVar[bool] = ContextVar("meshkit_metrics_mesh_read_elsewhere",
                                                   default=False)


@contextlib.contextmanager
def mesh_read_elsewhere() -> Iterator[None]:
    """Within the block (in the calling thread's context), every :class:`MeshCollector`
    yields nothing: for collecting further registries into an exposition whose first
    registry's collector has read the live channels and servers already (each registry
    of :func:`rpc_metrics` has one, and they all read the same channels and servers:
    their families would come twice, and each read costs a callback on the loop)."""
    token = _MESH_READ_ELSEWHERE.set(True)
    try:
        yield
    finally:
        _MESH_READ_ELSEWHERE.reset(token)


def _on_owner_loop(read: Callable[[], _T]) -> _T:
    """``read()`` run on the loop set by :func:`reading_on` (directly without one, or on
    that loop's own thread), its result or exception handed back.

    Raises:
        TimeoutError: the loop did not run it within :data:`LOOP_READ_TIMEOUT_S`.
        RuntimeError: the loop is closed.
    """
    loop = _OWNER_LOOP.get()
    if loop is None:
        return read()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return read()
    done: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if done.set_running_or_notify_cancel():  # not given up on meanwhile
            try:
                done.set_result(read())
            except Exception as exc:
                done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return done.result(timeout=LOOP_READ_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        done.cancel()
        raise TimeoutError(f"the event loop did not read the channels and servers within "
                           f"{LOOP_READ_TIMEOUT_S} s") from None


def _stats_or_error(obj: Any) -> Any:
    """``obj.stats()``, or the exception it raised."""
    try:
        return obj.stats()
    except Exception as exc:
        return exc


def _read_in_turns(objs: list[Any]) -> dict[int, Any]:
    """Each of ``objs``' ``stats()`` (or the exception it raised), by ``id()``, read on the
    loop set by :func:`reading_on`, one object per turn of that loop (each read schedules
    the next with ``call_soon``), so that the loop serves its calls between two snapshots:
    a scrape holds it for one channel's ``stats()`` at a time (about 10 ms for a channel
    to 2,000 endpoints), not for every channel's at once (20 channels of 1,000 endpoints
    held it about a second, with the samples built there too). Read here, all at once,
    without such a loop or on its own thread.

    Raises:
        TimeoutError: the loop made no read for :data:`LOOP_READ_TIMEOUT_S` (those not
            read yet are not made).
        RuntimeError: the loop is closed.
    """
    loop = _OWNER_LOOP.get()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or running is loop or not objs:
        return {id(obj): _stats_or_error(obj) for obj in objs}
    results: queue.SimpleQueue[Any] = queue.SimpleQueue()
    given_up = threading.Event()

    def read(i: int) -> None:
        if given_up.is_set():
            return
        results.put(_stats_or_error(objs[i]))
        if i + 1 < len(objs):
            loop.call_soon(read, i + 1)  # the next one in the next turn

    loop.call_soon_threadsafe(read, 0)
    out: dict[int, Any] = {}
    try:
        for obj in objs:
            out[id(obj)] = results.get(timeout=LOOP_READ_TIMEOUT_S)
    except queue.Empty:
        given_up.set()
        raise TimeoutError(f"the event loop did not read the channels and servers within "
                           f"{LOOP_READ_TIMEOUT_S} s") from None
    return out


_UNREAD: Any = object()  # MeshCollector._read: not read on its own loop


def _snapshot(obj: Any, read: dict[int, Any]) -> Any:
    """``obj``'s snapshot in ``read`` (by ``id()``; the exception it raised is raised), or,
    for one tracked since the reads were made, its ``stats()`` read now on the loop set by
    :func:`reading_on` (:func:`_on_owner_loop`)."""
    snapshot = read.get(id(obj), _UNREAD)
    if snapshot is _UNREAD:
        return _on_owner_loop(obj.stats)
    if isinstance(snapshot, Exception):
        raise snapshot
    return snapshot


_SAMPLES_OF: tuple[tuple[str, Callable[[Any], list[_Sample]]], ...] = (
    ("channel", _channel_samples), ("server", _server_samples))


class MeshCollector:
    """A prometheus-client collector reading mesh internals at scrape time.

    From every live :class:`~meshkit.MeshChannel` (label ``target``: the dialed service)
    and :class:`~meshkit.MeshServer` (label ``service``); see the package docstring for
    the list. Nothing is counted on the call path. Several channels dialing one target
    (or servers of one service) give one series per label set: counters and in-flight
    gauges summed; ``meshkit_registry_healthy``, ``meshkit_server_ready`` and
    ``meshkit_client_retry_budget_available`` their minimum;
    ``meshkit_client_endpoint_ejected``, ``meshkit_client_endpoints_ejected``,
    ``meshkit_client_endpoints_unconnectable``, ``meshkit_client_endpoints``,
    ``meshkit_registry_kept_endpoints`` and ``meshkit_server_draining`` their maximum;
    ``meshkit_client_endpoint_rtt_seconds`` their mean. ``meshkit_registry_errors_total``
    counts each registry object once per series (its ``RegistryStatus`` counts every
    failure once, for all its users): two channels dialing one target through one
    registry, or one dialed again through it, show its count, not a sum; registries of
    their own add up, and a freed one's count stays. A live server whose ``stats()``
    raises reads ``meshkit_server_ready`` 0 (not ready, as ``/readyz`` says of it), its
    counters as last read.

    Counters never go backwards (Prometheus/OpenMetrics: a counter is monotonically
    non-decreasing; a drop reads as a restart, and ``rate()``/``increase()`` count the
    remaining value again), and a channel or server that ended keeps its counters in the
    sums (a retired tally per label set, added at every later scrape): the final values it
    recorded as it closed or stopped (:func:`~meshkit.observability.ended`), retired once,
    at the first scrape after, whether this collector saw it live or not (a channel dialed
    and closed between two scrapes, a server started and drained between them), and
    whether it is still in memory or not; none below what an earlier scrape reported. A
    channel closing with a grace (``close(grace)``) is read on as if live, gauges too,
    until it has recorded its final values: calls still end in it. One that ended before
    this collector was made is not its business. A channel or server that recorded none
    (e.g. evicted past the 1024 kept) keeps its values at the first scrape that finds it
    ended, or at the last scrape before it was garbage collected. Its gauges drop with
    it.

    The tally keeps every target's and service's own counters (their number is the
    application's choice). The per-endpoint counters of ended channels
    (``meshkit_client_endpoint_{calls,failures}_total{target, instance_id}``; every
    redeployment brings new instance ids) are kept for at most
    :data:`RETIRED_ENDPOINTS_MAX` endpoints per target, as a live channel keeps at most
    that many endpoints that left (``EndpointPool``); past it the oldest to retire are
    dropped, their series gone (Envoy and Linkerd drop a host's stats when it leaves; a
    series may disappear, Prometheus). Never one a live channel still reports (the same
    instance dialed by another channel), which would go backwards while listed; nor is
    what a dropped series counted added to another series, where the jump would read as
    new attempts to ``rate()``/``increase()`` (rate first, then sum: a sum over
    endpoints loses nothing when a series leaves).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes may run in several threads
        _locked.add(self)  # a lock of its own in a forked child (_forget_parent)
        # every channel/server this collector saw live: its counter samples at the last
        # scrape (keyed by a weak reference: a collected one is retired with them)
        self._last: dict[weakref.ref[Any],
                         tuple[Callable[[Any], list[_Sample]], list[_Sample]]] = {}
        self._retired: dict[tuple[str, tuple[str, ...]], float] = {}
        # per target: the instance ids with per-endpoint counters in the tally, the
        # oldest to retire first (the order dropped in past RETIRED_ENDPOINTS_MAX)
        self._retired_endpoints: dict[str, dict[str, None]] = {}
        # the number of the latest final stats() retired (observability.ended_since):
        # those recorded before this collector was made are not its business
        self._ended_seq = last_ended()
        # meshkit_registry_errors_total per series: each registry object's count (weak
        # key; None: those of registries freed, summed), not each channel's or server's
        self._registry_counts: dict[tuple[str, tuple[str, ...]],
                                    dict[weakref.ref[Any] | None, float]] = {}

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()``: a new lock (a scrape in another thread of
        the parent may have held this one at the fork; the child's first scrape, run on
        its event loop, would block that loop for ever)."""
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """No fixed description: the families depend on what is live at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build the families from the live channels and servers, and the retired
        counters of those that ended: read on their event loop within
        :func:`reading_on`, the families built in the calling thread; nothing within
        :func:`mesh_read_elsewhere`."""
        if _MESH_READ_ELSEWHERE.get():
            return
        # the channels and servers of other event loops read on theirs, from this thread
        # (a loop's thread reads them itself: it must not wait for another loop), the
        # owner loop's one per turn of it; the samples are built here (in the admin
        # server's render thread: off the loop), from those snapshots. Read too: the
        # ended ones with no final counts recorded (_read takes their counters now)
        objs = [o for kind in ("channel", "server") for o in tracked(kind)
                if getattr(o, "live", False) or getattr(o, "closing", False)]
        ended = [o for kind in ("channel", "server") for o in tracked(kind)
                 if not (getattr(o, "live", False) or getattr(o, "closing", False))
                 and weakref.ref(o) in self._last and final_stats(weakref.ref(o)) is None]
        read = read_stats(objs, here=_OWNER_LOOP.get(), rest=False)
        read.update(_read_in_turns([o for o in objs + ended if id(o) not in read]))
        fams = self._gather(read)
        for fam in fams.values():
            if fam.values:
                yield fam.metric()

    def _gather(self, read: dict[int, Any]) -> dict[str, _Family]:
        """The samples of one scrape, by family: the live channels' and servers', and the
        retired counters (the collector's bookkeeping moves on, under its lock); ``read``:
        the ``stats()`` (or exception) of those read on their own loops, by ``id()``."""
        fams = _families()
        with self._lock:
            # first the final counts recorded since the last scrape, each retired once;
            # one recorded while this scrape runs is retired at the next (see _read)
            finals, self._ended_seq = ended_since(self._ended_seq)
            for ref, final in finals:
                entry = self._last.pop(ref, None)
                now = self._registry_counted(ref(), (
                    _channel_samples(final) if isinstance(final, ChannelStats)
                    else _server_samples(final)))
                self._retire(self._final([] if entry is None else entry[1], now))
            dropped: list[_Sample] = []
            for kind, samples_of in _SAMPLES_OF:
                for obj in tracked(kind):
                    self._read(obj, samples_of, fams, read, dropped)
            # a counter series a live one stopped reporting (an endpoint its pool forgot)
            # that stays listed (by the tally or another live one): what it counted
            # there is kept, as one that ends leaves its counts; else the series would
            # go backwards by it
            self._retire([(fam, labels, value) for fam, labels, value in dropped
                          if labels in fams[fam].values or (fam, labels) in self._retired])
            for ref in [r for r in self._last if r() is None]:  # collected since
                self._retire(self._last.pop(ref)[1])  # (with no final counts recorded)
            self._forget_endpoints(fams)
            for (key, labels), value in self._retired.items():
                fams[key].add(labels, value)
            for (key, labels), counts in self._registry_counts.items():
                for gone in [r for r in counts if r is not None and r() is None]:
                    counts[None] = counts.get(None, 0) + counts.pop(gone)  # freed: kept
                fams[key].add(labels, sum(counts.values()))
        return fams

    def _registry_counted(self, obj: Any, samples: list[_Sample]) -> list[_Sample]:
        """``samples`` (of ``obj``, a channel or server; ``None`` once collected) without
        its ``meshkit_registry_errors_total`` ones, recorded as its registry's counts: a
        registry's ``read_errors``/``write_errors`` count each failure once, for all its
        users, so channels sharing one registry object (or dialing again through it) must
        not add them up; a registry that cannot be weakly referenced (or an ``obj``
        gone) counts as its user's own."""
        kept: list[_Sample] = []
        for sample in samples:
            if sample[0] != "registry_errors":
                kept.append(sample)
                continue
            if obj is None:
                continue  # its registry is unknown: what it read last stays counted
            try:
                key: weakref.ref[Any] = weakref.ref(getattr(obj, "registry", None))
            except TypeError:  # None, or a registry without weak references
                key = weakref.ref(obj)
            counts = self._registry_counts.setdefault(sample[:2], {})
            counts[key] = max(sample[2], counts.get(key, sample[2]))
        return kept

    def _read(self, obj: Any, samples_of: Callable[[Any], list[_Sample]],
              fams: dict[str, _Family], read: dict[int, Any],
              dropped: list[_Sample] | None = None) -> None:
        """Add a live (or closing) ``obj``'s samples to ``fams`` and remember its
        counters; retire the counters of one that ended since the last scrape without
        recording its final ones. ``read``: snapshots taken on their own loops (by
        ``id()``: ``obj``'s, or the exception it raised, when it is there);
        ``dropped`` gets the counter samples of the last scrape that a live ``obj`` no
        longer reports (an endpoint its pool forgot)."""
        ref = weakref.ref(obj)
        if not getattr(obj, "live", False):
            final = final_stats(ref)
            if final is None and getattr(obj, "closing", False):
                pass  # closing (a grace for its calls): read on until it has ended
            elif ref not in self._last:
                return  # never seen live (not started), or retired already
            elif final is not None:
                # ended after this scrape took the final counts to retire (another
                # thread): retired at the next scrape; meanwhile as last read
                for fam, labels, value in self._last[ref][1]:
                    fams[fam].add(labels, value)
                return
            else:  # ended without final counts recorded: its counters now
                try:
                    now = self._registry_counted(obj, samples_of(_snapshot(obj, read)))
                except Exception:
                    now = []
                self._retire(self._final(self._last.pop(ref)[1], now))
                return
        try:
            samples = self._registry_counted(obj, samples_of(_snapshot(obj, read)))
        except Exception:  # closing while we looked: as last read, read again next time
            entry = self._last.get(ref)
            for fam, labels, value in entry[1] if entry is not None else ():
                fams[fam].add(labels, value)
            service = getattr(obj, "service", None)
            if samples_of is _server_samples and isinstance(service, str):
                fams["ready"].add((service,), 0.0)  # not ready, as /readyz says of it
            return
        for fam, labels, value in samples:
            fams[fam].add(labels, value)
        counters = [s for s in samples if fams[s[0]].kind == "counter"]
        before = self._last.get(ref)
        if before is not None and dropped is not None:
            reported = {(fam, labels) for fam, labels, _ in counters}
            dropped.extend(s for s in before[1] if (s[0], s[1]) not in reported)
        self._last[ref] = (samples_of, counters)

    @staticmethod
    def _final(last: list[_Sample], now: list[_Sample]) -> list[_Sample]:
        """The counters to retire of a channel or server that ended: its ``now`` counter
        samples, none below the ``last`` scrape's (gauges of ``now`` left out)."""
        final = {(fam, labels): value for fam, labels, value in last}
        kinds = {key: fam.kind for key, fam in _families().items()}
        for fam, labels, value in now:
            if kinds[fam] == "counter":
                final[fam, labels] = max(value, final.get((fam, labels), value))
        return [(fam, labels, value) for (fam, labels), value in final.items()]

    def _retire(self, samples: list[_Sample]) -> None:
        retired, endpoints = self._retired, self._retired_endpoints
        for fam, labels, value in samples:
            key = (fam, labels)
            retired[key] = retired.get(key, 0) + value
            if fam in _ENDPOINT_COUNTERS:  # labels (target, instance_id): newest last
                order = endpoints.get(labels[0])
                if order is None:
                    order = endpoints[labels[0]] = {}
                order.pop(labels[1], None)
                order[labels[1]] = None

    def _forget_endpoints(self, fams: dict[str, _Family]) -> None:
        """Drop the retired per-endpoint counters of a target past
        :data:`RETIRED_ENDPOINTS_MAX` endpoints, the oldest to retire first, except those
        a live channel reports in this scrape (``fams`` holds only live samples yet)."""
        live = [fams[fam].values for fam in _ENDPOINT_COUNTERS]
        for target, order in self._retired_endpoints.items():
            excess = len(order) - RETIRED_ENDPOINTS_MAX
            if excess <= 0:
                continue
            gone = [iid for iid in order
                    if not any((target, iid) in values for values in live)][:excess]
            for iid in gone:
                del order[iid]
                for fam in _ENDPOINT_COUNTERS:
                    self._retired.pop((fam, (target, iid)), None)
