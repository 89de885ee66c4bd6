"""A Consumer whose durable is lost while it runs re-creates it where it was, on the
shared NATS JetStream: a durable deleted on its own (``nats consumer rm``) is re-created
at its ack floor + 1 as the consumer last saw it (the acked messages are not handled
again, the unacked ones are), whatever deliver policy it was made with; a stream that
was deleted and made again is consumed from its start.

The consumer's durable checks (``consumer_info``) are watched on the wire: a test waits
until the server's ack floor covers the acked messages, then for one check of the
consumer's after that, so the consumer knows that floor when the durable goes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery, ensure_stream
from meshkit.resilience import Backoff
from tests.messaging.conftest import NATS_SERVER, Bus, NatsServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)

#: Bound of each wait (a loaded 2-core box: the durable check comes after 5 empty pulls
#: of 0.2 s, a re-creation after one more).
WAIT_S = 20.0
#: The inbox prefix of the test's own ``consumer_info`` requests (not counted as checks).
_POLL_INBOX = "_TESTPOLL"


class _FirstLong(random.Random):
    """Jitter whose first delay is the whole cap (m7's nak: it stays in backoff through
    the test), every later one at most 0.1 s."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def uniform(self, a: float, b: float) -> float:
        self.calls += 1
        return b if self.calls == 1 else min(b, 0.1)


class Checks:
    """The durable checks (``$JS.API.CONSUMER.INFO.<stream>.<durable>``) seen."""

    def __init__(self) -> None:
        self.seen = 0

    async def after_now(self, what: str) -> None:
        """Wait for a check made after this call."""
        before = self.seen
        await until(lambda: self.seen > before, timeout_s=WAIT_S, what=what)


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Awaitable[tuple[Consumer, Checks]]]]:
    """Starts ``Consumer.run`` for a durable, its checks watched; cancelled at the end."""
    tasks: list[asyncio.Task[None]] = []
    subs: list[Any] = []

    async def run(bus: Bus, handler: Any, prom: CollectorRegistry,
                  durable: str, backoff: Backoff | None = None) -> tuple[Consumer, Checks]:
        checks = Checks()

        async def seen(msg: Any) -> None:
            if not (msg.reply or "").startswith(_POLL_INBOX):  # not the test's polling
                checks.seen += 1

        subs.append(await bus.nc.subscribe(
            f"$JS.API.CONSUMER.INFO.{bus.stream}.{durable}", cb=seen))
        await bus.nc.flush()
        consumer = Consumer(bus.js, handler, ConsumerOptions(
            stream=bus.stream, durable=durable, filter_subject=bus.subject, registry=prom,
            tracing=False, access_log=False, fetch_timeout_s=0.2, max_deliveries=1000,
            backoff=backoff or Backoff(base_delay_s=0.05, max_delay_s=0.3)))
        tasks.append(asyncio.create_task(consumer.run()))
        return consumer, checks

    yield run
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for sub in subs:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _publish(bus: Bus, *ids: str) -> None:
    for msg_id in ids:
        await bus.js.publish(bus.subject, msg_id.encode(), headers={"Nats-Msg-Id": msg_id})


async def _ack_floor_reaches(bus: Bus, durable: str, seq: int, checks: Checks) -> None:
    """Wait until the server's ack floor of ``durable`` is ``seq``, then for a check of
    the consumer's after it (the test's own polling stopped by then)."""

    nc = await nats.connect(bus.url, inbox_prefix=_POLL_INBOX)
    js = nc.jetstream(timeout=3)

    async def reached() -> bool:
        info = await js.consumer_info(bus.stream, durable)
        return info.ack_floor is not None and info.ack_floor.stream_seq == seq

    try:
        await until(reached, timeout_s=WAIT_S, interval_s=0.05, what=f"ack floor {seq}")
    finally:
        await nc.close()
    await checks.after_now("a durable check after the ack floor")


def _recreations(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "durable consumer or its stream is gone; "
            "re-creating it"]


async def test_a_durable_deleted_on_its_own_is_recreated_at_its_ack_floor(
        bus: Bus, prom: CollectorRegistry, running: Any) -> None:
    """m1..m6 acked, m7 failed (nak'ed, in a 60 s backoff), m8..m10 acked: the ack floor is
    6. The durable deleted, it is re-created from sequence 7: m1..m6 are not handled
    again, m7 is (and now succeeds), m8..m10 may be, m11/m12 published after are."""
    handled: list[str] = []
    deleted = False

    async def handle(d: Delivery) -> None:
        if d.msg_id == "m7" and not deleted:
            raise RuntimeError("not yet")
        handled.append(d.msg_id)

    first = [f"m{i}" for i in range(1, 11)]
    await _publish(bus, *first)
    with structlog.testing.capture_logs() as logs:
        _, checks = await running(bus, handle, prom, "rb", Backoff(
            base_delay_s=60.0, max_delay_s=60.0, rng=_FirstLong()))
        acked = set(first) - {"m7"}
        await until(lambda: acked <= set(handled), timeout_s=WAIT_S, what="m1..m10 but m7")
        await _ack_floor_reaches(bus, "rb", 6, checks)
        before = len(handled)
        deleted = True
        await bus.js.delete_consumer(bus.stream, "rb")
        await _publish(bus, "m11", "m12")
        await until(lambda: {"m7", "m11", "m12"} <= set(handled), timeout_s=WAIT_S,
                    what="m7 and the later messages after the re-creation")
    again = handled[before:]
    assert [m for m in again if m in {f"m{i}" for i in range(1, 7)}] == [], again
    assert set(again) <= {f"m{i}" for i in range(7, 13)}, again
    assert [e.get("start_seq") for e in _recreations(logs)] == [7], logs
    info = await bus.js.consumer_info(bus.stream, "rb")
    assert info.config.deliver_policy == DeliverPolicy.BY_START_SEQUENCE
    assert info.config.opt_start_seq == 7


async def test_a_recreated_stream_is_consumed_from_its_start(
        bus: Bus, prom: CollectorRegistry, running: Any) -> None:
    """The old stream's 5 messages acked (ack floor 5), the stream deleted and made again
    (its sequences start over, below that floor): the new stream's 3 messages are all
    handled, from sequence 1 (a re-creation at the old floor + 1 would skip them)."""
    handled: list[str] = []

    async def handle(d: Delivery) -> None:
        handled.append(d.msg_id)

    await _publish(bus, *(f"o{i}" for i in range(1, 6)))
    with structlog.testing.capture_logs() as logs:
        _, checks = await running(bus, handle, prom, "rs")
        await until(lambda: len(handled) == 5, timeout_s=WAIT_S, what="the old stream's")
        await _ack_floor_reaches(bus, "rs", 5, checks)
        await bus.js.delete_stream(bus.stream)
        await ensure_stream(bus.js, bus.stream, [bus.subject.split(".")[0] + ".>"],
                            duplicate_window_s=60)
        await _publish(bus, "n1", "n2", "n3")
        await until(lambda: {"n1", "n2", "n3"} <= set(handled), timeout_s=WAIT_S,
                    what="the new stream's messages")
    assert handled == ["o1", "o2", "o3", "o4", "o5", "n1", "n2", "n3"]
    assert [e.get("start") for e in _recreations(logs)][-1:] == \
        ["stream re-created: from its start"], logs


async def test_a_durable_made_by_start_time_is_not_replayed_from_the_stream_start(
        bus: Bus, prom: CollectorRegistry, running: Any) -> None:
    """A durable made (by someone else) with ``DeliverPolicy.BY_START_TIME`` after m1..m3:
    the consumer handles m4..m6. Deleted, it is re-created at its ack floor + 1: neither
    m1..m3 (never this durable's) nor m4..m6 are handled, m7 published after is."""
    await _publish(bus, "m1", "m2", "m3")
    await asyncio.sleep(0.05)  # the start time falls strictly between m3 and m4
    start_time = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await _publish(bus, "m4", "m5", "m6")
    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="st", ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=-1,
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start_time,
        filter_subject=bus.subject))
    handled: list[str] = []

    async def handle(d: Delivery) -> None:
        handled.append(d.msg_id)

    _, checks = await running(bus, handle, prom, "st")
    await until(lambda: len(handled) == 3, timeout_s=WAIT_S, what="m4..m6")
    await _ack_floor_reaches(bus, "st", 6, checks)
    await bus.js.delete_consumer(bus.stream, "st")
    t0 = time.monotonic()
    await _publish(bus, "m7")
    await until(lambda: "m7" in handled, timeout_s=WAIT_S, what="m7 after the re-creation")
    assert handled == ["m4", "m5", "m6", "m7"], (handled, time.monotonic() - t0)


@pytest.mark.parametrize("policy", [DeliverPolicy.BY_START_SEQUENCE, DeliverPolicy.NEW])
async def test_an_update_of_a_durable_keeps_its_deliver_policy(
        bus: Bus, prom: CollectorRegistry, policy: DeliverPolicy) -> None:
    """A durable made with ``BY_START_SEQUENCE`` (as a re-creation makes it) or ``NEW``
    and another ack wait than the options': the update start() makes keeps its deliver
    policy and start (JetStream refuses a change of them: ``deliver policy can not be
    updated``), so the ack wait is updated, not refused."""
    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="up", ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0, max_deliver=-1,
        deliver_policy=policy, filter_subject=bus.subject,
        opt_start_seq=3 if policy == DeliverPolicy.BY_START_SEQUENCE else None))

    async def handle(d: Delivery) -> None:
        pass

    consumer = Consumer(bus.js, handle, ConsumerOptions(
        stream=bus.stream, durable="up", filter_subject=bus.subject, registry=prom,
        tracing=False, access_log=False, ack_wait_s=30.0))
    with structlog.testing.capture_logs() as logs:
        await consumer.start()
    await consumer.aclose()
    config = (await bus.js.consumer_info(bus.stream, "up")).config
    assert (config.ack_wait, config.deliver_policy) == (30.0, policy.value)
    assert [e for e in logs if "could not update" in e["event"]] == []


async def test_a_durable_with_a_backoff_is_recreated_without_it(
        bus: Bus, prom: CollectorRegistry, running: Any) -> None:
    """A durable made (by an operator) with a backoff, so a bounded ``max_deliver``, and a
    ``max_waiting`` that start() cannot update (``max waiting can not be updated``: it
    keeps its config, logged). Deleted, it is re-created without the backoff (the server
    refuses one with the options' ``max_deliver`` -1: ``max deliver is required to be >
    length of backoff values``), at its ack floor + 1: m4, published after, is handled."""
    await bus.js.add_consumer(bus.stream, ConsumerConfig(
        durable_name="bo", ack_policy=AckPolicy.EXPLICIT, max_deliver=5,
        backoff=[1.0, 2.0], max_waiting=64, filter_subject=bus.subject))
    await _publish(bus, "m1", "m2", "m3")
    handled: list[str] = []

    async def handle(d: Delivery) -> None:
        handled.append(d.msg_id)

    with structlog.testing.capture_logs() as logs:
        _, checks = await running(bus, handle, prom, "bo")
        await until(lambda: len(handled) == 3, timeout_s=WAIT_S, what="m1..m3")
        await _ack_floor_reaches(bus, "bo", 3, checks)
        await bus.js.delete_consumer(bus.stream, "bo")
        await _publish(bus, "m4")
        await until(lambda: "m4" in handled, timeout_s=WAIT_S,
                    what="m4 after the re-creation")
    assert handled == ["m1", "m2", "m3", "m4"]
    assert [e.get("start_seq") for e in _recreations(logs)] == [4], logs
    config = (await bus.js.consumer_info(bus.stream, "bo")).config
    assert (config.opt_start_seq, config.max_deliver, config.backoff, config.max_waiting) \
        == (4, -1, None, 64)


#: A user that may consume (durable info / create, pulls, acks) but not read stream info.
_CONSUME_ONLY = """
jetstream {{ store_dir: "{store}" }}
authorization {{ users = [
  {{user: admin, password: admin}}
  {{user: reader, password: reader, permissions: {{
    publish: {{allow: ["$JS.API.CONSUMER.INFO.>", "$JS.API.CONSUMER.DURABLE.CREATE.>",
                      "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.MSG.NEXT.>",
                      "$JS.ACK.>", "_INBOX.>"]}}
    subscribe: {{allow: ["_INBOX.>"]}}}}}}
]}}
"""


def _spawn_consume_only(server: NatsServer, conf: Path) -> None:
    """Start ``server`` with the ``_CONSUME_ONLY`` config written to ``conf``."""
    conf.write_text(_CONSUME_ONLY.format(store=server.store_dir))
    server.proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(server.port), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
async def consume_only(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A private nats-server whose user ``reader`` may not ask for stream info."""
    if not Path(NATS_SERVER).exists():  # noqa: ASYNC240 - a stat, once per test
        pytest.fail(f"nats-server not found at {NATS_SERVER}")
    server = NatsServer(tmp_path / "nats")
    _spawn_consume_only(server, tmp_path / "nats.conf")

    async def accepting() -> bool:
        try:
            nc = await nats.connect(f"nats://admin:admin@127.0.0.1:{server.port}",
                                    connect_timeout=0.5, allow_reconnect=False)
        except Exception:
            return False
        await nc.close()
        return True

    await until(accepting, timeout_s=10, interval_s=0.1, what="nats-server accepting")
    yield server
    server.kill()


async def test_a_user_without_stream_info_permission_still_consumes(
        consume_only: NatsServer, prom: CollectorRegistry) -> None:
    """A least-privilege user (no ``$JS.API.STREAM.INFO``: the server drops the request,
    it times out) consumed before the stream identity check came; start() must still
    bind (the stream unknown: a lost durable would be re-created from the stream's start,
    logged) and m1 be handled."""
    port = consume_only.port
    admin = await nats.connect(f"nats://admin:admin@127.0.0.1:{port}")
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    reader = await nats.connect(f"nats://reader:reader@127.0.0.1:{port}", error_cb=on_error)
    try:
        await ensure_stream(admin.jetstream(), "S", ["s.>"], duplicate_window_s=60)
        await admin.jetstream().publish("s.a", b"1", headers={"Nats-Msg-Id": "m1"})
        handled: list[str] = []

        async def handle(d: Delivery) -> None:
            handled.append(d.msg_id)

        consumer = Consumer(reader.jetstream(timeout=1.0), handle, ConsumerOptions(
            stream="S", durable="r", filter_subject="s.a", registry=prom, tracing=False,
            access_log=False, fetch_timeout_s=0.2))
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(consumer.start(), WAIT_S)
            await until(lambda: consumer.run_once(), timeout_s=WAIT_S, what="m1")
        await consumer.aclose()
        assert handled == ["m1"]
        assert [e["event"] for e in logs if "stream" in e["event"]] == [
            "stream info unavailable; a lost durable is re-created from the stream's start"]
        assert errors, "the server did not refuse the stream info request"
    finally:
        await reader.close()
        await admin.close()


async def _run_until(consumer: Consumer, cond: Callable[[], bool], what: str) -> None:
    """Call ``run_once`` (a refused pull's error suppressed, as ``run`` logs it) until
    ``cond``, within ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached within {WAIT_S}s"
        with contextlib.suppress(nats.js.errors.APIError):
            await asyncio.wait_for(consumer.run_once(), WAIT_S)


async def test_a_stream_recreated_with_more_messages_than_the_floor_is_read_from_its_start(
        bus: Bus, prom: CollectorRegistry) -> None:
    """The old stream's o1..o3 acked (ack floor 3, seen by a durable check); the stream
    deleted and made again (another ``created``) with n1..n5 before the consumer notices:
    its last sequence (5) is not below the old floor, only the ``created`` time tells it
    is a new stream, read from its start: n1..n5 all handled (a re-creation at the old
    floor + 1 would skip n1..n3). The consumer is driven by ``run_once`` so the new
    stream has its messages when the loss is noticed."""
    handled: list[str] = []

    async def handle(d: Delivery) -> None:
        handled.append(d.msg_id)

    checks = Checks()

    async def seen(msg: Any) -> None:
        if not (msg.reply or "").startswith(_POLL_INBOX):
            checks.seen += 1

    sub = await bus.nc.subscribe(f"$JS.API.CONSUMER.INFO.{bus.stream}.nm", cb=seen)
    await bus.nc.flush()
    consumer = Consumer(bus.js, handle, ConsumerOptions(
        stream=bus.stream, durable="nm", filter_subject=bus.subject, registry=prom,
        tracing=False, access_log=False, fetch_timeout_s=0.2))
    try:
        await _publish(bus, "o1", "o2", "o3")
        await consumer.start()
        await _run_until(consumer, lambda: len(handled) == 3, "o1..o3")
        waiting = asyncio.create_task(_ack_floor_reaches(bus, "nm", 3, checks))
        await _run_until(consumer, waiting.done, "a durable check after ack floor 3")
        await waiting
        await bus.js.delete_stream(bus.stream)
        await ensure_stream(bus.js, bus.stream, [bus.subject.split(".")[0] + ".>"],
                            duplicate_window_s=60)
        await _publish(bus, "n1", "n2", "n3", "n4", "n5")
        with structlog.testing.capture_logs() as logs:
            await _run_until(consumer, lambda: "n5" in handled, "n5")
    finally:
        await consumer.aclose()
        await sub.unsubscribe()
    assert handled == ["o1", "o2", "o3", "n1", "n2", "n3", "n4", "n5"]
    assert [e.get("start") for e in _recreations(logs)] == \
        ["stream re-created: from its start"], logs
