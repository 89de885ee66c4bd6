"""The observability options refuse a wrong type in any field at construction, with
``ConfigError`` naming the field and quoting the value (:mod:`meshkit._config`): a bool
for the admin port, a registry given as its class, a string for the tracer provider or
the peer-identity function, ``None`` for a list of methods or metadata keys."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
import pytest
from opentelemetry.trace import NoOpTracerProvider

from meshkit.errors import ConfigError
from meshkit.observability import AdminOptions, TelemetryOptions

Build = Callable[[], object]

_WRONG: dict[str, tuple[Build, object]] = {
    "AdminOptions.port": (lambda: AdminOptions(port=True), True),
    "AdminOptions.port[float]": (lambda: AdminOptions(port=8080.0), 8080.0),  # type: ignore[arg-type]
    "AdminOptions.registry": (
        lambda: AdminOptions(registry=prometheus_client.CollectorRegistry),  # type: ignore[arg-type]
        prometheus_client.CollectorRegistry),
    "TelemetryOptions.registry": (
        lambda: TelemetryOptions(registry=prometheus_client.CollectorRegistry),  # type: ignore[arg-type]
        prometheus_client.CollectorRegistry),
    "TelemetryOptions.tracer_provider": (
        lambda: TelemetryOptions(tracer_provider="otel"), "otel"),  # type: ignore[arg-type]
    "TelemetryOptions.peer_identity": (
        lambda: TelemetryOptions(peer_identity="spiffe://mesh/svc/x"),  # type: ignore[arg-type]
        "spiffe://mesh/svc/x"),
    "TelemetryOptions.quiet_methods": (
        lambda: TelemetryOptions(quiet_methods=None), None),  # type: ignore[arg-type]
    "TelemetryOptions.log_metadata": (
        lambda: TelemetryOptions(log_metadata=None), None),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(_WRONG))
def test_observability_options_refuse_a_wrong_type_naming_the_field(case: str) -> None:
    """A user builds ``AdminOptions(port=True)``, ``TelemetryOptions(registry=
    CollectorRegistry)`` (the class, not an instance), ``TelemetryOptions(tracer_provider=
    "otel")``, ``TelemetryOptions(peer_identity="spiffe://...")`` or
    ``TelemetryOptions(quiet_methods=None)``.

    Before: ``port=True`` was accepted and the admin server bound port 1; the registry
    class was accepted and ``dial()`` then failed with a bare ``TypeError: register()
    missing 1 required positional argument``; the string tracer provider / peer
    identity failed at the first call; ``quiet_methods=None`` / ``log_metadata=None``
    raised a bare ``TypeError: 'NoneType' object is not iterable`` naming no field.

    Now: ``ConfigError`` at construction, naming the field and quoting the value.
    """
    build, value = _WRONG[case]
    field = case.split(".")[1].split("[")[0]
    with pytest.raises(ConfigError) as info:
        build()
    assert field in str(info.value), str(info.value)
    assert repr(value) in str(info.value), str(info.value)


def test_observability_options_still_take_the_right_types() -> None:
    """The checks refuse only wrong types: ports 0 and 65535, a registry instance, any
    OpenTelemetry ``TracerProvider``, a function for the peer identity, lists."""
    prom = prometheus_client.CollectorRegistry()
    AdminOptions(port=0, registry=prom)
    AdminOptions(port=65535, registry=None)
    opts = TelemetryOptions(registry=prom, tracer_provider=NoOpTracerProvider(),
                            peer_identity=lambda: None, quiet_methods=["/pkg.Svc/*"],
                            log_metadata=["x-request-id"])
    assert opts.quiet_methods == ("/pkg.Svc/*",)
    assert opts.log_metadata == ("x-request-id",)
    with pytest.raises(ConfigError, match="port"):
        AdminOptions(port=65536)
