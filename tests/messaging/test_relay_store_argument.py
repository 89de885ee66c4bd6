"""OutboxRelay's store has the OutboxStore methods (``pending_events``, ``mark_sent``).
One without them (the class given for an instance, an object missing ``mark_sent``)
used to be accepted: each round then failed, or, missing ``mark_sent``, published the
whole outbox again every round for ever, with one warning."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.messaging import OutboxEvent, OutboxRelay, Publisher, PublishOptions
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


class _Store:
    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return []

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        return None


class _NoMark:
    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return []


@pytest.mark.parametrize("store", [_Store, _NoMark(), None])
def test_a_store_without_the_outbox_methods_is_a_config_error(
        bus: Bus, store: object) -> None:
    """ConfigError naming the missing method (or the class given), the type named."""
    publisher = Publisher(bus.js, PublishOptions(registry=CollectorRegistry()))
    with pytest.raises(ConfigError, match="store"):
        OutboxRelay(store, publisher)  # type: ignore[arg-type]


def test_a_store_with_the_methods_is_taken(bus: Bus) -> None:
    """Guard: an instance with both methods."""
    OutboxRelay(_Store(), Publisher(bus.js, PublishOptions(registry=CollectorRegistry())))
