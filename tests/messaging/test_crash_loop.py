"""A message that kills the consumer process on every delivery still reaches the dead
letters (real processes, real NATS): the server delivers it once more than
``max_deliveries`` and the consumer dead-letters that delivery without handling it."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from meshkit.messaging import DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER
from tests.messaging.conftest import Bus
from tests.support.procs import Child, children, lines_matching
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


async def _dead_letters(bus: Bus) -> list[nats.aio.msg.Msg]:
    sub = await bus.js.pull_subscribe(bus.dlq, stream=bus.stream)
    try:
        return list(await sub.fetch(10, timeout=0.3))
    except TimeoutError:  # nats' TimeoutError is one too
        return []
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
    """A durable made earlier with max_deliver = max_deliveries (before the extra
    dead-letter delivery) and another ack wait is brought in line by start()."""
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
    assert (info.config.max_deliver, info.config.ack_wait) == (6, 2.0)
