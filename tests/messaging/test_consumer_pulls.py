"""A Consumer's pull requests on a real NATS JetStream: how soon it handles what is
published to it, which pulls it leaves on the server, and what it does when the server
refuses or holds a pull: an event reaching an idle consumer is
handled at once, not when a pull expires; a backlog is taken in batches of
``batch_size``; and while a handler runs no pull of the consumer's waits on the server
(one that did would take the next message for a process that may be dying with it).

The pulls are watched on the wire: a second connection subscribes to the consumer's
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` subject and records every request,
whatever client code sends it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats.js.errors
import pytest
import structlog
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery
from tests.messaging.conftest import Bus
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

#: Long enough that an event held until a pull expires shows plainly.
IDLE_FETCH_S = 3.0
#: How late the handling of one event may come (a wide margin for a loaded box).
PROMPT_S = 1.0
#: With no pull request for this long, the consumer is waiting in one.
QUIET_S = 0.3


@dataclass
class Pulls:
    """Pull requests seen on the wire: ``(monotonic time, request body)``."""

    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def quiet_for(self, seconds: float) -> bool:
        """Whether a pull was seen and none in the last ``seconds``."""
        return bool(self.seen) and time.monotonic() - self.seen[-1][0] >= seconds

    def batches(self) -> list[int]:
        """The ``batch`` of each request, in order."""
        return [req.get("batch", 1) for _, req in self.seen]


async def _watch_pulls(bus: Bus, durable: str) -> tuple[Pulls, Any]:
    pulls = Pulls()

    async def seen(msg: Any) -> None:
        pulls.seen.append((time.monotonic(), json.loads(msg.data or b"{}")))

    sub = await bus.nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream}.{durable}",
                                 cb=seen)
    await bus.nc.flush()
    return pulls, sub


@dataclass
class Running:
    consumer: Consumer
    pulls: Pulls
    task: asyncio.Task[None] | None = None


@pytest.fixture
async def run_consumer() -> AsyncIterator[Any]:
    """Makes a started Consumer whose pulls are watched, and runs it
    (``Consumer.run``) until the test ends unless ``run=False``."""
    made: list[tuple[Running, Any]] = []

    async def make(bus: Bus, handler: Any, prom: CollectorRegistry, *, run: bool = True,
                   **kw: Any) -> Running:
        opts: dict[str, Any] = {"stream": bus.stream, "durable": "lat",
                                "filter_subject": bus.subject, "registry": prom,
                                "tracing": False, "access_log": False}
        opts.update(kw)
        pulls, sub = await _watch_pulls(bus, opts["durable"])
        running = Running(Consumer(bus.js, handler, ConsumerOptions(**opts)), pulls)
        await running.consumer.start()
        if run:
            running.task = asyncio.create_task(running.consumer.run())
        made.append((running, sub))
        return running

    yield make
    for running, sub in made:
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _stale_reply(consumer: Consumer) -> str:
    """The reply subject of a pull the consumer no longer waits for (pull 0: before its
    first)."""
    pulls = consumer._pulls
    assert pulls is not None
    return f"{pulls.reply_prefix}.0"


async def _late_status(bus: Bus, consumer: Consumer, status: str = "408") -> None:
    """Deliver to the consumer's pull inbox the ``408 Request Timeout`` (or ``status``)
    an earlier pull ends with, as it comes when it arrives after the client stopped
    waiting for that pull: it must not be taken for the end of the pull under way."""
    await bus.nc.publish(_stale_reply(consumer), b"", headers={
        "Status": status, "Description": "Request Timeout" if status == "408"
        else "No Messages"})
    await bus.nc.flush()


async def _orphaned_pull(bus: Bus, consumer: Consumer) -> None:
    """Leave on the server a lingering pull for ``batch_size`` messages to the
    consumer's inbox, waiting longer than the test: what nats-py's fetch leaves behind
    when a status answered its first, no-wait request and it then returned early (seen
    on nats-server 2.9.10). JetStream gives a new message to the oldest waiting pull:
    this one; the message reaches the consumer's inbox all the same."""
    o = consumer.options
    request = json.dumps({"batch": o.batch_size, "expires": int(4 * IDLE_FETCH_S * 1e9)})
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{o.stream}.{o.durable}",
                         request.encode(), reply=_stale_reply(consumer))
    await bus.nc.flush()


@pytest.mark.parametrize("case", ["plain", "late-408", "orphaned-pull"])
async def test_an_event_reaching_an_idle_consumer_is_handled_at_once(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any, case: str) -> None:
    """An idle consumer (its stream empty, its pull waiting) handles an event within
    PROMPT_S of its publish, not when its pull of ``fetch_timeout_s`` (3 s) ends. A
    consumer that pulled ``batch_size`` and, after the first message, waited for the rest
    of the batch until a status ended some pull or its time was over, held the event
    when a lingering pull an earlier fetch left behind took it (``orphaned-pull``; seen:
    a projection span starting 1,058 ms after its publish with the default 1 s).
    ``late-408``: the ``408`` of an earlier pull coming during the wait does not make
    it longer either."""
    handled: dict[bytes, float] = {}

    async def handle(d: Delivery) -> None:
        handled[d.data] = time.monotonic()

    running = await run_consumer(bus, handle, prom, run=False,
                                 fetch_timeout_s=IDLE_FETCH_S)
    if case == "orphaned-pull":  # older than any pull of the consumer's
        await _orphaned_pull(bus, running.consumer)
    running.task = asyncio.create_task(running.consumer.run())
    for i in range(3):
        await until(lambda: running.pulls.quiet_for(QUIET_S), timeout_s=3 * IDLE_FETCH_S,
                    what="consumer idle")
        if case == "late-408":
            await _late_status(bus, running.consumer)
            await asyncio.sleep(0.05)  # the status taken
        key = f"e{i}".encode()
        published = time.monotonic()
        await bus.js.publish(bus.subject, key, headers={"Nats-Msg-Id": key.decode()})
        await until(lambda: key in handled, timeout_s=IDLE_FETCH_S + 5,  # noqa: B023
                    what=f"event {i} handled")
        late = handled[key] - published
        assert late < PROMPT_S, (case, i, late, running.pulls.seen[-4:])


async def test_a_backlog_is_taken_in_batches_of_batch_size(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any) -> None:
    """Messages waiting when the consumer starts are all handled, in stream order, in
    pulls of ``batch_size`` (not one at a time), without a pull waiting out
    ``fetch_timeout_s`` between them."""
    batch, count = 16, 200
    for i in range(count):
        await bus.js.publish(bus.subject, str(i).encode(), headers={"Nats-Msg-Id": f"b{i}"})
    seen: list[int] = []

    async def handle(d: Delivery) -> None:
        seen.append(int(d.data))

    started = time.monotonic()
    running = await run_consumer(bus, handle, prom, batch_size=batch,
                                 fetch_timeout_s=IDLE_FETCH_S)
    await until(lambda: len(seen) >= count, timeout_s=30, what="backlog handled")
    took = time.monotonic() - started
    assert seen == list(range(count))
    batches = running.pulls.batches()
    assert batch in batches, batches
    # one pull per batch, give or take the idle pulls at the start and end
    pulled_while_busy = [t for t, _ in running.pulls.seen if t - started < took]
    assert len(pulled_while_busy) <= 2 * math.ceil(count / batch) + 4, batches
    assert took < IDLE_FETCH_S, (took, running.pulls.seen[:6])


async def test_no_pull_waits_on_the_server_while_a_handler_runs(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any) -> None:
    """While a handler runs, the server holds no pull request of the consumer's
    (``num_waiting`` 0): a pull left waiting would take the next message for this
    process, which then sits unhandled (or, if the process dies in the handler, is lost
    to it until ``ack_wait_s``, one delivery counted that no handler saw: the crash-loop
    test's "delivery 4 where 3"). Checked over single events to an idle consumer, a
    burst, and events during a late ``408``."""
    waiting: list[int] = []

    async def handle(d: Delivery) -> None:
        info = await bus.js.consumer_info(bus.stream, "lat")
        waiting.append(info.num_waiting)

    running = await run_consumer(bus, handle, prom, run=False, batch_size=8,
                                 fetch_timeout_s=IDLE_FETCH_S)
    running.task = asyncio.create_task(running.consumer.run())
    sent = 0
    for round_ in range(3):
        await until(lambda: running.pulls.quiet_for(QUIET_S), timeout_s=3 * IDLE_FETCH_S,
                    what="consumer idle")
        if round_ == 2:
            await _late_status(bus, running.consumer)
            await asyncio.sleep(0.05)
        for _ in range(1 if round_ == 0 else 20):
            await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"w{sent}"})
            sent += 1
        await until(lambda: len(waiting) >= sent, timeout_s=IDLE_FETCH_S + 5,  # noqa: B023
                    what="all handled")
    assert waiting == [0] * sent, waiting


async def test_after_handling_the_next_pull_is_short_and_not_an_idle_period(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any) -> None:
    """After a pull that brought messages, the next ``run_once`` first takes what is
    waiting: finding the stream empty it does not count toward the empty pulls after
    which the consumer checks its durable, and the pull that waits for the next event
    follows at once; only a ``run_once`` that waited ``fetch_timeout_s`` in vain
    counts."""
    seen: list[bytes] = []

    async def handle(d: Delivery) -> None:
        seen.append(d.data)

    running = await run_consumer(bus, handle, prom, run=False,
                                 fetch_timeout_s=IDLE_FETCH_S)
    consumer = running.consumer
    await bus.js.publish(bus.subject, b"one", headers={"Nats-Msg-Id": "one"})
    assert await asyncio.wait_for(consumer.run_once(), IDLE_FETCH_S + 5) == 1

    async def publish_later() -> float:
        await asyncio.sleep(0.3)
        published = time.monotonic()
        await bus.js.publish(bus.subject, b"two", headers={"Nats-Msg-Id": "two"})
        return published

    later = asyncio.create_task(publish_later())
    assert await asyncio.wait_for(consumer.run_once(), IDLE_FETCH_S + 5) == 1
    assert time.monotonic() - await later < PROMPT_S, running.pulls.seen
    assert seen == [b"one", b"two"]
    assert consumer._empty_fetches == 0
    started = time.monotonic()
    assert await asyncio.wait_for(consumer.run_once(), IDLE_FETCH_S + 5) == 0
    assert time.monotonic() - started > IDLE_FETCH_S / 2
    assert consumer._empty_fetches == 1


def _opts(bus: Bus, prom: CollectorRegistry, **kw: Any) -> ConsumerOptions:
    o: dict[str, Any] = {"stream": bus.stream, "durable": "rv", "filter_subject": bus.subject,
                         "registry": prom, "tracing": False, "access_log": False}
    o.update(kw)
    return ConsumerOptions(**o)


async def _num_waiting(bus: Bus, durable: str = "rv") -> int:
    return int((await bus.js.consumer_info(bus.stream, durable)).num_waiting)


async def _durable_made_elsewhere(bus: Bus, consumer: Consumer, **fields: Any) -> None:
    """Make ``consumer``'s durable with its own config plus ``fields`` nats-py's
    ``ConsumerConfig`` has no field for (``max_batch``, ``max_expires`` in ns), through
    JetStream's API as another client would."""
    config = {**consumer.consumer_config().as_dict(), **fields}
    made = await bus.nc.request(f"$JS.API.CONSUMER.DURABLE.CREATE.{bus.stream}.rv",
                                json.dumps({"stream_name": bus.stream,
                                            "config": config}).encode())
    assert b'"error"' not in made.data, made.data


async def _durable_with_max_ack_pending(bus: Bus, opts: ConsumerOptions,
                                        most: int) -> Any:
    """Make the durable of ``opts`` as its Consumer would, with ``max_ack_pending``
    ``most``; returns its config."""
    async def unused(d: Delivery) -> None:
        raise AssertionError

    config = Consumer(bus.js, unused, opts).consumer_config()
    config.max_ack_pending = most
    await bus.js.add_consumer(bus.stream, config)
    return config


async def test_a_durable_with_a_small_max_ack_pending_is_pulled_without_waiting(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A durable whose ``max_ack_pending`` (2) is below ``batch_size`` (8): a pull for 8
    gets the 2 messages the server may deliver and no status until its ``expires``
    (nats-server 2.9.10), so it waited ``fetch_timeout_s`` before handling them, and
    stayed waiting on the server. Pulled 2 at a time, it returns at once."""
    opts = _opts(bus, prom, batch_size=8, fetch_timeout_s=3.0)
    await _durable_with_max_ack_pending(bus, opts, 2)
    waiting: list[int] = []

    async def handle(d: Delivery) -> None:
        waiting.append(await _num_waiting(bus))

    consumer = Consumer(bus.js, handle, opts)
    await consumer.start()
    for i in range(2):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"m{i}"})
    started = time.monotonic()
    assert await asyncio.wait_for(consumer.run_once(), 10) == 2
    took = time.monotonic() - started
    assert (took < 1.0, waiting) == (True, [0, 0]), (took, waiting)


async def test_messages_a_refused_pull_brought_are_handled_before_it_raises(
        bus: Bus, prom: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull of ``run_once``'s brought a message (here one an older pull delivered to
    the inbox as it waited) and was then refused (a ``409``, sent here ahead of the
    server's answer): the message is handled, then the refusal raised, not dropped
    unacked until ``ack_wait_s``."""
    got: list[bytes] = []

    async def handle(d: Delivery) -> None:
        got.append(d.data)

    consumer = Consumer(bus.js, handle, _opts(bus, prom, batch_size=4, fetch_timeout_s=0.5))
    await consumer.start()
    pulls = consumer._pulls
    assert pulls is not None
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream}.rv",
                         json.dumps({"batch": 1, "expires": int(5e9)}).encode(),
                         reply=_stale_reply(consumer))
    await bus.nc.flush()
    real = type(pulls).pull

    async def refused(self: Any, batch: int, wait_s: float, msgs: list[Any]) -> Any:
        await bus.js.publish(bus.subject, b"early", headers={"Nats-Msg-Id": "early"})
        await until(lambda: self._inbox._pending_queue.qsize() == 1, timeout_s=5,
                    what="the older pull's message in the inbox")
        await bus.nc.publish(f"{self.reply_prefix}.{self._n + 1}", b"", headers={
            "Status": "409", "Description": "Leadership Change"})
        return await real(self, batch, wait_s, msgs)

    monkeypatch.setattr(type(pulls), "pull", refused)
    with pytest.raises(nats.js.errors.APIError) as raised:
        await consumer.run_once()
    assert raised.value.code == 409
    assert got == [b"early"]


@pytest.mark.parametrize("status", ["408", "404"])
async def test_a_late_status_then_one_event_leaves_no_pull_waiting(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any, status: str) -> None:
    """An earlier pull's ``408`` (or ``404``) reaching an idle consumer does not end its
    waiting pull: else it sends another pull while the first still waits, the event goes
    to the first, and the second waits on the server while the handler runs."""
    waiting: list[int] = []

    async def handle(d: Delivery) -> None:
        waiting.append(await _num_waiting(bus, "lat"))

    running = await run_consumer(bus, handle, prom, fetch_timeout_s=IDLE_FETCH_S)
    for i in range(2):
        await until(lambda: running.pulls.quiet_for(QUIET_S), timeout_s=3 * IDLE_FETCH_S,
                    what="consumer idle")
        await _late_status(bus, running.consumer, status)
        await asyncio.sleep(0.1)
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"l{i}"})
        await until(lambda: len(waiting) > i, timeout_s=IDLE_FETCH_S + 5,  # noqa: B023
                    what="handled")
    assert waiting == [0, 0], waiting


async def test_a_durable_whose_max_batch_is_below_batch_size_is_pulled_in_smaller_batches(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A durable made elsewhere with ``max_batch`` 4 (nats-py has no field for it)
    refuses every pull of ``batch_size`` 64 (``409 Exceeded MaxRequestBatch of 4``):
    nothing was ever consumed. Now the consumer pulls 4 at a time (logged once)."""
    got: list[bytes] = []

    async def handle(d: Delivery) -> None:
        got.append(d.data)

    consumer = Consumer(bus.js, handle, _opts(bus, prom, fetch_timeout_s=0.5))
    await _durable_made_elsewhere(bus, consumer, max_batch=4)
    await consumer.start()
    for i in range(10):
        await bus.js.publish(bus.subject, str(i).encode(), headers={"Nats-Msg-Id": f"o{i}"})
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(consumer.run())
        try:
            await until(lambda: len(got) == 10, timeout_s=10, what="all consumed")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert got == [str(i).encode() for i in range(10)]
    assert consumer._pull_batch == 4
    assert sum("max_batch is below batch_size" in e["event"] for e in logs) == 1


async def _backlog(bus: Bus, prom: CollectorRegistry, waiting: list[int]) -> Consumer:
    async def handle(d: Delivery) -> None:
        waiting.append(await _num_waiting(bus))

    consumer = Consumer(bus.js, handle, _opts(bus, prom, batch_size=8, fetch_timeout_s=3.0))
    await consumer.start()
    for i in range(3):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"s{i}"})
    return consumer


async def test_a_late_status_in_the_inbox_does_not_cut_the_next_pull_short(
        bus: Bus, prom: CollectorRegistry) -> None:
    """An earlier pull's ``408`` sitting in the inbox (it came after ``run_once`` stopped
    waiting for that pull) does not end the next pull: the backlog of 3 is taken at once
    and no pull waits while the handlers run."""
    waiting: list[int] = []
    consumer = await _backlog(bus, prom, waiting)
    await _late_status(bus, consumer)
    pulls = consumer._pulls
    assert pulls is not None
    await until(lambda: pulls._inbox._pending_queue.qsize() == 1, timeout_s=5,
                what="the 408 in the inbox")
    n = await asyncio.wait_for(consumer.run_once(), 10)
    assert (n, waiting) == (3, [0, 0, 0])


async def test_a_late_status_arriving_with_a_pulls_answer_does_not_cut_it_short(
        bus: Bus, prom: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same, the earlier pull's ``408`` reaching the inbox just ahead of the pull's
    answer (sent, here, just before the request on the same connection)."""
    waiting: list[int] = []
    consumer = await _backlog(bus, prom, waiting)
    pulls = consumer._pulls
    assert pulls is not None
    real = type(pulls).pull

    async def late_first(self: Any, batch: int, wait_s: float, msgs: list[Any]) -> Any:
        await _late_status(bus, consumer)
        return await real(self, batch, wait_s, msgs)

    monkeypatch.setattr(type(pulls), "pull", late_first)
    n = await asyncio.wait_for(consumer.run_once(), 10)
    assert (n, waiting) == (3, [0, 0, 0])


async def test_a_durable_deleted_while_a_handler_runs_is_recreated(
        bus: Bus, prom: CollectorRegistry) -> None:
    """Deleted while no pull of the consumer's waits (during a handler), the durable
    gives no ``409``: its later pulls are never answered, and only the check after 5
    unanswered pulls tells. It is re-created and the next event consumed."""
    got: list[bytes] = []

    async def handle(d: Delivery) -> None:
        if d.data == b"one":
            await bus.js.delete_consumer(bus.stream, "rv")
        got.append(d.data)

    consumer = Consumer(bus.js, handle, _opts(bus, prom, fetch_timeout_s=0.2))
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await bus.js.publish(bus.subject, b"one", headers={"Nats-Msg-Id": "one"})
        await until(lambda: got == [b"one"], timeout_s=5, what="the first")
        await bus.js.publish(bus.subject, b"two", headers={"Nats-Msg-Id": "two"})
        await until(lambda: b"two" in got, timeout_s=15, what="one after the re-creation")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_messages_of_a_cancelled_pull_are_given_back_at_once(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A ``run_once`` cancelled while its pull had brought messages and waited for its
    end (here: an earlier pull's message, then a wait) naks them, so they are delivered
    again now, not after ``ack_wait_s`` (30 s)."""
    got: list[tuple[bytes, int]] = []

    async def handle(d: Delivery) -> None:
        got.append((d.data, d.delivery))

    consumer = Consumer(bus.js, handle, _opts(bus, prom, batch_size=4, fetch_timeout_s=3.0))
    await consumer.start()
    pulls = consumer._pulls
    assert pulls is not None
    real_next = pulls._inbox.next_msg
    brought = asyncio.Event()

    async def next_msg(timeout: float | None = 1.0) -> Any:  # noqa: ASYNC109
        msg = await real_next(timeout=timeout)
        brought.set()
        return msg

    pulls._inbox.next_msg = next_msg  # type: ignore[method-assign]
    # an earlier pull (older than the consumer's, so JetStream serves it first) brings
    # a message to the inbox while the pull under way still waits for its own
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream}.rv",
                         json.dumps({"batch": 1, "expires": int(5e9)}).encode(),
                         reply=_stale_reply(consumer))
    await bus.nc.flush()
    once = asyncio.create_task(consumer.run_once())
    await until(lambda: pulls._n == 1, timeout_s=5, what="the pull sent")
    await bus.js.publish(bus.subject, b"m", headers={"Nats-Msg-Id": "m"})
    await asyncio.wait_for(brought.wait(), 5)
    once.cancel()
    with pytest.raises(asyncio.CancelledError):
        await once
    pulls._inbox.next_msg = real_next  # type: ignore[method-assign]
    started = time.monotonic()
    while not got and time.monotonic() - started < 5:
        await consumer.run_once()
    assert got == [(b"m", 2)], got


async def test_messages_already_in_the_inbox_are_not_held_by_an_idle_pull(
        bus: Bus, prom: CollectorRegistry, run_consumer: Any) -> None:
    """Messages an earlier pull brought after ``run_once`` stopped waiting for it sit in
    the inbox; the next ``run_once`` took them and still made a pull that waited up to
    ``fetch_timeout_s`` for a first NEW message before handling the ones it held (3.0 s,
    their ack wait running). They are handled at once."""
    handled: dict[bytes, float] = {}

    async def handle(d: Delivery) -> None:
        handled[d.data] = time.monotonic()

    running = await run_consumer(bus, handle, prom, run=False,
                                 fetch_timeout_s=IDLE_FETCH_S)
    consumer = running.consumer
    for key in (b"q0", b"q1"):
        await bus.js.publish(bus.subject, key, headers={"Nats-Msg-Id": key.decode()})
    await _orphaned_pull(bus, consumer)  # brings both into the consumer's inbox
    pulls = consumer._pulls
    assert pulls is not None
    await until(lambda: pulls._inbox._pending_queue.qsize() >= 2, timeout_s=5,
                what="messages in the inbox")
    started = time.monotonic()
    assert await consumer.run_once() == 2
    late = max(handled.values()) - started
    assert late < PROMPT_S, late


@pytest.mark.parametrize("case", ["shared-by-two-processes", "lowered-after-start"])
async def test_a_pull_max_ack_pending_holds_back_is_not_left_waiting(
        bus: Bus, prom: CollectorRegistry, case: str) -> None:
    """When another process of the durable holds part of its ``max_ack_pending``, or it
    was lowered after ``start``, a pull gets fewer messages than its batch and no status
    until its expiry. Returning before that end left the pull on the server, taking
    messages while the handlers ran (``num_waiting`` 2 in a handler). In a handler of one
    process only the other process's pull may wait now."""
    opts = _opts(bus, prom, batch_size=4, fetch_timeout_s=3.0)
    config = await _durable_with_max_ack_pending(bus, opts, 4)
    waiting: list[int] = []

    async def handle(d: Delivery) -> None:
        waiting.append(await _num_waiting(bus))
        await asyncio.sleep(0.3)

    consumers = [Consumer(bus.js, handle, opts)]
    if case == "shared-by-two-processes":
        consumers.append(Consumer(bus.js, handle, opts))
    for c in consumers:
        await c.start()
    if case == "lowered-after-start":
        config.max_ack_pending = 2
        await bus.js.add_consumer(bus.stream, config)
    for i in range(12):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"m{i}"})
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        await until(lambda: len(waiting) >= 12, timeout_s=30, what="all handled")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    assert max(waiting) <= len(consumers) - 1, waiting


@pytest.mark.parametrize("close", [False, True])
async def test_a_cancelled_consumer_leaves_no_pull_to_take_the_next_event(
        bus: Bus, prom: CollectorRegistry, close: bool) -> None:
    """``run()`` of an idle consumer is cancelled (a service stopping it), its
    connection kept (or then closed). Its pull stayed on the server until its expiry with
    its inbox still subscribed, so the next event went there and nobody read it: another
    process of the durable got it only after ``ack_wait_s`` (10.0 s). Cancelled, it
    unsubscribes its inbox, and JetStream skips the pull."""
    import nats as nats_client

    got: list[float] = []

    async def never(d: Delivery) -> None:
        raise AssertionError("the stopped consumer handled a message")

    async def handle(d: Delivery) -> None:
        got.append(time.monotonic())

    nc = await nats_client.connect(bus.url)
    try:
        opts = _opts(bus, prom, fetch_timeout_s=3.0, ack_wait_s=10.0)
        stopping = Consumer(nc.jetstream(), never, opts)
        await stopping.start()
        task = asyncio.create_task(stopping.run())
        await asyncio.sleep(0.5)  # its idle pull sent
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert stopping._pulls is None
        if close:
            await nc.close()
        other = Consumer(bus.js, handle, opts)
        await other.start()
        other_task = asyncio.create_task(other.run())
        try:
            await asyncio.sleep(0.2)
            published = time.monotonic()
            await bus.js.publish(bus.subject, b"e", headers={"Nats-Msg-Id": "e"})
            await until(lambda: bool(got), timeout_s=15, what="the event handled")
            assert got[0] - published < PROMPT_S, got[0] - published
        finally:
            other_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await other_task
    finally:
        await nc.close()


async def test_a_durable_whose_max_expires_is_below_fetch_timeout_is_pulled_within_it(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A durable made elsewhere with ``max_expires`` 1 s refuses every idle pull of
    ``fetch_timeout_s`` 3 s (``409 Exceeded MaxRequestExpires of 1s``). Now the idle
    pulls wait within it (logged once), and an event reaching the idle consumer is
    handled at once."""
    got: list[float] = []

    async def handle(d: Delivery) -> None:
        got.append(time.monotonic())

    consumer = Consumer(bus.js, handle, _opts(bus, prom, fetch_timeout_s=3.0))
    await _durable_made_elsewhere(bus, consumer, max_expires=1_000_000_000)
    await consumer.start()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(consumer.run())
        try:
            await asyncio.sleep(1.0)  # idle: refused once, then within max_expires
            published = time.monotonic()
            await bus.js.publish(bus.subject, b"e", headers={"Nats-Msg-Id": "e"})
            await until(lambda: bool(got), timeout_s=10, what="the event handled")
            assert got[0] - published < PROMPT_S
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert 0 < consumer._expires_s < 1.0
    assert sum("max_expires is below fetch_timeout_s" in e["event"] for e in logs) == 1
