"""Typed snapshots of channels and servers (low in the tree: imports nothing of meshkit).

Introspection points down the tree, as gRPC's channelz does: a
:class:`~meshkit.MeshChannel` and a :class:`~meshkit.MeshServer` register themselves with
the observability registry (:func:`meshkit.observability.track`) and answer ``stats()``
with a frozen :class:`ChannelStats` / :class:`ServerStats`; ``/metrics`` and
``/debug/mesh`` read these snapshots and never import the channel or the server.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ChannelStats",
    "EndpointStats",
    "RetrySnapshot",
    "ServerStats",
    "json_safe",
]


def json_safe(value: Any) -> Any:
    """``value`` (dicts, lists and tuples of plain values, nested) with every float that is
    not finite (an ``inf`` timeout: "no limit") as ``None``: JSON has no ``Infinity`` or
    ``NaN`` (RFC 8259 section 6), and ``json.dumps`` would write the bare tokens, which
    ``JSON.parse`` and ``jq`` refuse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointStats:
    """One endpoint of a channel (or one that left recently).

    Args:
        instance_id: registry instance id.
        address: ``host:port``.
        state: ``"READY"``, ``"IDLE"`` (idle or connecting) or ``"FAILING"``.
        present: still in the registry's answer (``False``: removed, kept for history).
        ejected: out of rotation by outlier ejection now.
        calls: attempts sent to it; failures: of those, non-OK (not those cancelled here).
        in_flight: attempts in progress.
        rtt_ms: the balancer's EWMA latency estimate, ms (``None`` if it keeps none).
        load_ms: the balancer's load score, ms (P2C: ``rtt * (pending + 1)``), or ``None``.
        pending: calls the balancer counts as pending, or ``None``.
        connect_error: why it cannot be connected, as a TLS probe of it found when its
            sub-channel last went ``TRANSIENT_FAILURE`` (channels dialed with
            ``DialOptions(tls=...)``: :mod:`meshkit.auth._probe`), e.g. ``"certificate
            verify failed: certificate has expired; the server's certificate
            spiffe://td/svc/x expired at 2026-01-01T00:00:00Z"``, ``"peer identity ...
            is not the expected ..."``, ``"the server answered without TLS (a plaintext
            server?)"``, ``"connection refused"``; ``None`` (default) when unknown, the
            probe found nothing wrong, or it has connected since.
    """

    instance_id: str
    address: str
    state: str
    present: bool
    ejected: bool
    calls: int
    failures: int
    in_flight: int
    rtt_ms: float | None = None
    load_ms: float | None = None
    pending: int | None = None
    connect_error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySnapshot:
    """Retry and hedging counters of a channel since it opened.

    Args:
        calls: logical calls seen; retries / hedges: extra attempts granted (each spent a
        retry-budget token), sent or not (one that finds no endpoint, or whose channel
        closes in its backoff, sends nothing);
        budget_exhausted: retries or hedges the budget refused; gave_up_deadline: retries
        not sent because the deadline was too close; budget_left: retries the budget still
        allows in its window; budget: the budget's options, as text.
    """

    calls: int
    retries: int
    hedges: int
    budget_exhausted: int
    gave_up_deadline: int
    budget_left: float
    budget: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStats:
    """A snapshot of one balanced channel.

    Args:
        service: the dialed service.
        state: the channel's connectivity name (``READY``, ``CONNECTING``...).
        balancer: the balancer's class name (inside ejection).
        ejections: outlier ejections since the channel opened.
        panic_picks: calls sent to an ejected endpoint because no endpoint in rotation
            could take them (panic routing: ejection never empties the service).
        watch_errors: discovery watch failures (the channel kept its last endpoints).
        endpoints: every current endpoint and recently removed ones, by instance id.
        retry: retry counters, or ``None`` with retries off.
        policies: the active policies as JSON-able values (outlier, timeouts, deadline
            propagation, TLS).
        registry: the registry's health as JSON-able values (``RegistryStatus`` fields:
            ``readable``, ``writable``, error counters, ``kept_endpoints``...), or ``None``
            for a registry that reports none.
    """

    service: str
    state: str
    balancer: str
    ejections: int
    watch_errors: int
    panic_picks: int = 0
    endpoints: tuple[EndpointStats, ...]
    retry: RetrySnapshot | None
    policies: dict[str, Any] = field(default_factory=dict)
    registry: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``/debug/mesh`` shows; a float that is not finite, such as
        an ``inf`` timeout, is ``None``)."""
        out: dict[str, Any] = json_safe(asdict(self))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStats:
    """A snapshot of one mesh server.

    Args:
        service: the mesh service name.
        instance_id / address: as registered (``None`` before registration).
        services: the gRPC services it serves.
        ready: registered, serving and not draining (what ``/readyz`` reports; with
            ``ServeOptions.follow_health`` it follows :attr:`serving` at once, while the
            registration follows it within ``readmit_after_s``: see ``registered``).
        serving: the gRPC health status of ``""`` (the whole server) and of the mesh
            service name is SERVING, as the application leaves it on its health servicer
            (``MeshServer.health``): what gRPC health checks, Consul's GRPC check and
            gRFC A17 clients read (default ``True``).
        draining: draining now: its drain began and the server has not stopped yet
            (``False`` before the drain and once it has ended).
        tls: serving with transport security.
        chain: the server checks in the order they run.
        telemetry: telemetry on.
        admin: the admin server's URL, or ``None``.
        deadline_rejections: calls refused because their deadline had passed.
        gate_shed: calls the request gate (with ``ServerLimits(read_requests=False)``, the
            call-slot count) shed ``RESOURCE_EXHAUSTED`` "server busy" (the nack trailer:
            no code of theirs ran), calls and request streams together.
        gate_timed_out: unary calls the gate ended because their request did not arrive
            within ``first_message_timeout_s`` (``CANCELLED``).
        gate_evicted: calls waiting for their request that gave up their slot or read
            permit to a newer call (``CANCELLED``; ``RESOURCE_EXHAUSTED`` for one evicted
            while queued for a read permit), request streams with no message yet that
            gave up their place to a new stream (``CANCELLED``), and server streams whose
            client took no message for ``ServerLimits.evict_stalled_after_s`` that gave
            up their slot (cancelled), each counted under this reason alone.
        gate_cardinality: unary-request calls the gate refused ``UNIMPLEMENTED`` because
            they sent no request message, or (``ServerLimits.check_request_count``) more
            than one.
        tls_handshakes: TLS handshakes started (grpc asks the certificate reloader before
            each one); grpcio tells Python nothing about a handshake's outcome, so refused
            handshakes show as handshakes that no call followed.
        rate_limit_keys_evicted: callers (a method and a caller key) the server's
            ``memory://`` rate limiter (``ServeOptions.rate_limit``) forgot to keep at
            most ``RateLimitOptions.max_keys``; each starts a fresh window at its next
            call. ``0`` without ``rate_limit`` or with another storage (which keeps its
            counts itself and evicts nothing).
        rate_limit_storage_errors: failures of the rate limiter's storage (an error, or a
            round trip slower than ``RateLimitOptions.storage_timeout_s``:
            :attr:`~meshkit.resilience.ratelimit.StorageLimiter.storage_errors`): while
            it grows, the limits are not enforced (``on_storage_error="allow"``) or calls
            are refused ``UNAVAILABLE`` (``"deny"``). ``0`` without ``rate_limit``.
        registry: the health of the registry the server registers in, as JSON-able values
            (``RegistryStatus`` fields and ``ok``, as :attr:`ChannelStats.registry`), or
            ``None`` for a registry that reports none: a failing heartbeat or keep-alive
            (``writable`` False) means the instance will drop out of discovery.
        registered: the instance is in the registry, as far as the server knows (the
            last write it made there succeeded): ``False`` before :meth:`start`'s
            registration, while withdrawn for its health status
            (``ServeOptions.follow_health``: ``serving`` false, or true again with its
            readmission pending ``readmit_after_s``) and once the drain has
            deregistered it. A server that is up but gets no mesh calls and reads
            ``False`` here is out of discovery; ``True`` with ``serving`` false is a
            server still listed while not serving (a withdrawal the registry failed,
            tried again; ``follow_health=False``; a registry that checks the instance's
            health itself lists it failing). Default ``False``.
    """

    service: str
    instance_id: str | None
    address: str | None
    services: tuple[str, ...]
    ready: bool
    draining: bool
    tls: bool
    chain: tuple[str, ...]
    telemetry: bool
    admin: str | None
    deadline_rejections: int = 0
    gate_shed: int = 0
    gate_timed_out: int = 0
    gate_evicted: int = 0
    gate_cardinality: int = 0
    tls_handshakes: int = 0
    rate_limit_keys_evicted: int = 0
    rate_limit_storage_errors: int = 0
    registry: dict[str, Any] | None = None
    serving: bool = True
    registered: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``/debug/mesh`` shows; a float that is not finite, such as
        an ``inf`` timeout, is ``None``)."""
        out: dict[str, Any] = json_safe(asdict(self))
        return out
