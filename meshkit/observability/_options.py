"""Options shared by the telemetry interceptors of both sides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from meshkit._config import check_bool, check_instance, check_metadata_key, check_strings
from meshkit._methods import HEALTH_METHODS, MethodMatcher
from meshkit.errors import ConfigError
from meshkit.observability._logging import is_sensitive_key

__all__ = ["PeerIdentityFunc", "TelemetryOptions", "auth_peer_identity"]

PeerIdentityFunc = Callable[[], "str | None"]
"""``() -> identity or None``, called inside a server handler once the call has finished
(e.g. the verified SPIFFE ID set by the authentication interceptor)."""

# the health and reflection services' methods by name, not ``Service/*``: a catch-all
# generic handler (a gateway) serves any name a caller sends under those services
# (``/grpc.health.v1.Health/Anything``), which must not get past the access log and traces
QUIET_METHODS: tuple[str, ...] = (
    *sorted(HEALTH_METHODS),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)


def auth_peer_identity() -> PeerIdentityFunc | None:
    """A :data:`PeerIdentityFunc` reading :func:`meshkit.auth.current_peer` (the caller's
    SPIFFE ID), or ``None`` when meshkit.auth cannot be imported."""
    try:
        from meshkit.auth._context import peer_spiffe_id
    except Exception:
        return None
    return peer_spiffe_id


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryOptions:
    """What the fused telemetry interceptors record; every part can be switched off.

    Args:
        tracing: client/server spans and trace-context propagation (default ``True``);
            SDK spans are built only for sampled traces (see the package docstring), and
            none at all on a side where opentelemetry-instrumentation-grpc's aio
            instrumentor is active.
        metrics: Prometheus RPC metrics (default ``True``).
        access_log: one ``meshkit.access`` log event per call (default ``True``).
        tracer_provider: where spans go; ``None`` (default) uses the global provider
            (set it with :func:`~meshkit.observability.configure_tracing`), also when it is
            installed after the interceptor is built.
        registry: Prometheus registry; ``None`` (default) is the process's meshkit
            registry (:func:`~meshkit.observability.default_registry`).
        quiet_methods: method patterns (see :mod:`meshkit._methods`) that get no span and no
            access log, only metrics (default: the health service's
            Check, Watch and List and reflection's ServerReflectionInfo, by name: any other
            name under those services, which a catch-all handler may serve, is logged).
        log_metadata: request metadata keys whose values the access log includes, as
            ``md`` (default none): a key sent once maps to its value, one sent more than
            once to the list of its values, in order; bytes are shown as text.
            Credential-like keys (``authorization``, ``*token*``,
            ``cookie``, ... see :func:`~meshkit.observability.is_sensitive_key`) and
            binary ``-bin`` keys are refused.
        attempt_spans: client side: one CLIENT span per attempt under an INTERNAL logical
            span; ``DialOptions(telemetry=TelemetryOptions(attempt_spans=True))`` is all
            it takes (``dial()`` installs the
            :func:`~meshkit.observability.attempt_interceptors` itself, which cost one
            extra task per attempt in grpc.aio; install them as
            ``DialOptions.attempt_interceptors`` only with ``telemetry=None``, beside
            :func:`~meshkit.observability.client_interceptors`); default ``False``: one
            CLIENT span per logical call, with an ``attempt`` event per attempt when
            there were several.
        peer_identity: server side: how to learn the verified caller identity after the
            handler ran; default reads :func:`meshkit.auth.current_peer` when available.
        complete_after_response_max_in_flight: while at most this many calls are in
            flight through this side's interceptor (this one included) or waiting for
            their deferred completion, the call's span is ended and its access-log line
            written after the response has been handed to gRPC (server: the event loop's
            next turn) or to the caller (client: two turns later, so that a call the
            caller starts at once is sent first), the span stamped with the time the
            call ended: both leave the call's latency path. A client's deferred work
            then runs while its request travels; where client and server share two
            cores, grpc's threads receiving that request wait for it (one caller, every
            call sampled: +37 us of p50 against ``0`` on one such VM), so ``0`` suits a
            client co-located with its server on a small host. Above it (a client driving
            many calls at once, where deferring only adds scheduling work) and at ``0``
            both happen before the response, so a span is exported by the time its call
            returns. Only work worth moving is deferred: ending a recorded (sampled) span,
            an access line its logger renders on the spot (the console format, the
            standard library), and on a server the JSON access log's capture (a tuple,
            :func:`~meshkit.observability.configure_logging`). A server defers only while
            its event loop has nothing else ready (asyncio's own loops), where the turn
            it adds is idle time, or, on a loop that does not show its ready queue
            (uvloop), while the call is the only one in its request gate (``serve()``
            wires the count; a callback there is C, and such a server keeps deferring
            under load): a server whose handlers answer at once has about one call in
            flight at a time, and under load its busy loop now finishes calls inline
            (a deferral there adds a callback per call: every call sampled, concurrency
            32, +0.9 and +1.9 % QPS when spans stopped deferring on a busy loop;
            ``benchmarks/RESULTS.md``). A client captures the JSON record inline
            (deferred, it lowered the p50 at one caller on one VM and raised it four
            times as much on another). Default 4. Metrics are always recorded before
            the response. ``0`` puts every completion before the response.
        expose_exception_text: server side: record a handler's unhandled exception on
            its span as the SDK does, its text and stack trace included (default
            ``False``: an ``exception`` event with ``exception.type``, the class name,
            and ``exception.message`` "Unexpected <Type> in the handler (logged by the
            server)", the details meshkit answers such an exception with (a downstream
            deadline's answer aside): its text, which may hold a connection string or a
            password, stays in the server's log, as with
            ``ServeOptions.expose_exception_text``, whose ``True`` should go with this).

    Raises:
        ConfigError: a flag that is not ``True``/``False``, a ``tracer_provider`` that is
            not an OpenTelemetry ``TracerProvider``, a ``registry`` that is not a
            ``CollectorRegistry`` instance (the class, say), a ``peer_identity`` that is
            not a function, ``log_metadata`` or ``quiet_methods`` given as one string or
            not a collection of strings (``None``), a sensitive or binary
            ``log_metadata`` key, an upper-case one, one no gRPC metadata can carry
            (a blank, a ``:`` pseudo-header, a non-ASCII letter) or one grpc consumes
            itself (``grpc-timeout``...), or a bad ``quiet_methods``
            pattern, or a negative ``complete_after_response_max_in_flight`` (the field
            named, the value quoted).
    """

    tracing: bool = True
    metrics: bool = True
    access_log: bool = True
    tracer_provider: trace.TracerProvider | None = None
    registry: CollectorRegistry | None = None
    quiet_methods: tuple[str, ...] = QUIET_METHODS
    log_metadata: tuple[str, ...] = ()
    attempt_spans: bool = False
    peer_identity: PeerIdentityFunc | None = None
    complete_after_response_max_in_flight: int = 4
    expose_exception_text: bool = False

    def __post_init__(self) -> None:
        for flag in ("tracing", "metrics", "access_log", "attempt_spans",
                     "expose_exception_text"):
            check_bool(flag, getattr(self, flag))
        check_instance("tracer_provider", self.tracer_provider, trace.TracerProvider,
                       what="an OpenTelemetry TracerProvider")
        check_instance("registry", self.registry, CollectorRegistry)
        if self.peer_identity is not None and (isinstance(self.peer_identity, type)
                                               or not callable(self.peer_identity)):
            raise ConfigError("peer_identity must be a function () -> identity or None, or "
                              f"None, got {self.peer_identity!r}")
        object.__setattr__(self, "quiet_methods",
                           check_strings("quiet_methods", self.quiet_methods))
        object.__setattr__(self, "log_metadata",
                           check_strings("log_metadata", self.log_metadata))
        MethodMatcher.of(self.quiet_methods, where="quiet_methods")  # validates now
        limit = self.complete_after_response_max_in_flight
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"complete_after_response_max_in_flight must be an int >= 0, "
                              f"got {limit!r}")
        for key in self.log_metadata:
            if not isinstance(key, str) or not key or key != key.lower():
                raise ConfigError(f"log_metadata keys must be lower-case strings, got {key!r}")
            if is_sensitive_key(key) or key.endswith("-bin"):
                raise ConfigError(f"log_metadata must not name credentials or binary keys, "
                                  f"got {key!r}")
            # a key no metadata can carry (a blank, a pseudo-header, a non-ASCII letter)
            # or one grpc consumes itself would log nothing, silently
            check_metadata_key("log_metadata", key)
