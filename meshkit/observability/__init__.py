"""Observability: traces, Prometheus metrics, structured logs and an admin HTTP server.

**One interceptor per side.** :func:`server_interceptors` returns one fused
:class:`TelemetryServerInterceptor` (tracing -> metrics -> access log in a single handler
wrap); :func:`client_interceptors` one fused per-call :class:`TelemetryClientInterceptor`
(retries run inside it). Each part is switched by :class:`TelemetryOptions` (``tracing``,
``metrics``, ``access_log``, all on by default). Health checks and reflection get metrics
only (``quiet_methods``). ``ServeOptions.telemetry`` and ``DialOptions.telemetry`` (on by
default) install them; give them in ``interceptors`` yourself only with ``telemetry=None``
(beside it they are refused: every call would count twice). ``implementation="otel"``
swaps the spans for opentelemetry-instrumentation-grpc's interceptors, for comparison.

Chain order. Server: **telemetry** -> deadline -> authn -> authz -> rate limit -> handler
(:func:`meshkit.server_chain`, the one place it is written; telemetry first, so it sees
every status the others answer). Client:
**telemetry** -> (token forwarding, your own) -> retry/hedging -> balancer ->
attempt interceptors.

**Tracing** (OpenTelemetry API; the SDK is the ``meshkit[otel]`` extra, set up by
:func:`configure_tracing` from ``OTEL_*``:
``OTEL_TRACES_EXPORTER=otlp|console|none``, ``OTEL_TRACES_SAMPLER[_ARG]``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; OTLP needs
``opentelemetry-exporter-otlp``, else a warning). Context and baggage travel in gRPC
metadata through the global propagator (W3C ``traceparent``/``tracestate``, ``baggage``),
so A -> B -> C is one trace. Spans follow the RPC semantic conventions (v1.37 gRPC):
name ``{rpc.service}/{rpc.method}``, ``rpc.system=grpc``, ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code``; client: ``server.address`` (the dialed mesh
service), ``network.peer.address``/``port`` (the endpoint the call settled on: the last
attempt's, or a hedged call's that answered), ``meshkit.attempts``,
``meshkit.instance_id``, one ``attempt`` event per endpoint when
retried or hedged (or a CLIENT span per attempt with
``DialOptions(telemetry=TelemetryOptions(attempt_spans=True))``); server:
``network.peer.address``/``port`` (the caller), ``meshkit.peer.identity`` (caller's
SPIFFE ID under mTLS), ``meshkit.rate_limited`` when the rate limiter refused the call
(client spans: on any ``RESOURCE_EXHAUSTED`` answer).
:func:`render_trace` draws a finished trace as a tree.

**Spans cost what they must.** An SDK span is built only when the trace is sampled (the
provider's sampler decides, on the trace id meshkit draws); otherwise, and without an SDK
provider under a traced caller, the span is a non-recording one: with an SDK it has
fresh ids, without one it carries the caller's span context on unchanged (as the
OpenTelemetry API does, so the next hop's parent is a span that exists), so
``traceparent`` (sampled flag as decided) still travels and log lines carry trace ids.
Without an SDK and without a caller's context there is no trace context at all. The
default W3C propagator pair is read and written by meshkit itself (any other propagator,
``tracestate`` or baggage goes through the OpenTelemetry API). When
opentelemetry-instrumentation-grpc's aio instrumentor is active (e.g. under
``opentelemetry-instrument``), meshkit makes no spans of its own on that side. A process
that only dials honours ``OTEL_*`` (:func:`tracing_from_env`, at the first call) like one
that serves.

**Metrics** (prometheus-client, see ``_metrics.py`` for why; names follow
go-grpc-prometheus; one :class:`~prometheus_client.CollectorRegistry` per process,
:func:`default_registry`, served at ``/metrics``). Labels: ``grpc_type`` (``unary``,
``client_stream``, ``server_stream``, ``bidi_stream``), ``grpc_service``
(``ecom.v1.OrderService``), ``grpc_method`` (``PlaceOrder``), ``grpc_code`` (``OK``,
``NotFound``, ``Unavailable``...: spelled as go-grpc-prometheus spells them),
``target`` (dialed mesh service), ``instance_id``, ``service`` (mesh service), ``state``.

Label set ``RPC`` = ``grpc_type, grpc_service, grpc_method``; ``inst.`` = ``instance_id``.
A server labels a method with its own name only when it registered it (registered method
handlers, a ``grpc.method_handlers_generic_handler``'s methods, and
``ServeOptions.generic_methods``); any other method a catch-all generic handler serves is
counted with ``grpc_service`` and ``grpc_method`` ``other`` from its first call, as gRFC
A66 records unregistered methods, so callers cannot make the series grow (spans and the
access log keep the name sent). A client labels methods with their names. A registry
counts at most 1,000 server and 1,000 client methods under their own names; further ones
are ``other`` too.

============================================  =========  ==============  ==========================
name                                          type       labels          meaning
============================================  =========  ==============  ==========================
grpc_server_started_total                     counter    RPC             calls started (server)
grpc_server_handled_total                     counter    RPC, grpc_code  calls finished, by status
grpc_server_handling_seconds                  histogram  RPC             handler time, 100 µs..10 s
grpc_server_in_flight                         gauge      RPC             calls being handled
meshkit_server_rate_limited_total             counter    grpc_service,   calls refused by
                                                         grpc_method     the rate limiter
grpc_client_started_total                     counter    RPC             logical calls started
grpc_client_handled_total                     counter    RPC, grpc_code  logical calls, final status
grpc_client_handling_seconds                  histogram  RPC             caller-seen time w/ retries
grpc_client_in_flight                         gauge      RPC             logical calls in progress
meshkit_client_attempts_total                 counter    RPC             attempts of finished calls
grpc_server_msg_{received,sent}_total         counter    RPC             messages; a unary one
grpc_client_msg_{received,sent}_total         counter    RPC             per started/OK call
meshkit_client_retries_total                  counter    target          retries granted (1)
meshkit_client_hedges_total                   counter    target          hedges granted (1)
meshkit_client_retry_budget_exhausted_total   counter    target          retries refused by budget
meshkit_client_retry_deadline_giveups_total   counter    target          retries skipped: deadline
meshkit_client_retry_budget_available         gauge      target          budget allows now; min
meshkit_client_endpoints                      gauge      target, state   READY / IDLE / FAILING; max
meshkit_client_endpoints_ejected              gauge      target          endpoints ejected now; max
meshkit_client_endpoints_unconnectable        gauge      target          with a connect_error; max
meshkit_client_ejections_total                counter    target          outlier ejections
meshkit_client_panic_picks_total              counter    target          calls to ejected: none left
meshkit_client_endpoint_calls_total           counter    target,         attempts sent to endpoint
                                                         instance_id
meshkit_client_endpoint_failures_total        counter    target, inst.   non-OK attempts
meshkit_client_endpoint_in_flight             gauge      target, inst.   attempts in progress
meshkit_client_endpoint_ejected               gauge      target, inst.   1 while ejected; max
meshkit_client_endpoint_rtt_seconds           gauge      target, inst.   P2C EWMA latency; mean
meshkit_registry_watch_errors_total           counter    target          registry watch failures
meshkit_registry_healthy                      gauge      target|service  1 while it works; min
meshkit_registry_kept_endpoints               gauge      target          kept through a fault; max
meshkit_registry_errors_total                 counter    target|svc, op  failed reads / writes
meshkit_server_ready                          gauge      service         1: registered, serving; min
meshkit_server_draining                       gauge      service         1 while draining; max
meshkit_server_deadline_rejections_total      counter    service         refused: deadline passed
meshkit_server_gate_refusals_total            counter    service,reason  gate refusals, by reason
meshkit_server_tls_handshakes_total           counter    service         TLS handshakes started
meshkit_ratelimit_keys_evicted_total          counter    service         memory:// callers evicted
meshkit_ratelimit_storage_errors_total        counter    service         limiter storage failures
meshkit_certificate_expiry_timestamp_seconds  gauge      service         cert notAfter, Unix s
============================================  =========  ==============  ==========================

(1) Granted by the retry policy and budget (a token each), sent or not: a retry or hedge
that finds no endpoint, or whose channel closes during its backoff, sends nothing; the
attempts sent are ``meshkit_client_attempts_total`` (per method) and
``meshkit_client_endpoint_calls_total`` (per endpoint).

Beside the expiry gauge, ``meshkit_certificate_not_before_timestamp_seconds{service}`` holds
the certificate's notBefore (the alert rule fires with a third of the validity left).

The ``meshkit_client_*`` (except attempts), ``meshkit_registry_*`` and ``meshkit_server_*``
families other than ``rate_limited`` are read from live channels and servers at scrape
time (:class:`MeshCollector`), never counted on the call path. Where several live channels
dial one target (or several servers serve one service), each label set is still one
series: counters and in-flight gauges are summed, the other gauges combined as their
meaning says: ``min`` (a flag that is 1 only while every one reports it, e.g. healthy,
ready; the smallest retry budget), ``max`` (1 while any one reports it, e.g. ejected,
draining; the most endpoints any one sees), ``mean`` (the channels' estimates). A
channel that closes (or a server that stops) leaves the gauges, but its counters stay in
the sums (a retired tally per label set), so no counter goes backwards: the final counts
it records as it ends (:func:`ended`) are added once at the next scrape, also for one
that lived between two scrapes; a channel closing with a grace is read as live until
then (its calls still end). The per-endpoint
series of closed channels are kept for the last 256 endpoints per target (older ones
disappear, as Prometheus allows, rather than grow with every redeployment).

**Logs** (structlog; :func:`configure_logging`: JSON lines on stderr, console format on a
terminal, ``MESHKIT_LOG_LEVEL``, ``MESHKIT_LOG_FORMAT``). Quiet until configured: before
:func:`configure_logging` (or the application's own ``structlog.configure``) meshkit
writes nothing to stdout; its loggers go through the standard library's ``logging``
(warnings reach stderr through Python's last-resort handler) and the access log is off
unless the ``meshkit.access`` logger takes ``INFO``. After the application's own
``structlog.configure`` (its processors alone are enough) meshkit's lines, the access
log's included, go through its configuration like its own. Every line written while a
span is current carries ``trace_id``/``span_id`` (:func:`add_trace_context`); fields
named like credentials are redacted (:func:`redact_secrets`). One access-log event per
call, logger ``meshkit.access``, event ``rpc``: ``side`` (``server``/``client``),
``service`` (server) or ``target`` (client), ``method`` (``/pkg.Svc/Method``),
``grpc_type``, ``code``, ``duration_ms``, ``peer`` (caller address, or the endpoint the
call settled on: the last attempt's, a hedged call's that answered), ``peer_identity``
(server, when mTLS verified one), ``attempts`` (client), ``trace_id``, ``span_id``; level
``warning`` for server-side errors (``UNKNOWN``, ``INTERNAL``, ``UNAVAILABLE``...), else
``info``. Metadata values and
message bodies are never logged; ``log_metadata`` opts non-credential keys in. Under
:func:`configure_logging` access-log lines take a lean chain and are written in batches
(:class:`BufferedLineWriter`, every 0.2 s by default, ``MESHKIT_ACCESS_LOG_FLUSH_S``, like
Envoy's access-log flush interval); :func:`flush_logs` writes what is pending. Under light
load spans are ended and access lines written after the response (a server's in the loop's
next turn, a client's two turns later; a client captures JSON access records inline), off
the call's latency path (``TelemetryOptions.complete_after_response_max_in_flight``).

**Admin server**: :class:`AdminServer` — ``/metrics``, ``/healthz``, ``/readyz`` (the
whole process: 503 while a server drains or before registration;
``?service=NAME[&instance=ID]`` for one service or instance), ``/debug/mesh`` (JSON),
plus :meth:`~AdminServer.add_route`.

**Defaults.** ``serve()`` and ``dial()`` install the fused interceptors outermost
(``ServeOptions.telemetry`` / ``DialOptions.telemetry``; ``None`` turns them off),
``serve()`` starts the process's admin server (``MESHKIT_ADMIN_PORT``, default an
ephemeral loopback port, announced as registry meta ``admin_port``) and, when its
telemetry traces to the global provider (no ``tracer_provider`` of its own), calls
:func:`tracing_from_env`, which sets the SDK up only when ``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``MESHKIT_TRACE_FILE`` asks (an explicit
``OTEL_TRACES_EXPORTER=none`` wins over an endpoint). So a service needs::

    configure_logging()                    # JSON logs, MESHKIT_LOG_LEVEL
    await meshkit.serve("orderd", servicers, options=ServeOptions(tls=tls))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import meshkit._log  # noqa: F401  (meshkit's loggers quiet until logging is configured)
from meshkit._lazy import first_read_lock

if TYPE_CHECKING:
    from meshkit.observability._admin import AdminOptions, AdminServer, Handler
    from meshkit.observability._client import (
        AttemptSpanInterceptor,
        TelemetryClientInterceptor,
    )
    from meshkit.observability._files import JsonLinesSpanExporter, load_spans
    from meshkit.observability._live import ended, live_channel_stats, live_server_stats, track
    from meshkit.observability._logging import (
        BufferedLineWriter,
        access_logger,
        add_trace_context,
        configure_logging,
        flush_logs,
        is_sensitive_key,
        redact_secrets,
    )
    from meshkit.observability._metrics import (
        DURATION_BUCKETS_S,
        MeshCollector,
        RpcMetrics,
        default_registry,
        rpc_metrics,
        set_certificate_expiry,
    )
    from meshkit.observability._options import PeerIdentityFunc, TelemetryOptions
    from meshkit.observability._render import render_trace
    from meshkit.observability._server import TelemetryServerInterceptor
    from meshkit.observability._setup import (
        Implementation,
        attempt_interceptors,
        client_interceptors,
        server_interceptors,
    )
    from meshkit.observability._tracing import (
        configure_tracing,
        extract_context,
        inject_context,
        otel_client_interceptors,
        otel_server_interceptor,
        tracing_from_env,
    )

# Where each public name lives. ``import meshkit.observability`` (or of any of its
# submodules) loads none of them: a name's module is imported when the name is first read
# (PEP 562), so a program pays for the parts it uses (``configure_logging`` alone needs
# neither aiohttp, limits nor the OpenTelemetry SDK). Importing these modules has no side
# effect a caller relies on beyond the quiet logging default (``meshkit._log``, above):
# their at-exit flush and at-fork hooks concern objects only they make.
_LAZY = {
    **dict.fromkeys(("AdminOptions", "AdminServer", "Handler"),
                    "meshkit.observability._admin"),
    **dict.fromkeys(("AttemptSpanInterceptor", "TelemetryClientInterceptor"),
                    "meshkit.observability._client"),
    **dict.fromkeys(("ended", "live_channel_stats", "live_server_stats", "track"),
                    "meshkit.observability._live"),
    **dict.fromkeys(("BufferedLineWriter", "access_logger", "add_trace_context",
                     "configure_logging", "flush_logs", "is_sensitive_key",
                     "redact_secrets"), "meshkit.observability._logging"),
    **dict.fromkeys(("DURATION_BUCKETS_S", "MeshCollector", "RpcMetrics",
                     "default_registry", "rpc_metrics", "set_certificate_expiry"),
                    "meshkit.observability._metrics"),
    **dict.fromkeys(("PeerIdentityFunc", "TelemetryOptions"), "meshkit.observability._options"),
    **dict.fromkeys(("TelemetryServerInterceptor",), "meshkit.observability._server"),
    **dict.fromkeys(("Implementation", "attempt_interceptors", "client_interceptors",
                     "server_interceptors"), "meshkit.observability._setup"),
    **dict.fromkeys(("configure_tracing", "extract_context", "inject_context",
                     "otel_client_interceptors", "otel_server_interceptor",
                     "tracing_from_env"), "meshkit.observability._tracing"),
}

# These need the OpenTelemetry SDK (``meshkit[otel]``): reading one without it raises
# ConfigError naming the extra, so ``import meshkit`` works with the API alone.
_SDK_EXPORTS = {"JsonLinesSpanExporter": "meshkit.observability._files",
                "load_spans": "meshkit.observability._files",
                "render_trace": "meshkit.observability._render"}

__all__ = [
    "DURATION_BUCKETS_S",
    "AdminOptions",
    "AdminServer",
    "AttemptSpanInterceptor",
    "BufferedLineWriter",
    "Handler",
    "Implementation",
    "MeshCollector",
    "PeerIdentityFunc",
    "RpcMetrics",
    "TelemetryClientInterceptor",
    "TelemetryOptions",
    "TelemetryServerInterceptor",
    "access_logger",
    "add_trace_context",
    "attempt_interceptors",
    "client_interceptors",
    "configure_logging",
    "configure_tracing",
    "default_registry",
    "ended",
    "extract_context",
    "flush_logs",
    "inject_context",
    "is_sensitive_key",
    "live_channel_stats",
    "live_server_stats",
    "otel_client_interceptors",
    "otel_server_interceptor",
    "redact_secrets",
    "rpc_metrics",
    "server_interceptors",
    "set_certificate_expiry",
    "tracing_from_env",
    "track",
]
if TYPE_CHECKING:
    __all__ += ["JsonLinesSpanExporter", "load_spans", "render_trace"]
else:
    # Hidden from type checkers: to them a module __getattr__ makes every name exist (as
    # Any), so a misspelled import would pass; they see the names imported above, and
    # every name in ``__all__``. At run time what needs the SDK is exported only with it,
    # and whether it imports is known only by importing it (``_tracing`` does): so
    # ``__all__`` is made when first read (``from meshkit.observability import *``,
    # ``dir()``), not at import.
    _BASE_ALL = tuple(__all__)
    del __all__

    def __getattr__(name: str) -> Any:
        if name == "__all__":
            with first_read_lock():
                from meshkit.observability._tracing import sdk_available

            exported = [*_BASE_ALL, *(_SDK_EXPORTS if sdk_available() else ())]
            globals()["__all__"] = exported
            return exported
        module = _LAZY.get(name)
        if module is None:
            module = _SDK_EXPORTS.get(name)
            if module is None:
                raise AttributeError(
                    f"module 'meshkit.observability' has no attribute {name!r}")
            with first_read_lock():
                from meshkit.observability._tracing import require_sdk

            require_sdk(name)
        with first_read_lock():
            value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # read once: later reads are plain module attributes
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *(globals().get("__all__") or __getattr__("__all__"))})
