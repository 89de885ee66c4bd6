"""Tracing set-up from ``OTEL_*`` variables, metadata propagation, and the reference
interceptors of opentelemetry-instrumentation-grpc."""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableSequence, Sequence
from importlib import metadata as importlib_metadata
from typing import Any

import grpc
import structlog
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from meshkit.errors import ConfigError

__all__ = [
    "configure_tracing",
    "extract_context",
    "inject_context",
    "otel_client_interceptors",
    "otel_server_interceptor",
]

_log = structlog.get_logger("meshkit.observability")

_SAMPLERS = frozenset({
    "always_on", "always_off", "traceidratio", "parentbased_always_on",
    "parentbased_always_off", "parentbased_traceidratio",
})
_EXPORTERS = frozenset({"otlp", "otlp_proto_grpc", "otlp_proto_http", "console", "none"})
_TRACE_KEYS = frozenset({"traceparent", "tracestate"})


class _MetadataGetter(Getter[Sequence[Any]]):
    """Reads propagation headers from gRPC invocation metadata (a sequence of pairs)."""

    def get(self, carrier: Sequence[Any], key: str) -> list[str] | None:
        found = [v if isinstance(v, str) else v.decode("ascii", "replace")
                 for k, v in carrier if k == key]
        return found or None

    def keys(self, carrier: Sequence[Any]) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[MutableSequence[tuple[str, str | bytes]]]):
    """Appends propagation headers to outgoing metadata, replacing a previous value (a
    retried or re-injected call must not carry two ``traceparent`` headers)."""

    def set(self, carrier: MutableSequence[tuple[str, str | bytes]], key: str,
            value: str) -> None:
        for i, (k, _) in enumerate(carrier):
            if k == key:
                carrier[i] = (key, value)
                return
        carrier.append((key, value))


_GETTER = _MetadataGetter()
_SETTER = _MetadataSetter()


def inject_context(metadata: MutableSequence[tuple[str, str | bytes]],
                   context: Any = None) -> None:
    """Write the current (or given) trace context and baggage into outgoing ``metadata``
    with the global propagator (W3C ``traceparent``/``tracestate`` and ``baggage`` by
    default, ``OTEL_PROPAGATORS`` to change).

    Args:
        metadata: a mutable list of ``(key, value)`` pairs, changed in place.
        context: an OpenTelemetry ``Context``; default the current one.
    """
    propagate.inject(metadata, context, setter=_SETTER)


def extract_context(metadata: Sequence[Any] | None) -> Any:
    """The OpenTelemetry ``Context`` carried by incoming gRPC ``metadata`` (pairs), or an
    empty one; unreadable headers are ignored, as W3C Trace Context requires."""
    return propagate.extract(metadata or (), getter=_GETTER)


def _exporter(name: str) -> SpanExporter | None:
    """The exporter registered under ``name`` (entry point group
    ``opentelemetry_traces_exporter``), or ``None`` with a warning if not installed."""
    eps = importlib_metadata.entry_points(group="opentelemetry_traces_exporter", name=name)
    for ep in eps:
        cls = ep.load()
        exporter: SpanExporter = cls()
        return exporter
    if name.startswith("otlp"):
        _log.warning("OTEL_TRACES_EXPORTER asks for OTLP but opentelemetry-exporter-otlp is "
                     "not installed; spans are not exported",
                     exporter=name, fix="pip install opentelemetry-exporter-otlp")
    else:
        _log.warning("trace exporter not installed; spans are not exported", exporter=name)
    return None


def configure_tracing(
    service_name: str,
    *,
    exporters: Iterable[SpanExporter] | None = None,
    set_global: bool = True,
) -> TracerProvider:
    """Build the SDK :class:`~opentelemetry.sdk.trace.TracerProvider` of a service from the
    standard environment, and (by default) install it as the global one.

    Read from the environment (the SDK's own handling where it has one):

    * ``OTEL_SERVICE_NAME`` (overrides ``service_name``), ``OTEL_RESOURCE_ATTRIBUTES``;
    * ``OTEL_TRACES_SAMPLER`` (``parentbased_always_on`` by default; ``always_on``,
      ``always_off``, ``traceidratio``, ``parentbased_always_off``,
      ``parentbased_traceidratio``) and ``OTEL_TRACES_SAMPLER_ARG`` (ratio 0..1);
    * ``OTEL_TRACES_EXPORTER``: comma list of ``otlp``, ``console``, ``none`` (or any
      installed ``opentelemetry_traces_exporter`` entry point). Unset means ``otlp`` when
      ``opentelemetry-exporter-otlp`` is installed, else none. Asking for ``otlp`` without
      the package logs a warning naming it and exports nothing. OTLP endpoint, headers and
      protocol come from ``OTEL_EXPORTER_OTLP_*`` as the exporter reads them.
    * ``OTEL_BSP_*`` for the batch span processor;
    * ``MESHKIT_TRACE_FILE``: also append every span to this JSON-lines file
      (:class:`~meshkit.observability.JsonLinesSpanExporter`).

    Args:
        service_name: ``service.name`` of the resource, e.g. ``"orderd"``.
        exporters: use these exporters (each behind a batch processor) instead of
            ``OTEL_TRACES_EXPORTER``; tests pass an in-memory one behind their own
            ``SimpleSpanProcessor`` by calling ``provider.add_span_processor`` instead.
        set_global: install it with ``trace.set_tracer_provider`` (default ``True``; the
            global provider can be set once per process).

    Returns:
        The provider; call ``provider.shutdown()`` at exit to flush spans.

    Raises:
        ConfigError: empty ``service_name``, unknown sampler, a sampler argument that is
            not a ratio in [0, 1], or an unknown exporter name (all quoted).
    """
    if not isinstance(service_name, str) or not service_name:
        raise ConfigError(f"service_name must be a non-empty string, got {service_name!r}")
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in _SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {sorted(_SAMPLERS)}, "
                          f"got {sampler!r}")
    if sampler.endswith("traceidratio"):
        arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be a ratio 0..1, got {arg!r}")
    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attrs))  # sampler from the env
    if exporters is None:
        raw = os.environ.get("OTEL_TRACES_EXPORTER")
        if raw is None:
            names = ["otlp"] if _has_otlp() else []
        else:
            names = [n.strip().lower() for n in raw.split(",") if n.strip()]
        chosen: list[SpanExporter] = []
        for name in names:
            if name == "none":
                continue
            if name not in _EXPORTERS and not importlib_metadata.entry_points(
                    group="opentelemetry_traces_exporter", name=name):
                raise ConfigError(f"OTEL_TRACES_EXPORTER names an unknown exporter {name!r}")
            exp = _exporter(name)
            if exp is not None:
                chosen.append(exp)
        exporters = chosen
    for exp in exporters:
        provider.add_span_processor(BatchSpanProcessor(exp))
    trace_file = os.environ.get("MESHKIT_TRACE_FILE", "").strip()
    if trace_file:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from meshkit.observability._files import JsonLinesSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _has_otlp() -> bool:
    return bool(importlib_metadata.entry_points(group="opentelemetry_traces_exporter",
                                                name="otlp"))


def otel_server_interceptor(
    tracer_provider: trace.TracerProvider | None = None,
) -> grpc.aio.ServerInterceptor:
    """The opentelemetry-instrumentation-grpc aio server interceptor (tracing only).

    The reference implementation, for comparison with meshkit's fused
    :class:`~meshkit.observability.TelemetryServerInterceptor`: on loopback its spans
    added about 1.6x the per-call time of the lean pair (``python -m
    tests.observability.timing``). Its attributes follow semconv 1.11 (``net.peer.*``).

    Args:
        tracer_provider: default the global provider.
    """
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    icpt: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider)
    return icpt


def otel_client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> tuple[grpc.aio.ClientInterceptor, ...]:
    """The opentelemetry-instrumentation-grpc aio client interceptors (one per call kind),
    for ``DialOptions.attempt_interceptors``: one client span per *attempt*, since they
    run on each endpoint's sub-channel. The reference to compare the lean ones with.

    Args:
        tracer_provider: default the global provider.
    """
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return tuple(aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider))


def tracing_from_env(service_name: str) -> TracerProvider | None:
    """Configure tracing (:func:`configure_tracing`) only when the environment asks for it
    and no SDK provider is installed yet; ``serve()`` calls this once per process.

    Asking means: ``OTEL_TRACES_EXPORTER`` set to something other than ``none``,
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) set, or
    ``MESHKIT_TRACE_FILE`` set. Otherwise the global no-op provider stays and meshkit's
    span code costs almost nothing.

    Returns:
        The new provider, or ``None`` when nothing was configured.

    Raises:
        ConfigError: as :func:`configure_tracing`.
    """
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return None
    env = os.environ
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    wanted = (exporter not in ("", "none") or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
              or bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
              or bool(env.get("MESHKIT_TRACE_FILE", "").strip()))
    return configure_tracing(service_name) if wanted else None
