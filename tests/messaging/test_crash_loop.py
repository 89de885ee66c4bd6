"""A message that kills the consumer process on every delivery still reaches the dead
letters (real processes, real NATS): the server keeps delivering it (``max_deliver``
unlimited) and the consumer dead-letters the delivery past ``max_deliveries`` without
handling it; a message whose dead letter has nowhere to go is kept."""

from __future__ import annotations

import time
from pathlib import Path

import nats
import pytest

from meshkit.messaging import DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER
from tests.messaging.conftest import Bus
from tests.support.procs import Child, children, lines_matching
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def _dead_letters(bus: Bus) -> list[nats.aio.msg.Msg]:
    """The dead letters (up to 10) the stream holds now: a fresh pull consumer fetches as
    many as the stream's state counts on the subject (nats-py's ``fetch(10, timeout=0.3)``
    of fewer, or of none, waited out its 0.3 s)."""
    info = await bus.js.stream_info(bus.stream, subjects_filter=bus.dlq)
    stored = min((info.state.subjects or {}).get(bus.dlq, 0), 10)
    if not stored:
        return []
    sub = await bus.js.pull_subscribe(bus.dlq, stream=bus.stream)
    try:
        return list(await sub.fetch(stored, timeout=5))
    finally:
        await sub.unsubscribe()


async def test_message_crashing_its_consumer_is_dead_lettered(bus: Bus, tmp_path: Path) -> None:
    """max_deliveries=2: the 'crash' message kills two consumer processes (os._exit in
    the handler, no ack); the third process dead-letters it on delivery 3 without
    running the handler, and the other messages are handled."""
    for mid, body in (("ok-1", b"ok"), ("boom", b"crash"), ("ok-2", b"ok")):
        await bus.js.publish(bus.subject, body, headers={MSG_ID_HEADER: mid})
    args = (bus.url, bus.stream, "crashy", bus.subject, bus.dlq, "2", "0.5", "1")
    async with children(tmp_path / "logs") as kids:
        crashes = 0
        while True:
            kid = await kids.start("tests.messaging.consumer_proc", *args)
            await kid.wait_line("READY")

            async def crashed_or_dead_lettered(kid: Child = kid) -> bool:
                return kid.proc.returncode is not None or bool(await _dead_letters(bus))

            await until(crashed_or_dead_lettered, timeout_s=8, interval_s=0.1,
                        what="a crash or the dead letter")
            if kid.proc.returncode is None:
                break
            assert await kid.wait_exit() == 3, kid.stderr()[-2000:]
            crashes += 1
            assert crashes <= 2, "the crashing message was delivered a third time"
        await until(lambda: {f[1] for k in kids.started
                             for f in lines_matching(k.lines, "handled")} == {"ok-1", "ok-2"},
                    timeout_s=5, what="both good messages handled")

        async def all_acked() -> bool:
            info = await bus.js.consumer_info(bus.stream, "crashy")
            return info.num_ack_pending == 0 and info.num_pending == 0

        # while the last consumer still runs: its ack follows the handler's output, and
        # stopping it first could drop an ack still in flight (then nobody is left to take
        # the redelivery)
        await until(all_acked, timeout_s=10, what="nothing left pending")
    assert crashes == 2
    dead = await _dead_letters(bus)
    assert len(dead) == 1
    headers = dead[0].headers or {}
    assert dead[0].data == b"crash"
    assert headers[DLQ_DELIVERIES_HEADER] == "3"
    assert "not acked after 2 deliveries" in headers[DLQ_REASON_HEADER]



async def test_existing_durable_is_updated_to_the_options(bus: Bus) -> None:
    """A durable made earlier with a bounded max_deliver (older versions) and another ack
    wait is brought in line by start(): max_deliver unlimited, the options' ack wait."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from meshkit.messaging import Consumer, ConsumerOptions, Delivery

    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="old", ack_policy=AckPolicy.EXPLICIT, max_deliver=5, ack_wait=30,
        filter_subject=bus.subject))

    async def handle(d: Delivery) -> None:
        return None

    c = Consumer(bus.js, handle, ConsumerOptions(stream=bus.stream, durable="old",
                                                 filter_subject=bus.subject, ack_wait_s=2.0))
    await c.start()
    info = await bus.js.consumer_info(bus.stream, "old")
    assert (info.config.max_deliver, info.config.ack_wait) == (-1, 2.0)


async def test_existing_durable_follows_a_changed_filter_subject(bus: Bus) -> None:
    """A durable made earlier with filter A is moved to the options' filter B by start()
    (nats-py binds to an existing durable as it is): the consumer gets B's messages."""
    from meshkit.messaging import Consumer, ConsumerOptions, Delivery

    tag = bus.subject.split(".")[0]

    async def handle(d: Delivery) -> None:
        got.append(d.subject)

    got: list[str] = []
    old = Consumer(bus.js, handle, ConsumerOptions(stream=bus.stream, durable="f",
                                                   filter_subject=f"{tag}.a"))
    await old.start()
    await bus.js.publish(f"{tag}.b", b"x", headers={MSG_ID_HEADER: "f-1"})
    new = Consumer(bus.js, handle, ConsumerOptions(stream=bus.stream, durable="f",
                                                   filter_subject=f"{tag}.b",
                                                   fetch_timeout_s=0.1, access_log=False))

    async def consumed() -> bool:
        return await new.run_once() > 0

    await until(consumed, timeout_s=3, interval_s=0.01, what="message on B")
    assert got == [f"{tag}.b"]
    info = await bus.js.consumer_info(bus.stream, "f")
    assert info.config.filter_subject == f"{tag}.b"


async def test_message_whose_dead_letter_has_no_stream_is_kept(bus: Bus) -> None:
    """A poison message whose dead-letter subject no stream captures is nak'ed, never
    dropped: the server keeps it for the consumer past max_deliveries (max_deliver is
    unlimited), and past max_deliveries it is retried at the ack-wait pace, unhandled."""
    from prometheus_client import CollectorRegistry

    from meshkit.messaging import (
        Consumer,
        ConsumerOptions,
        Delivery,
        PoisonMessage,
        Publisher,
        PublishOptions,
    )
    from meshkit.resilience import Backoff

    handled: list[int] = []

    async def poison(d: Delivery) -> None:
        handled.append(d.delivery)
        raise PoisonMessage("bad body")

    prom = CollectorRegistry()
    await Publisher(bus.js, PublishOptions(registry=prom)).publish(
        bus.subject, b"poison", msg_id="n-1")
    c = Consumer(bus.js, poison, ConsumerOptions(
        stream=bus.stream, durable="d1", filter_subject=bus.subject,
        dead_letter_subject=f"nowhere{bus.stream.lower()}.dead", max_deliveries=2,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.05), ack_wait_s=1.0,
        fetch_timeout_s=0.1, registry=prom))

    def retries() -> float:
        return prom.get_sample_value("meshkit_messaging_consumed_total", {
            "subject": bus.subject, "consumer": "d1", "outcome": "retry"}) or 0.0

    async def delivered(n: int) -> bool:
        await c.run_once()
        return retries() >= n

    await until(lambda: delivered(3), timeout_s=5, interval_s=0.01, what="3 deliveries")
    t3 = time.monotonic()
    await until(lambda: delivered(4), timeout_s=5, interval_s=0.01, what="4th delivery")
    # nak'ed with the 1 s ack wait, not the 0.01-0.05 s backoff; the margin leaves room
    # for a loaded box that saw the 3rd delivery late (t3 late, the gap short)
    assert time.monotonic() - t3 >= 0.5
    assert handled == [1, 2]  # past max_deliveries the handler never runs again
    info = await bus.js.consumer_info(bus.stream, "d1")
    assert info.config.max_deliver == -1
    assert info.num_ack_pending + info.num_pending == 1
