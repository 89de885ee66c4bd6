"""A small consumer process for the tests that kill one: ``python -m
tests.messaging.consumer_proc URL STREAM DURABLE SUBJECT DLQ MAX_DELIVERIES ACK_WAIT_S
BATCH``.

Runs a :class:`~meshkit.messaging.Consumer` whose handler prints ``handled <msg_id>
<delivery>`` for each message and kills its own process (``os._exit(3)``, no ack, no
clean-up) on a message whose body is ``crash``. Prints ``READY`` once the durable consumer
is bound.
"""

from __future__ import annotations

import asyncio
import os
import sys

import nats

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from meshkit.resilience import Backoff


async def main(argv: list[str]) -> None:
    """Consume until killed."""
    url, stream, durable, subject, dlq, max_deliveries, ack_wait_s, batch = argv

    async def handle(d: Delivery) -> None:
        if d.data == b"crash":
            print(f"crashing {d.msg_id} {d.delivery}", flush=True)
            os._exit(3)
        print(f"handled {d.msg_id} {d.delivery}", flush=True)

    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    consumer = Consumer(nc.jetstream(timeout=3), handle, ConsumerOptions(
        stream=stream, durable=durable, filter_subject=subject, dead_letter_subject=dlq,
        max_deliveries=int(max_deliveries), ack_wait_s=float(ack_wait_s),
        batch_size=int(batch), fetch_timeout_s=0.2,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.05)))
    await consumer.start()
    print("READY", flush=True)
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
