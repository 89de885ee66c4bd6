"""OutboxRelay's rounds on the real NATS: a first try that only times out does not hold
its round (and the events committed meanwhile), an outage stays a failed round with
bounded publishes beside the rounds, an acked retry wakes a round, aclose() leaves no
task, a store failure after an ack loses no event."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats.aio.msg
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from meshkit.messaging import (
    OutboxEvent,
    OutboxRelay,
    Publisher,
    PublishOptions,
    RelayOptions,
    ensure_stream,
)
from meshkit.resilience import Backoff, BudgetOptions
from tests.messaging.conftest import Bus, NatsServer
from tests.support.procs import stop_process
from tests.support.wait import until


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class _Mem:
    """An in-memory outbox recording when each event was marked sent (loop time)."""

    def __init__(self, events: list[OutboxEvent] | None = None) -> None:
        self.events = list(events or [])
        self.sent: list[str] = []
        self.sent_at: dict[str, float] = {}
        self.reads = 0
        self.fail_marks = 0  # the next N mark_sent calls raise

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        self.reads += 1
        return [e for e in self.events if e.event_id not in self.sent][:limit]

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        if self.fail_marks:
            self.fail_marks -= 1
            raise ConnectionError("store down")
        now = asyncio.get_running_loop().time()
        for i in event_ids:
            if i not in self.sent:
                self.sent.append(i)
                self.sent_at[i] = now


@pytest.fixture
async def silent_subject(bus: Bus) -> AsyncIterator[str]:
    """A subject no stream captures that a core NATS subscriber listens to and never
    answers: a publish to it gets no ack, only timeouts."""
    subject = f"silent{uuid.uuid4().hex[:10]}.x"

    async def ignore(msg: nats.aio.msg.Msg) -> None:
        return None

    sub = await bus.nc.subscribe(subject, cb=ignore)
    await bus.nc.flush()
    try:
        yield subject
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_first_try_that_only_times_out_does_not_hold_its_round(
        bus: Bus, silent_subject: str, prom: CollectorRegistry) -> None:
    """A new event whose publish only times out (4 attempts x 1 s here) at its first
    try: the round waited for it, and every event committed meanwhile waited for the
    round, and the round with a second such event too (6.8-7.8 s late). Now a round
    waits one attempt's timeout_s (1 s) at most, then the publish goes on beside the
    rounds (0.8-1.8 s late: an event of the second one's batch is marked at its end)."""
    store = _Mem()
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=1.0, max_attempts=4,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))),
        RelayOptions(poll_interval_s=0.1,
                     error_backoff=Backoff(base_delay_s=0.05, max_delay_s=0.05)))
    task = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()
    committed: dict[str, float] = {}

    def commit(eid: str, subject: str) -> None:
        store.events.append(OutboxEvent(eid, subject, b"x", {}))
        committed[eid] = loop.time()
        relay.notify()

    try:
        await until(lambda: store.reads >= 1, timeout_s=5, what="the relay's first read")
        commit("poison-1", silent_subject)
        for i in range(4):
            await asyncio.sleep(0.25)
            commit(f"g-{i}", bus.subject)
        commit("poison-2", silent_subject)
        commit("g-4", bus.subject)
        await asyncio.sleep(0.25)
        commit("g-5", bus.subject)
        goods = [f"g-{i}" for i in range(6)]
        await until(lambda: all(g in store.sent for g in goods), timeout_s=15,
                    what="the good events marked sent")
    finally:
        await _stop(task)
    late = {g: round(store.sent_at[g] - committed[g], 2) for g in goods}
    # two bounds (1 s) at most, with a margin for a loaded machine; >= 4 s (one
    # publish's 4 attempts) when a round waited for its first tries
    assert max(late.values()) < 3.0, late
    assert "poison-1" not in store.sent and "poison-2" not in store.sent


def _late_subject_relay(bus: Bus, store: _Mem, prom: CollectorRegistry
                        ) -> tuple[OutboxRelay, str]:
    """A relay (30 s poll, 1 s fixed error_backoff) and a subject no stream captures
    yet: an event to it fails at its first try (no stream answers) and is acked on a
    retry once the test made a stream for it."""
    subject = f"late{uuid.uuid4().hex[:10]}.x"
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=2.0, max_attempts=1)), RelayOptions(
        poll_interval_s=30,
        error_backoff=Backoff(base_delay_s=1.0, max_delay_s=1.0, rng=_NoJitter())))
    return relay, subject


async def _stream_for(bus: Bus, subject: str) -> str:
    name = "L" + subject.split(".")[0]
    await ensure_stream(bus.js, name, [subject], duplicate_window_s=60)
    return name


async def test_an_acked_retry_wakes_a_round_that_marks_it(
        bus: Bus, prom: CollectorRegistry) -> None:
    """An event that failed once is acked on its retry beside the rounds: its end wakes
    a round, which marks it sent, long before the 30 s poll (without the wake it waited
    for the poll)."""
    store = _Mem()
    relay, subject = _late_subject_relay(bus, store, prom)
    store.events.append(OutboxEvent("late-1", subject, b"x", {}))
    task = asyncio.create_task(relay.run())
    name = None
    try:
        await until(lambda: relay.event_failures >= 1, timeout_s=10, what="a failure")
        name = await _stream_for(bus, subject)  # the retry, after 1 s, is acked
        took = await until(lambda: "late-1" in store.sent, timeout_s=8,
                           what="late-1 marked sent")
    finally:
        await _stop(task)
        if name is not None:
            await bus.js.delete_stream(name)
    assert took < 8 and relay.published == 1 and relay.event_failures == 1


async def test_an_acked_retry_whose_mark_fails_is_published_again_and_counted_once(
        bus: Bus, prom: CollectorRegistry) -> None:
    """The store fails marking an event acked on its retry: the event stays pending,
    is published again (the stream's dedupe window drops the repeat: one message, a
    duplicate ack), then marked; counted once in ``published``, never lost."""
    store = _Mem()
    relay, subject = _late_subject_relay(bus, store, prom)
    store.events.append(OutboxEvent("late-1", subject, b"x", {}))
    task = asyncio.create_task(relay.run())
    name = None
    try:
        await until(lambda: relay.event_failures >= 1, timeout_s=10, what="a failure")
        store.fail_marks = 1  # the first mark, the acked retry's, fails
        name = await _stream_for(bus, subject)
        await until(lambda: "late-1" in store.sent, timeout_s=15,
                    what="late-1 marked sent")
        info = await bus.js.stream_info(name)
    finally:
        await _stop(task)
        if name is not None:
            await bus.js.delete_stream(name)
    assert store.fail_marks == 0 and relay.failures >= 2  # the store's failed round
    assert store.sent == ["late-1"] and relay.published == 1
    assert info.state.messages == 1
    dup = prom.get_sample_value("meshkit_messaging_published_total",
                                {"subject": subject, "outcome": "duplicate"})
    assert dup == 1


async def test_a_failed_mark_still_holds_the_rounds_failed_events(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A round publishes one event and fails another, then the store fails marking the
    acked one: the failed event was not held (the mark raised first), so it was neither
    counted, logged nor backed off, and came back as a first try in the next round.
    Now it is held before the mark."""
    store = _Mem([OutboxEvent("good-1", bus.subject, b"g", {}),
                  OutboxEvent("bad-1", f"nostream{bus.stream}.x", b"x", {})])
    store.fail_marks = 1
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, max_attempts=1)), RelayOptions(
        error_backoff=Backoff(base_delay_s=30, max_delay_s=30, rng=_NoJitter())))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(relay.relay_once(), 8)
    assert relay.event_failures == 1 and "bad-1" in relay._held
    assert await asyncio.wait_for(relay.relay_once(), 8) == 1  # good-1 again (deduped)
    assert store.sent == ["good-1"] and relay.event_failures == 1
    await relay.aclose()


def _publishes_after_aclose(close: bool) -> tuple[list[str], list[str]]:
    """On a loop of its own: a relay_once() that leaves a publish beside the rounds (an
    event whose publish only times out), then aclose() if ``close``; the relay's tasks
    still pending after it, and asyncio's "Task was destroyed but it is pending"
    reports for the relay's tasks once the loop is closed."""
    from tests.messaging.conftest import NATS_URL, require_nats

    loop = asyncio.new_event_loop()
    destroyed: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: destroyed.append(
        f"{ctx.get('message')} {ctx.get('task')!r}"))

    def ours(task: asyncio.Task[Any]) -> bool:
        return getattr(task.get_coro(), "__qualname__", "") in (
            "OutboxRelay._retry", "Publisher._send")

    async def scenario() -> list[str]:
        await require_nats()
        nc = await nats.connect(NATS_URL, connect_timeout=2)
        subject = f"silent{uuid.uuid4().hex[:10]}.x"

        async def ignore(msg: nats.aio.msg.Msg) -> None:
            return None

        await nc.subscribe(subject, cb=ignore)
        await nc.flush()
        relay = OutboxRelay(_Mem([OutboxEvent("poison-1", subject, b"x", {})]),
                            Publisher(nc.jetstream(), PublishOptions(
                                metrics=False, timeout_s=0.5, max_attempts=10)))
        # judged when it ends: no failed round yet
        assert await asyncio.wait_for(relay.relay_once(), 8) == 0
        assert relay._retrying
        if close:
            await relay.aclose()
            await relay.aclose()  # idempotent
        left = [repr(t.get_coro()) for t in asyncio.all_tasks() if ours(t)]
        if close:  # nats-py ends the abandoned attempt's request on its next turns
            await until(lambda: not [t for t in asyncio.all_tasks() if ours(t)],
                        timeout_s=2, what="the publisher's attempt ended")
        else:  # the publish beside is still running: closing nc would end it
            await relay.aclose()
        await nc.close()
        return left

    try:
        left = loop.run_until_complete(scenario())
    finally:
        loop.close()
    del loop
    gc.collect()
    return [x for x in left if "_retry" in x], \
        [d for d in destroyed if "destroyed" in d]


def test_aclose_ends_the_publishes_beside_the_rounds() -> None:
    """relay_once() without run() leaves the publishes it started beside the rounds
    running (seen here without aclose()), and nothing could end them: at a loop's end
    asyncio reported them destroyed while pending. aclose() cancels and awaits them:
    no task of the relay is left, nothing is reported."""
    left, _ = _publishes_after_aclose(close=False)
    assert left  # what the check below would see
    assert _publishes_after_aclose(close=True) == ([], [])


async def test_an_outage_is_a_failed_round_with_bounded_publishes_beside(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """NATS down, 40 events pending: every round's first tries go past the bound (each
    attempt waits for the reconnect, up to timeout_s), so each round is a failed one
    (error_backoff between them), at most batch_size publishes run beside the rounds,
    and the store is read at the failed rounds' pace. Back up, every event is published
    once and marked."""
    events = [OutboxEvent(f"e-{i}", private_bus.subject, b"x", {}) for i in range(40)]
    store = _Mem(events)
    relay = OutboxRelay(store, Publisher(private_bus.js, PublishOptions(
        registry=prom, timeout_s=0.3, max_attempts=3,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))), RelayOptions(
        batch_size=5, poll_interval_s=0.05,
        error_backoff=Backoff(base_delay_s=0.2, max_delay_s=0.2, rng=_NoJitter())))
    private_nats.kill()
    task = asyncio.create_task(relay.run())
    most = 0
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        while loop.time() < end:
            most = max(most, len(relay._retrying))
            await asyncio.sleep(0.01)
        reads, failures = store.reads, relay.failures
        assert store.sent == [] and failures >= 2, (failures, relay.event_failures)
        assert most <= 5, most
        # a round is >= 0.3 s (the bound) + 0.2 s (error_backoff): <= 7 in 3 s
        assert reads <= 10, reads
        await private_nats.start()
        await until(lambda: len(store.sent) == 40, timeout_s=30,
                    what="every event marked after the outage")
        info = await private_bus.js.stream_info(private_bus.stream)
    finally:
        await _stop(task)
    assert sorted(store.sent) == sorted(e.event_id for e in events)
    assert relay.published == 40 and info.state.messages == 40


async def test_run_cancelled_while_its_round_waits_for_a_first_try_leaves_no_task(
        bus: Bus, silent_subject: str, prom: CollectorRegistry) -> None:
    """run() cancelled while its round waits for a first try that only times out: the
    round's own publishes are tasks now (not gather's children), so the cancel must
    end them too; no publish of the relay is left running."""
    store = _Mem([OutboxEvent("poison-1", silent_subject, b"x", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=5.0, max_attempts=2)))

    def ours() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if getattr(
            t.get_coro(), "__qualname__", "") in ("OutboxRelay._retry", "Publisher._send")]

    task = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()
    try:
        await until(lambda: len(ours()) == 2, timeout_s=5, what="the first try under way")
    finally:
        began = loop.time()
        await _stop(task)
        took = loop.time() - began
    # ended with run(), not after: a round that only awaited its tries (no cancel)
    # held the cancel for their publish (2 attempts x 5 s); one that only cancelled
    # them (no await) left them pending after run() had returned
    pending = [t for t in ours() if t.get_coro().__qualname__ == "OutboxRelay._retry"]
    assert took < 3 and not pending, (took, pending)
    await until(lambda: not ours(), timeout_s=2, what="no publish of the relay left")
    assert not relay._retrying and store.sent == []



async def test_a_stalled_server_that_acks_on_a_retry_is_no_failed_round(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """The server stalls 1.2 s of every 1.3 s (SIGSTOP/SIGCONT: a GC or disk pause)
    while events are committed; a publish whose first attempt (timeout_s 0.5 s) meets
    a stall is acked on a retry after it. A round whose first tries all went on beside
    it after timeout_s was a failed round: 7 failed rounds and 7 "outbox relay round
    failed" warnings in 9 s (each stall a new streak; before 70a1d75, and now: none),
    each followed by error_backoff, though every event was acked. Now the publishes
    beside are judged when they end: acked, the round was a normal one."""
    store = _Mem()
    relay = OutboxRelay(store, Publisher(private_bus.js, PublishOptions(
        registry=prom, timeout_s=0.5, max_attempts=6,
        budget=BudgetOptions(retry_ratio=1.0, min_retries_per_s=1000),
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))), RelayOptions(
        batch_size=5, poll_interval_s=0.05,
        error_backoff=Backoff(base_delay_s=0.2, max_delay_s=0.2, rng=_NoJitter())))
    assert private_nats.proc is not None
    pid = private_nats.proc.pid
    n = 0

    async def commits() -> None:
        nonlocal n
        for _ in range(35):
            for _ in range(3):
                store.events.append(OutboxEvent(f"e-{n}", private_bus.subject, b"x", {}))
                n += 1
            relay.notify()
            await asyncio.sleep(0.2)

    with capture_logs() as logs:
        task = asyncio.create_task(relay.run())
        committing = asyncio.create_task(commits())
        try:
            while not committing.done():
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(1.2)
                os.kill(pid, signal.SIGCONT)
                await asyncio.sleep(0.1)
            await until(lambda: len(store.sent) == n, timeout_s=20,
                        what="every event marked sent")
            info = await private_bus.js.stream_info(private_bus.stream)
        finally:
            os.kill(pid, signal.SIGCONT)
            await _stop(committing)
            await _stop(task)
    warned = [x for x in logs if x["event"] == "outbox relay round failed"]
    assert n == 105 and info.state.messages == n and relay.published == n
    assert (relay.failures, len(warned)) == (0, 0), (relay.failures, relay.event_failures)


async def test_an_outage_with_fewer_events_than_slots_is_still_a_failed_round(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """NATS down, 3 events, 10 slots beside the rounds: every first try goes on beside
    the rounds after timeout_s; when they fail the round taking their outcome is a
    failed round (warned once), and later rounds go at the poll pace. Back up, all 3 are
    published once."""
    events = [OutboxEvent(f"e-{i}", private_bus.subject, b"x", {}) for i in range(3)]
    store = _Mem(events)
    relay = OutboxRelay(store, Publisher(private_bus.js, PublishOptions(
        registry=prom, timeout_s=0.3, max_attempts=3,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))), RelayOptions(
        batch_size=10, poll_interval_s=0.1,
        error_backoff=Backoff(base_delay_s=0.2, max_delay_s=0.2, rng=_NoJitter())))
    private_nats.kill()
    with capture_logs() as logs:
        task = asyncio.create_task(relay.run())
        try:
            await until(lambda: relay.failures >= 1, timeout_s=10, what="a failed round")
            assert relay.event_failures >= 1 and store.sent == []
            await private_nats.start()
            await until(lambda: len(store.sent) == 3, timeout_s=30,
                        what="every event marked after the outage")
            info = await private_bus.js.stream_info(private_bus.stream)
        finally:
            await _stop(task)
    warned = [x for x in logs if x["event"] == "outbox relay round failed"]
    assert len(warned) >= 1 and info.state.messages == 3 and relay.published == 3


async def test_a_first_try_past_the_bound_takes_a_free_slot_before_a_due_retry(
        bus: Bus, silent_subject: str, prom: CollectorRegistry) -> None:
    """Two slots beside the rounds (batch_size 2). Two events that only time out failed
    and their backoff is over when a round has a third such event and a good one as
    first tries: the third, past the bound, takes a free slot before the retries, so
    the round ends after the bound (0.5 s) with the good one marked. Were the retries
    to take both slots first, the round would wait for the third's whole publish (6
    attempts x 0.5 s)."""
    store = _Mem([OutboxEvent("p-1", silent_subject, b"x", {}),
                  OutboxEvent("p-2", silent_subject, b"x", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=0.5, max_attempts=6,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))), RelayOptions(
        batch_size=2,
        error_backoff=Backoff(base_delay_s=0.2, max_delay_s=0.2, rng=_NoJitter())))
    loop = asyncio.get_running_loop()
    try:
        assert await asyncio.wait_for(relay.relay_once(), 8) == 0  # both go beside
        firsts = [t for _, t in relay._retrying.values()]
        assert len(firsts) == 2
        await until(lambda: all(t.done() for t in firsts), timeout_s=10,
                    what="the first tries beside ended")
        await asyncio.sleep(0.3)  # their backoff (0.2 s from their end) is over
        store.events += [OutboxEvent("p-3", silent_subject, b"x", {}),
                         OutboxEvent("g-1", bus.subject, b"g", {})]
        began = loop.time()
        await asyncio.wait_for(relay.relay_once(), 8)
        took = loop.time() - began
        assert store.sent == ["g-1"] and "p-3" in relay._retrying, relay._retrying
        assert len(relay._retrying) == 2 and took < 1.8, took
    finally:
        await relay.aclose()


async def test_aclose_while_a_round_runs_leaves_no_publish_beside(
        bus: Bus, silent_subject: str, prom: CollectorRegistry) -> None:
    """aclose() called while a round waits for a first try that only times out: the
    round then handed that publish beside the rounds, after aclose() had returned, and
    it went on (up to 10 attempts x 0.5 s) with no one to end it. Now a round that
    aclose() met hands nothing beside: it cancels its tries still running (their
    events stay pending, published by a later round) and starts no retry."""
    store = _Mem([OutboxEvent("poison-1", silent_subject, b"x", {}),
                  OutboxEvent("g-1", bus.subject, b"g", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=0.5, max_attempts=10)))

    def ours() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__qualname__", "") == "OutboxRelay._retry"]

    round_ = asyncio.create_task(relay.relay_once())
    try:
        await until(lambda: len(ours()) == 1, timeout_s=5,
                    what="the round waiting for poison-1 alone")
        await relay.aclose()
        assert await asyncio.wait_for(round_, 8) == 1  # g-1 acked and marked
        left = ours()
        assert not relay._retrying and not left, (relay._retrying, left)
    finally:
        await _stop(round_)
        await relay.aclose()
    assert store.sent == ["g-1"]
    # the relay may run again: poison-1 is a first try again, beside the rounds
    assert await asyncio.wait_for(relay.relay_once(), 8) == 0
    assert list(relay._retrying) == ["poison-1"]
    await relay.aclose()


async def test_a_round_that_hands_its_first_try_beside_does_not_wait_the_poll(
        bus: Bus, silent_subject: str, prom: CollectorRegistry) -> None:
    """batch_size 1, a 5 s poll and no notify: an event that only times out is first in
    the outbox, three good ones behind it. Its round hands it beside the rounds after
    the bound (0.5 s) and has published nothing; the outbox is not drained, so the next
    round follows at once (it waited the 5 s poll when no longer a failed round)."""
    store = _Mem([OutboxEvent("poison-1", silent_subject, b"x", {})]
                 + [OutboxEvent(f"g-{i}", bus.subject, b"g", {}) for i in range(3)])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=0.5, max_attempts=10)), RelayOptions(
        batch_size=1, poll_interval_s=5.0))
    task = asyncio.create_task(relay.run())
    try:
        took = await until(lambda: len(store.sent) == 3, timeout_s=10,
                           what="the good events marked sent")
    finally:
        await _stop(task)
    assert store.sent == ["g-0", "g-1", "g-2"] and took < 3.0, took
    assert relay.failures == 0


async def test_a_failed_mark_still_holds_the_failed_publishes_beside_the_rounds(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """Two first tries go beside the rounds (the server stalled past timeout_s): one is
    acked after the stall, the other (a subject no stream captures, a core subscriber
    silent) fails. The round taking their outcome fails marking the acked one: the
    failed one is still held (counted, backing off), and the acked one, pending, is
    published again (deduped) and marked by the next round."""
    silent = f"silent{uuid.uuid4().hex[:10]}.x"

    async def ignore(msg: nats.aio.msg.Msg) -> None:
        return None

    await private_bus.nc.subscribe(silent, cb=ignore)
    await private_bus.nc.flush()
    store = _Mem([OutboxEvent("ok-1", private_bus.subject, b"g", {}),
                  OutboxEvent("bad-1", silent, b"x", {})])
    relay = OutboxRelay(store, Publisher(private_bus.js, PublishOptions(
        registry=prom, timeout_s=0.5, max_attempts=3,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))), RelayOptions(
        error_backoff=Backoff(base_delay_s=30, max_delay_s=30, rng=_NoJitter())))
    assert private_nats.proc is not None
    stop_process(private_nats.proc.pid)  # stopped before the first publish is sent
    try:
        assert await asyncio.wait_for(relay.relay_once(), 8) == 0  # both beside
        beside = [t for _, t in relay._retrying.values()]
        assert len(beside) == 2
        await asyncio.sleep(0.3)
    finally:
        os.kill(private_nats.proc.pid, signal.SIGCONT)
    try:
        await until(lambda: all(t.done() for t in beside), timeout_s=10,
                    what="the publishes beside ended")
        store.fail_marks = 1
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(relay.relay_once(), 8)
        assert relay.event_failures == 1 and "bad-1" in relay._held
        assert await asyncio.wait_for(relay.relay_once(), 8) == 1  # ok-1 again
        assert store.sent == ["ok-1"] and relay.published == 1
        assert relay.event_failures == 1
    finally:
        await relay.aclose()
