"""The options objects of Consumer, Publisher and OutboxRelay, and the relay's
publisher, given as something else (a dict of options, the JetStream context for the
publisher) were taken, and failed with an AttributeError from inside the constructor
('dict' object has no attribute 'metrics') instead of a ConfigError naming the argument,
as every other option of theirs does."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import Consumer, OutboxRelay, Publisher


class _Store:
    async def pending_events(self, limit: int) -> list[Any]:
        return []

    async def mark_sent(self, event_ids: Any) -> None:
        return None


async def _handler(d: Any) -> None:
    return None


def _js() -> Any:
    return nats.NATS().jetstream()  # never connected: only its type is looked at


def test_consumer_options_as_a_dict_is_refused() -> None:
    with pytest.raises(ConfigError, match="options must be"):
        Consumer(_js(), _handler, {"stream": "S", "durable": "d"})  # type: ignore[arg-type]


def test_publisher_options_as_a_dict_is_refused() -> None:
    with pytest.raises(ConfigError, match="options must be"):
        Publisher(_js(), {"timeout_s": 5})  # type: ignore[arg-type]


def test_relay_publisher_as_the_jetstream_context_is_refused() -> None:
    with pytest.raises(ConfigError, match="publisher must be"):
        OutboxRelay(_Store(), _js())  # type: ignore[arg-type]


def test_relay_options_as_a_dict_is_refused() -> None:
    with pytest.raises(ConfigError, match="options must be"):
        OutboxRelay(_Store(), Publisher(_js()), {"batch_size": 10})  # type: ignore[arg-type]
