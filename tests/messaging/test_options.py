"""The messaging options refuse a wrong type in any field at construction: a flag given as
a string, an option object given as ``None`` / ``True`` / a mapping / a number, a registry
given as its class, a name given as a number or bytes. ``ConfigError`` names the field and
quotes the value (:mod:`meshkit._config`), as every other options class does. No NATS
needed."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
import pytest
from opentelemetry.trace import NoOpTracerProvider

from meshkit.errors import ConfigError
from meshkit.messaging import ConsumerOptions, PublishOptions, RelayOptions
from meshkit.resilience import Backoff, BudgetOptions

Build = Callable[[], object]


def _consumer(**kw: object) -> ConsumerOptions:
    return ConsumerOptions(stream="ORDERS", durable="d", **kw)  # type: ignore[arg-type]


_WRONG: dict[str, tuple[Build, object]] = {
    "PublishOptions.tracing": (lambda: PublishOptions(tracing="false"), "false"),  # type: ignore[arg-type]
    "PublishOptions.metrics": (lambda: PublishOptions(metrics="0"), "0"),  # type: ignore[arg-type]
    "PublishOptions.access_log": (lambda: PublishOptions(access_log=None), None),  # type: ignore[arg-type]
    "PublishOptions.backoff": (lambda: PublishOptions(backoff=None), None),  # type: ignore[arg-type]
    "PublishOptions.budget": (lambda: PublishOptions(budget={"retry_ratio": 0.1}),  # type: ignore[arg-type]
                              {"retry_ratio": 0.1}),
    "PublishOptions.signer": (lambda: PublishOptions(signer=True), True),  # type: ignore[arg-type]
    "PublishOptions.registry": (
        lambda: PublishOptions(registry=prometheus_client.CollectorRegistry),  # type: ignore[arg-type]
        prometheus_client.CollectorRegistry),
    "PublishOptions.tracer_provider": (lambda: PublishOptions(tracer_provider="otel"), "otel"),
    "ConsumerOptions.tracing": (lambda: _consumer(tracing="false"), "false"),
    "ConsumerOptions.metrics": (lambda: _consumer(metrics=1), 1),
    "ConsumerOptions.access_log": (lambda: _consumer(access_log="no"), "no"),
    "ConsumerOptions.backoff": (lambda: _consumer(backoff=0.5), 0.5),
    "ConsumerOptions.verifier": (lambda: _consumer(verifier=True), True),
    "ConsumerOptions.filter_subject": (lambda: _consumer(filter_subject=b"orders.>"),
                                       b"orders.>"),
    "ConsumerOptions.registry": (
        lambda: _consumer(registry=prometheus_client.CollectorRegistry),
        prometheus_client.CollectorRegistry),
    "ConsumerOptions.tracer_provider": (lambda: _consumer(tracer_provider="otel"), "otel"),
    "RelayOptions.error_backoff": (lambda: RelayOptions(error_backoff=None), None),  # type: ignore[arg-type]
    "RelayOptions.name": (lambda: RelayOptions(name=7), 7),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(_WRONG))
def test_messaging_options_refuse_a_wrong_type_naming_the_field(case: str) -> None:
    """A user builds ``PublishOptions(tracing="false")`` (a flag read from the
    environment), ``PublishOptions(backoff=None)`` ("no backoff"),
    ``ConsumerOptions(verifier=True)``, ``RelayOptions(error_backoff=None)`` or
    ``PublishOptions(registry=CollectorRegistry)`` (the class).

    Before: each was accepted. The flag string turned tracing ON; ``verifier=True`` failed
    at the first delivery, ``backoff=None`` at the first retry, with a bare
    ``AttributeError`` inside the publish/consume loop.

    Now: ``ConfigError`` at construction, naming the field and quoting the value.
    """
    build, value = _WRONG[case]
    field = case.split(".")[1]
    with pytest.raises(ConfigError) as info:
        build()
    assert field in str(info.value)
    assert repr(value) in str(info.value)


def test_messaging_options_still_take_the_right_types() -> None:
    """The checks refuse only wrong types: option objects, flags, a registry instance, a
    tracer provider, a wildcard filter subject and ``None`` where it means the default."""
    prom = prometheus_client.CollectorRegistry()
    PublishOptions(backoff=Backoff(), budget=BudgetOptions(), signer=None, tracing=False,
                   metrics=False, access_log=False, registry=prom,
                   tracer_provider=NoOpTracerProvider())
    _consumer(filter_subject="orders.>", backoff=Backoff(), verifier=None, tracing=False,
              registry=prom, tracer_provider=NoOpTracerProvider())
    _consumer(filter_subject=None)
    RelayOptions(error_backoff=Backoff(), name="orders-outbox")
