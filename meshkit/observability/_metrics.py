"""Prometheus metrics: RPC counters and histograms (hot path) and mesh internals (at scrape).

Why prometheus-client rather than the OpenTelemetry SDK with a Prometheus exporter: the
per-call cost. With prometheus-client each method's label children are bound once
(:class:`BoundServer`/:class:`BoundClient`), so a call costs a handful of ``inc``/
``observe`` on pre-resolved children (a lock and an add each). The OTel SDK's
``counter.add(1, attributes)`` hashes the attribute set on every call to find its
aggregation, and needs a reader/exporter pipeline in the process; the exposition format
and names (go-grpc-prometheus) are what Prometheus dashboards already know.

Mesh internals (retries, hedges, ejections, endpoints...) are not counted on the hot path
at all: :class:`MeshCollector` reads the typed snapshots of the live channels and servers
(:mod:`meshkit.observability._live`) when ``/metrics`` is scraped.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshkit.errors import ConfigError
from meshkit.observability._live import live_channel_stats, live_server_stats
from meshkit.observability._semconv import MethodNames

__all__ = [
    "DURATION_BUCKETS_S",
    "BoundClient",
    "BoundServer",
    "MeshCollector",
    "RpcMetrics",
    "default_registry",
    "rpc_metrics",
    "set_certificate_expiry",
]

DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
"""Latency histogram bounds, seconds: 100 µs to 10 s (+Inf is added), for loopback calls
well under a millisecond up to multi-second ones."""

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

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
    and registered (with a :class:`MeshCollector`) on first use."""
    reg = _DEFAULT if registry is None else registry
    found = _BY_REGISTRY.get(reg)
    if found is None:
        found = _BY_REGISTRY[reg] = RpcMetrics(reg)
    return found


def set_certificate_expiry(service: str, not_after_unix_s: float, *,
                           registry: CollectorRegistry | None = None) -> None:
    """Publish when ``service``'s workload certificate expires, for alerting.

    Sets ``meshkit_certificate_expiry_timestamp_seconds{service=...}``; ``serve()`` calls it
    at start and whenever the server's TLS reloader picks up a renewed certificate
    (``TLSOptions.server_credentials(on_reload=...)``); alert on ``... - time() < 86400``.

    Args:
        service: mesh service name the certificate identifies, e.g. ``"orderd"``.
        not_after_unix_s: the certificate's ``notAfter``, Unix epoch seconds.
        registry: default :func:`default_registry`.

    Raises:
        ConfigError: empty ``service`` or a non-finite / negative time (quoted).
    """
    if not isinstance(service, str) or not service:
        raise ConfigError(f"service must be a non-empty string, got {service!r}")
    if not isinstance(not_after_unix_s, int | float) or not 0 <= not_after_unix_s < 1e11:
        raise ConfigError(f"not_after_unix_s must be epoch seconds, got {not_after_unix_s!r}")
    rpc_metrics(registry).certificate_expiry.labels(service).set(not_after_unix_s)


class BoundServer:
    """One server method's metric children, resolved once (the per-call hot path)."""

    __slots__ = ("_handled", "_names", "_rpc", "handling", "in_flight", "rate_limited",
                 "started")

    def __init__(self, rpc: RpcMetrics, names: MethodNames) -> None:
        labels = (names.grpc_type, names.service, names.name)
        self._rpc = rpc
        self._names = labels
        self.started = rpc.server_started.labels(*labels)
        self.handling = rpc.server_handling_seconds.labels(*labels)
        self.in_flight = rpc.server_in_flight.labels(*labels)
        self.rate_limited = rpc.server_rate_limited.labels(names.service, names.name)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def finished(self, code: grpc.StatusCode, duration_s: float,
                 rate_limited: bool = False) -> None:
        """Count one finished call with its status and duration (seconds); ``rate_limited``
        when the rate limiter refused it."""
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._rpc.server_handled.labels(*self._names,
                                                                          code.name)
        child.inc()
        self.handling.observe(duration_s)
        self.in_flight.dec()
        if rate_limited:
            self.rate_limited.inc()


class BoundClient:
    """One client method's metric children, resolved once."""

    __slots__ = ("_handled", "_names", "_rpc", "attempts", "handling", "in_flight", "started")

    def __init__(self, rpc: RpcMetrics, names: MethodNames) -> None:
        labels = (names.grpc_type, names.service, names.name)
        self._rpc = rpc
        self._names = labels
        self.started = rpc.client_started.labels(*labels)
        self.handling = rpc.client_handling_seconds.labels(*labels)
        self.in_flight = rpc.client_in_flight.labels(*labels)
        self.attempts = rpc.client_attempts.labels(*labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def finished(self, code: grpc.StatusCode, duration_s: float, attempts: int) -> None:
        """Count one finished logical call, its status, duration (seconds) and attempts."""
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._rpc.client_handled.labels(*self._names,
                                                                          code.name)
        child.inc()
        self.handling.observe(duration_s)
        self.in_flight.dec()
        if attempts:
            self.attempts.inc(attempts)


class RpcMetrics:
    """Every meshkit metric family on one registry; get it with :func:`rpc_metrics`.

    Args:
        registry: where the families are registered (with a :class:`MeshCollector`).
        buckets_s: histogram bounds in seconds (default :data:`DURATION_BUCKETS_S`).

    Raises:
        ValueError: (prometheus-client) the families already exist on ``registry``; use
            :func:`rpc_metrics`, which creates them once per registry.
    """

    def __init__(self, registry: CollectorRegistry,
                 buckets_s: Iterable[float] = DURATION_BUCKETS_S) -> None:
        buckets = tuple(buckets_s)
        self.registry = registry
        self.server_started = Counter(
            "grpc_server_started", "RPCs started on the server.", _RPC_LABELS,
            registry=registry)
        self.server_handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code.",
            (*_RPC_LABELS, "grpc_code"), registry=registry)
        self.server_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler's start to its end (last response), seconds.",
            _RPC_LABELS, buckets=buckets, registry=registry)
        self.server_in_flight = Gauge(
            "grpc_server_in_flight", "RPCs being handled now.", _RPC_LABELS,
            registry=registry)
        self.server_rate_limited = Counter(
            "meshkit_server_rate_limited",
            "RPCs refused by the rate limiter (RESOURCE_EXHAUSTED over a rule).",
            ("grpc_service", "grpc_method"), registry=registry)
        self.client_started = Counter(
            "grpc_client_started", "Logical RPCs started by clients (retries not counted).",
            _RPC_LABELS, registry=registry)
        self.client_handled = Counter(
            "grpc_client_handled", "Logical RPCs completed by clients, by final status code.",
            (*_RPC_LABELS, "grpc_code"), registry=registry)
        self.client_handling_seconds = Histogram(
            "grpc_client_handling_seconds",
            "Logical call duration seen by the caller, retries included, seconds.",
            _RPC_LABELS, buckets=buckets, registry=registry)
        self.client_in_flight = Gauge(
            "grpc_client_in_flight", "Logical RPCs in progress.", _RPC_LABELS,
            registry=registry)
        self.client_attempts = Counter(
            "meshkit_client_attempts",
            "Attempts made by finished logical RPCs (retries and hedges included).",
            _RPC_LABELS, registry=registry)
        self.certificate_expiry = Gauge(
            "meshkit_certificate_expiry_timestamp_seconds",
            "notAfter of the workload certificate, Unix seconds.", ("service",),
            registry=registry)
        self.mesh = MeshCollector()
        registry.register(self.mesh)

    def bind_server(self, names: MethodNames) -> BoundServer:
        """The server-side children for one method."""
        return BoundServer(self, names)

    def bind_client(self, names: MethodNames) -> BoundClient:
        """The client-side children for one method."""
        return BoundClient(self, names)


class _Family:
    """Samples of one scrape-time family, summed per label set (two channels dialing the
    same service in one process must not produce duplicate series)."""

    __slots__ = ("doc", "kind", "labels", "name", "values")

    def __init__(self, kind: str, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + value

    def metric(self) -> Metric:
        fam: CounterMetricFamily | GaugeMetricFamily
        if self.kind == "counter":
            fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        else:
            fam = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            fam.add_metric(list(labels), value)
        return fam


class MeshCollector:
    """A prometheus-client collector reading mesh internals at scrape time.

    From every live :class:`~meshkit.MeshChannel` (label ``target``: the dialed service)
    and :class:`~meshkit.MeshServer` (label ``service``); see the package docstring for
    the list. Nothing is counted on the call path.
    """

    def describe(self) -> list[Metric]:
        """No fixed description: the families depend on what is live at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build the families from the live channels and servers."""
        t = ("target",)
        ti = ("target", "instance_id")
        fams = {
            "endpoints": _Family("gauge", "meshkit_client_endpoints",
                                 "Endpoints of the dialed service, by connection state.",
                                 ("target", "state")),
            "ejected": _Family("gauge", "meshkit_client_endpoints_ejected",
                               "Endpoints out of rotation by outlier ejection now.", t),
            "ejections": _Family("counter", "meshkit_client_ejections",
                                 "Outlier ejections since the channel opened.", t),
            "retries": _Family("counter", "meshkit_client_retries",
                               "Retry attempts sent (after a failed attempt).", t),
            "hedges": _Family("counter", "meshkit_client_hedges",
                              "Hedged attempts sent.", t),
            "budget_exhausted": _Family("counter", "meshkit_client_retry_budget_exhausted",
                                        "Retries or hedges refused by the retry budget.", t),
            "gave_up": _Family("counter", "meshkit_client_retry_deadline_giveups",
                               "Retries not sent because the deadline was too close.", t),
            "budget": _Family("gauge", "meshkit_client_retry_budget_available",
                              "Retries the budget still allows in its window.", t),
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
                                  "1 while the endpoint is ejected, else 0.", ti),
            "ep_rtt": _Family("gauge", "meshkit_client_endpoint_rtt_seconds",
                              "Balancer's EWMA latency estimate per endpoint, seconds.", ti),
            "registry_ok": _Family("gauge", "meshkit_registry_healthy",
                                   "1 while the dialed service's registry can be read and "
                                   "written, else 0.", t),
            "registry_kept": _Family("gauge", "meshkit_registry_kept_endpoints",
                                     "Endpoints kept through a registry fault although the "
                                     "registry does not list them now.", t),
            "registry_errors": _Family("counter", "meshkit_registry_errors",
                                       "Failed registry reads and writes.", ("target", "op")),
            "ready": _Family("gauge", "meshkit_server_ready",
                             "1 when the server is registered and serving, not draining.",
                             ("service",)),
            "draining": _Family("gauge", "meshkit_server_draining",
                                "1 while the server drains.", ("service",)),
            "deadline_rejected": _Family("counter", "meshkit_server_deadline_rejections",
                                         "Calls refused because their deadline had passed.",
                                         ("service",)),
        }
        for ch in live_channel_stats():
            target = (ch.service,)
            states: dict[str, int] = {"READY": 0, "IDLE": 0, "FAILING": 0}
            ejected = 0
            for ep in ch.endpoints:
                key = (ch.service, ep.instance_id)
                fams["ep_calls"].add(key, ep.calls)
                fams["ep_failures"].add(key, ep.failures)
                if not ep.present:
                    continue
                states[ep.state] = states.get(ep.state, 0) + 1
                ejected += ep.ejected
                fams["ep_in_flight"].add(key, ep.in_flight)
                fams["ep_ejected"].add(key, float(ep.ejected))
                if ep.rtt_ms is not None:
                    fams["ep_rtt"].add(key, ep.rtt_ms / 1000)
            for state, n in states.items():
                fams["endpoints"].add((ch.service, state), n)
            fams["ejected"].add(target, ejected)
            fams["ejections"].add(target, ch.ejections)
            retry = ch.retry
            if retry is not None:
                fams["retries"].add(target, retry.retries)
                fams["hedges"].add(target, retry.hedges)
                fams["budget_exhausted"].add(target, retry.budget_exhausted)
                fams["gave_up"].add(target, retry.gave_up_deadline)
                fams["budget"].add(target, retry.budget_left)
            fams["watch_errors"].add(target, ch.watch_errors)
            reg = ch.registry
            if reg is not None:
                fams["registry_ok"].add(target, float(bool(reg.get("ok", True))))
                fams["registry_kept"].add(target, reg.get("kept_endpoints", 0))
                fams["registry_errors"].add((ch.service, "read"), reg.get("read_errors", 0))
                fams["registry_errors"].add((ch.service, "write"), reg.get("write_errors", 0))
        for srv in live_server_stats():
            svc = (srv.service,)
            fams["ready"].add(svc, float(srv.ready))
            fams["draining"].add(svc, float(srv.draining))
            fams["deadline_rejected"].add(svc, srv.deadline_rejections)
        for fam in fams.values():
            if fam.values:
                yield fam.metric()
