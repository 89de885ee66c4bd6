"""One-call interceptor sets for serve() and dial(), in the documented order."""

from __future__ import annotations

import dataclasses
from typing import Literal

import grpc

from meshkit._config import check_instance
from meshkit.errors import ConfigError
from meshkit.interceptors import ClientInterceptor
from meshkit.observability._client import AttemptSpanInterceptor, TelemetryClientInterceptor
from meshkit.observability._options import TelemetryOptions
from meshkit.observability._server import TelemetryServerInterceptor
from meshkit.observability._tracing import (
    instrumentor_active,
    otel_client_interceptors,
    otel_server_interceptor,
    tracing_from_env,
)

__all__ = ["Implementation", "attempt_interceptors", "client_interceptors",
           "server_interceptors"]

Implementation = Literal["meshkit", "otel"]
"""Which tracing implementation: ``"meshkit"`` (the lean fused interceptors) or ``"otel"``
(opentelemetry-instrumentation-grpc for spans, meshkit's for metrics and logs)."""


def _check(implementation: str, options: object) -> None:
    """Refuse an unknown ``implementation``, or ``options`` that are not a
    :class:`TelemetryOptions` (a dict, ``True``, the class itself), which failed with an
    ``AttributeError`` on one of their fields."""
    if implementation not in ("meshkit", "otel"):
        raise ConfigError(f"implementation must be 'meshkit' or 'otel', got {implementation!r}")
    check_instance("options", options, TelemetryOptions)


def server_interceptors(
    service_name: str,
    options: TelemetryOptions | None = None,
    *,
    implementation: Implementation = "meshkit",
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """The observability interceptors of a server, for ``ServeOptions.interceptors`` with
    ``ServeOptions(telemetry=None)`` (put them first), or for a plain ``grpc.aio`` server.

    ``ServeOptions.telemetry`` (``TelemetryOptions()`` by default) installs these itself,
    outermost: that is the usual way. Beside it they would count, trace and log every
    call twice, so ``ServeOptions`` refuses a :class:`TelemetryServerInterceptor` in
    ``interceptors`` while ``telemetry`` is set (``ConfigError``). Give them yourself
    with ``telemetry=None``, e.g. for ``implementation="otel"``.

    With ``implementation="meshkit"`` (default) it is one fused
    :class:`TelemetryServerInterceptor` doing tracing -> metrics -> access log in one
    handler wrap. With ``"otel"`` it is opentelemetry-instrumentation-grpc's server
    interceptor for the spans followed by a :class:`TelemetryServerInterceptor` with
    tracing off (metrics and access log), for benchmarks; where the instrumentor's aio
    server instrumentor is active (``opentelemetry-instrument``), which adds that
    interceptor to every ``grpc.aio`` server itself, only the latter (else two SERVER
    spans per call); ``options.quiet_methods`` get no span from it either. Its spans go to
    ``options.tracer_provider``, else the global provider, which is then set up from the
    environment here (:func:`~meshkit.observability.tracing_from_env` with
    ``service_name``), as ``serve()`` does for its own telemetry.

    Args:
        service_name: mesh service name, e.g. ``"orderd"`` (access log ``service``).
        options: :class:`TelemetryOptions` (default: tracing, metrics and access log on).
        implementation: ``"meshkit"`` or ``"otel"``.

    Returns:
        A tuple of ``grpc.aio.ServerInterceptor``, outermost first.

    Raises:
        ConfigError: an unknown ``implementation``, ``options`` that are not a
            :class:`TelemetryOptions` (a dict, ``True``) or an empty ``service_name``;
            with ``"otel"``, a bad ``OTEL_*`` value (see ``tracing_from_env``).
    """
    _check(implementation, options)
    opts = options or TelemetryOptions()
    if implementation == "meshkit" or not opts.tracing:
        return (TelemetryServerInterceptor(service_name, opts),)
    if opts.tracer_provider is None:  # as serve() does for telemetry on the global one
        tracing_from_env(service_name)
    rest = _without_tracing(opts)
    tail = (TelemetryServerInterceptor(service_name, rest),) if (
        rest.metrics or rest.access_log) else ()
    if instrumentor_active("server"):  # it adds this interceptor to every grpc.aio server
        return tail
    return (otel_server_interceptor(opts.tracer_provider, quiet_methods=opts.quiet_methods),
            *tail)


def client_interceptors(
    options: TelemetryOptions | None = None,
    *,
    implementation: Implementation = "meshkit",
) -> tuple[ClientInterceptor, ...]:
    """The observability interceptor of a channel, for ``DialOptions.interceptors`` with
    ``DialOptions(telemetry=None)``: put it first (retries run inside it, so one logical
    span, count and log line cover every attempt).

    ``DialOptions.telemetry`` (``TelemetryOptions()`` by default) installs it itself,
    outermost, with :func:`attempt_interceptors`: that is the usual way. Beside it every
    call would be counted, traced and logged twice, so ``DialOptions`` refuses a
    :class:`TelemetryClientInterceptor` in ``interceptors`` while ``telemetry`` is set
    (``ConfigError``). Give it yourself with ``telemetry=None``, e.g. for
    ``implementation="otel"``.

    With ``implementation="otel"`` the spans come from :func:`attempt_interceptors`
    instead and this returns the metrics/log part only.

    Args:
        options: :class:`TelemetryOptions` (default: everything on).
        implementation: ``"meshkit"`` or ``"otel"``.

    Raises:
        ConfigError: an unknown ``implementation``, or ``options`` that are not a
            :class:`TelemetryOptions` (a dict, ``True``).
    """
    _check(implementation, options)
    opts = options or TelemetryOptions()
    if implementation == "otel":
        opts = _without_tracing(opts)
        if not (opts.metrics or opts.access_log):
            return ()
    return (TelemetryClientInterceptor(opts),)


def attempt_interceptors(
    options: TelemetryOptions | None = None,
    *,
    implementation: Implementation = "meshkit",
) -> tuple[grpc.aio.ClientInterceptor, ...]:
    """The observability part of ``DialOptions.attempt_interceptors`` (run per attempt),
    for a channel dialed with ``DialOptions(telemetry=None)`` and
    :func:`client_interceptors` of the same options; ``DialOptions.telemetry`` installs
    these itself (``DialOptions`` refuses an :class:`AttemptSpanInterceptor` in
    ``attempt_interceptors`` while ``telemetry`` is set: two CLIENT spans per attempt).

    ``"meshkit"``: an :class:`AttemptSpanInterceptor` when ``options.attempt_spans`` is
    on, else nothing (the default: attempts are events on the logical span, with no
    grpc.aio interceptor cost); nothing either where opentelemetry-instrumentation-grpc's
    aio client instrumentor is active (its spans stand for meshkit's). ``"otel"``:
    opentelemetry-instrumentation-grpc's four
    client interceptors (a CLIENT span per attempt, none for ``options.quiet_methods``;
    none where its aio client
    instrumentor is active, which adds them to every ``grpc.aio`` channel itself), to
    ``options.tracer_provider``, else
    the global provider, which is then set up from the environment here
    (:func:`~meshkit.observability.tracing_from_env`, no service name: a later
    ``serve()`` names it), as a meshkit channel does at its first call.

    Args:
        options: the same :class:`TelemetryOptions` given to :func:`client_interceptors`.
        implementation: ``"meshkit"`` or ``"otel"``.

    Raises:
        ConfigError: an unknown ``implementation``, or ``options`` that are not a
            :class:`TelemetryOptions` (a dict, ``True``); with ``"otel"``, a bad
            ``OTEL_*`` value (see ``tracing_from_env``).
    """
    _check(implementation, options)
    opts = options or TelemetryOptions()
    if not opts.tracing:
        return ()
    if implementation == "otel":
        if opts.tracer_provider is None:  # a process that only dials honours OTEL_* too
            tracing_from_env(None)
        if instrumentor_active("client"):  # it adds these to every grpc.aio channel
            return ()
        return otel_client_interceptors(opts.tracer_provider,
                                        quiet_methods=opts.quiet_methods)
    # under the instrumentor the logical interceptor makes no span, so attempts have none
    # to hang theirs under: the interceptor would only cost a task per attempt
    return (AttemptSpanInterceptor(opts),) if opts.attempt_spans and not \
        instrumentor_active("client") else ()


def _without_tracing(opts: TelemetryOptions) -> TelemetryOptions:
    return dataclasses.replace(opts, tracing=False, attempt_spans=False)
