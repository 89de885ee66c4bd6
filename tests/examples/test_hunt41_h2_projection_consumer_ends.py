"""The projection process (``python -m examples.ecom.projection_service``) whose
consumer ended for good: ``Consumer.run()`` ends with ``ConfigError`` when the durable
it is given is no explicit-ack pull consumer (a push consumer another tool made under
that name), so that a supervisor sees the dead worker. The projection ran it as a
background task nobody looked at: the process went on serving ever staler summaries,
READY and healthy, with nothing logged, while no event was applied. It now logs the
error and exits non-zero, as a service whose store cannot be opened does, so that the
orchestrator's restarts and alerts see it."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig

from examples.ecom import events
from tests.messaging import conftest as messaging_fixtures
from tests.messaging.conftest import NatsServer
from tests.support.procs import children

pytestmark = pytest.mark.timeout(90)

private_nats = messaging_fixtures.private_nats  # a nats-server -js on a spare port


async def test_a_projection_whose_consumer_ends_exits(
        private_nats: NatsServer, tmp_path: Path) -> None:
    """The durable ``pushy`` made a push consumer beforehand: the projection process
    (``--durable pushy``) exits non-zero within 60 s of its start, its log naming the durable."""
    nc = await nats.connect(private_nats.url, connect_timeout=2)
    try:
        js = nc.jetstream()
        await events.ensure_order_stream(js)
        await js.add_consumer(events.STREAM, ConsumerConfig(
            durable_name="pushy", deliver_subject="somewhere.else"))
    finally:
        await nc.close()
    async with children(tmp_path / "logs") as kids:
        child = await kids.start(
            "examples.ecom.projection_service", "--db",
            f"sqlite:///{tmp_path / 'summary.db'}", "--nats-url", private_nats.url,
            "--insecure", "--instance-id", "summaryd-1", "--durable", "pushy",
            "--drain-delay-s", "0")
        # the consumer's ConfigError may come before or after the server's READY line
        # (the two run side by side): only the exit is waited for
        code = await child.wait_exit(timeout_s=60)
        assert code == 1
        assert "pushy" in child.stderr()
        assert "projection consumer ended" in child.stderr()
        assert "Traceback" not in child.stderr()
