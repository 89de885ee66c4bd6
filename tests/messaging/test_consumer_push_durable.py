"""A durable of the Consumer's name that explicit pulls and acks cannot work with. A push
consumer (``deliver_subject`` set: made by another tool or service) cannot be pulled:
every pull is refused ``409 Consumer is push based``; start() bound to it without a word
and run() retried the refused pull for ever after one warning, so a consumer that could
never handle a message looked alive. One with ack policy none or all broke at least
once silently (JetStream refuses to change an ack policy)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus

pytestmark = pytest.mark.timeout(30)


async def _unused(d: Delivery) -> None:
    raise AssertionError("nothing can be pulled")


async def test_a_push_durable_is_a_config_error_that_ends_run(bus: Bus) -> None:
    """start() raises ConfigError naming the durable; run() ends with it within 3 s
    (before: start() passed, run() still going after 3 s)."""
    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="pushed", deliver_subject=f"deliver.{bus.stream}",
        ack_policy=AckPolicy.EXPLICIT))
    options = ConsumerOptions(stream=bus.stream, durable="pushed", fetch_timeout_s=0.2,
                              backoff=Backoff(base_delay_s=0.01, max_delay_s=0.05),
                              registry=CollectorRegistry())
    with pytest.raises(ConfigError, match=r"'pushed'.*push"):
        await asyncio.wait_for(Consumer(bus.js, _unused, options).start(), 5)
    run = asyncio.create_task(Consumer(bus.js, _unused, options).run())
    try:
        done, _ = await asyncio.wait((run,), timeout=3)
        assert done, "run() still going on a push durable"
        with pytest.raises(ConfigError, match="push"):
            run.result()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


@pytest.mark.parametrize("policy", [AckPolicy.NONE, AckPolicy.ALL])
async def test_a_durable_without_explicit_acks_is_a_config_error(
        bus: Bus, policy: AckPolicy) -> None:
    """A durable of the name made with ack policy none (a failed message handled once
    and never redelivered: measured, handler calls [1]) or all (one ack settles the
    messages before it, nak'ed ones included); JetStream refuses to change it ('ack
    policy can not be updated', only logged before): start() raises ConfigError."""
    await bus.js.add_consumer(bus.stream, ConsumerConfig(durable_name="acks",
                                                         ack_policy=policy))
    options = ConsumerOptions(stream=bus.stream, durable="acks", fetch_timeout_s=0.2,
                              registry=CollectorRegistry())
    with pytest.raises(ConfigError, match=f"'acks'.*ack policy {policy.value}"):
        await asyncio.wait_for(Consumer(bus.js, _unused, options).start(), 5)


async def test_a_headers_only_durable_is_a_config_error(bus: Bus) -> None:
    """A durable of the name made headers_only delivers messages without their payload
    (a Nats-Msg-Size header instead): the handler got b'' and the message was acked as
    handled; start() raises ConfigError."""
    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="bare", ack_policy=AckPolicy.EXPLICIT, headers_only=True))
    options = ConsumerOptions(stream=bus.stream, durable="bare", fetch_timeout_s=0.2,
                              registry=CollectorRegistry())
    with pytest.raises(ConfigError, match=r"'bare'.*headers_only"):
        await asyncio.wait_for(Consumer(bus.js, _unused, options).start(), 5)
