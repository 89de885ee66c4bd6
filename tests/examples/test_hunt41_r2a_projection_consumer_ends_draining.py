"""The projection process (``python -m examples.ecom.projection_service``) whose
consumer ends for good while it drains after a SIGTERM (its durable replaced by a push
consumer under the same name: ``Consumer.run()`` ends with ``ConfigError``). On the
consumer's end the process cancelled ``meshkit.serve``; serve's drain, already under
way for the signal, is shielded, so the cancel ended serve at once and left the drain
running on its own: the process closed its store and NATS connection and exited within
about a second of the consumer's end, its drain (``--drain-delay-s``, then ``grace_s``
for in-flight calls) cut short by ``asyncio.run``'s final cancel. It now waits for that
drain to end, and still exits 1 with the consumer's error logged. A consumer ending
with no signal still deregisters the instance before the exit."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig

from examples.ecom import events
from meshkit.discovery import registry_from_uri
from tests.messaging import conftest as messaging_fixtures
from tests.messaging.conftest import NatsServer
from tests.support.procs import children
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

private_nats = messaging_fixtures.private_nats  # a nats-server -js on a spare port

DRAIN_DELAY_S = 10.0


async def _make_push(url: str, durable: str) -> None:
    """Replace ``durable`` with a push consumer of that name (tried again while the
    projection re-creates its pull durable first)."""
    nc = await nats.connect(url, connect_timeout=2)
    try:
        js = nc.jetstream()
        for _ in range(20):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(events.STREAM, durable)
            try:
                await js.add_consumer(
                    events.STREAM,
                    ConsumerConfig(durable_name=durable, deliver_subject="somewhere.else"),
                )
                return
            except nats.js.errors.APIError:  # re-created as a pull consumer meanwhile
                await asyncio.sleep(0.05)
        raise AssertionError("the durable was not replaced by a push consumer")
    finally:
        await nc.close()


async def _bound(url: str, durable: str) -> None:
    """Wait until the projection's consumer is bound to ``durable`` and pulling (a pull
    request of its own waits on the server), as a fixed 1 s sleep assumed."""
    nc = await nats.connect(url, connect_timeout=2)
    try:
        js = nc.jetstream()

        async def pulling() -> bool:
            try:
                info = await js.consumer_info(events.STREAM, durable)
            except nats.js.errors.NotFoundError:  # not made yet
                return False
            return (info.num_waiting or 0) >= 1

        await until(pulling, timeout_s=20, interval_s=0.05, what=f"a pull on {durable}")
    finally:
        await nc.close()


async def _stream(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2)
    try:
        await events.ensure_order_stream(nc.jetstream())
    finally:
        await nc.close()


async def test_a_consumer_ending_during_the_drain_lets_it_finish(
    private_nats: NatsServer, tmp_path: Path
) -> None:
    """SIGTERM (drain delay 10 s), then the durable replaced by a push consumer: the
    consumer's end is logged, the process exits 1, but not before the drain delay has
    passed (it exited about 2 s after the SIGTERM)."""
    await _stream(private_nats.url)
    env = {"MESHKIT_REGISTRY": f"local://{tmp_path / 'registry'}?ttl_s=30"}
    async with children(tmp_path / "logs", env) as kids:
        child = await kids.start(
            "examples.ecom.projection_service",
            "--db",
            f"sqlite:///{tmp_path / 'summary.db'}",
            "--nats-url",
            private_nats.url,
            "--insecure",
            "--instance-id",
            "summaryd-1",
            "--durable",
            "swapped",
            "--drain-delay-s",
            str(DRAIN_DELAY_S),
        )
        await child.wait_line("READY", timeout_s=30)
        await _bound(private_nats.url, "swapped")
        signalled = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        await until(lambda: "draining" in child.stderr(), timeout_s=10, what="the drain begun")
        await _make_push(private_nats.url, "swapped")
        await until(
            lambda: "projection consumer ended" in child.stderr(),
            timeout_s=20,
            what="the consumer's end logged",
        )
        code = await child.wait_exit(timeout_s=40)
        took = time.monotonic() - signalled
    assert code == 1
    assert took >= DRAIN_DELAY_S - 1.0, f"exited {took:.1f} s after SIGTERM"
    assert "Traceback" not in child.stderr()


async def test_a_consumer_ending_deregisters_the_instance(
    private_nats: NatsServer, tmp_path: Path
) -> None:
    """No signal: the durable replaced by a push consumer while serving; the process
    exits 1 and its instance is no longer registered (the local registry's TTL is 60 s:
    only a deregistration removes it in time)."""
    await _stream(private_nats.url)
    uri = f"local://{tmp_path / 'registry'}?ttl_s=60"
    async with children(tmp_path / "logs", {"MESHKIT_REGISTRY": uri}) as kids:
        child = await kids.start(
            "examples.ecom.projection_service",
            "--db",
            f"sqlite:///{tmp_path / 'summary.db'}",
            "--nats-url",
            private_nats.url,
            "--insecure",
            "--instance-id",
            "summaryd-1",
            "--durable",
            "swapped",
            "--drain-delay-s",
            "0",
        )
        await child.wait_line("READY", timeout_s=30)
        registry = registry_from_uri(uri)
        try:
            assert {i.instance_id for i in await registry.instances("summaryd")} == {"summaryd-1"}
            await _bound(private_nats.url, "swapped")
            await _make_push(private_nats.url, "swapped")
            code = await child.wait_exit(timeout_s=40)
            assert code == 1
            assert "projection consumer ended" in child.stderr()
            assert await registry.instances("summaryd") == frozenset()
        finally:
            await registry.close()
