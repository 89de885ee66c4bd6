"""``ensure_stream``'s ``name`` follows the rule ConsumerOptions and PublishOptions
apply to a stream name (check_nats_name): a bad one was sent on and failed as nats-py's
``ValueError`` ("invalid stream name"), or as JetStream's ``ServerError`` 500 for one
over 255 bytes, instead of meshkit's ``ConfigError`` naming the field."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.messaging import ensure_stream
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", ["orders.v1", "orders v1", "", "o" * 256, "orders*", 42])
async def test_a_stream_name_jetstream_cannot_take_is_a_config_error(
        bus: Bus, name: object) -> None:
    """ConfigError naming ``name``, before any request."""
    with pytest.raises(ConfigError, match="name"):
        await ensure_stream(bus.js, name, ["unused.>"])  # type: ignore[arg-type]
