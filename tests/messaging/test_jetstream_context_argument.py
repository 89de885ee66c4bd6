"""Publisher, Consumer and ensure_stream take a JetStream context (``nc.jetstream()``).
Given the connection itself (``nc``), an easy slip, they failed only when used, with
``AttributeError: 'Client' object has no attribute '_nc'`` (a publish), or, for a
consumer's ``run()``, a warning once and a retry every backoff for ever."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.messaging import (
    Consumer,
    ConsumerOptions,
    Delivery,
    Publisher,
    PublishOptions,
    ensure_stream,
)
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def _handler(d: Delivery) -> None:
    return None


def test_a_publisher_given_the_connection_is_a_config_error(bus: Bus) -> None:
    """Publisher(nc): ConfigError saying to pass nc.jetstream()."""
    with pytest.raises(ConfigError, match=r"jetstream\(\)"):
        Publisher(bus.nc, PublishOptions(registry=CollectorRegistry()))  # type: ignore[arg-type]


def test_a_consumer_given_the_connection_is_a_config_error(bus: Bus) -> None:
    """Consumer(nc, ...): ConfigError saying to pass nc.jetstream()."""
    with pytest.raises(ConfigError, match=r"jetstream\(\)"):
        Consumer(bus.nc, _handler, ConsumerOptions(  # type: ignore[arg-type]
            stream=bus.stream, durable="d", registry=CollectorRegistry()))


async def test_ensure_stream_given_the_connection_is_a_config_error(bus: Bus) -> None:
    """ensure_stream(nc, ...): ConfigError saying to pass nc.jetstream()."""
    with pytest.raises(ConfigError, match=r"jetstream\(\)"):
        await ensure_stream(bus.nc, bus.stream, [f"{bus.subject}.>"])  # type: ignore[arg-type]
