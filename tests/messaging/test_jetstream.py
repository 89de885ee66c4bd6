"""Publisher and Consumer on a real NATS JetStream: dedupe, retries across a server restart,
ack / backoff / dead letter, identity, a consumer killed mid-batch, traces and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from opentelemetry import baggage
from opentelemetry import context as otel_context
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.messaging import (
    DLQ_CONSUMER_HEADER,
    DLQ_MSG_ID_HEADER,
    DLQ_REASON_HEADER,
    DLQ_SUBJECT_HEADER,
    Consumer,
    ConsumerOptions,
    Delivery,
    MessageSigner,
    MessageVerifier,
    OutboxEvent,
    OutboxRelay,
    PoisonMessage,
    Publisher,
    PublishError,
    PublishOptions,
    RelayOptions,
    ensure_stream,
    is_dead_letter,
)
from meshkit.resilience import Backoff
from tests.messaging.conftest import (
    NATS_URL,
    Bus,
    NatsServer,
    Tracing,
    Workloads,
    nats_problem,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

FAST = Backoff(base_delay_s=0.01, max_delay_s=0.05)


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def own_nc(bus: Bus) -> AsyncIterator[Client]:
    """A connection of the code under test's own (the server may close it), reconnecting
    forever like the ecom relay's and projection's."""
    nc = await nats.connect(NATS_URL, connect_timeout=2, reconnect_time_wait=0.1,
                            max_reconnect_attempts=-1)
    yield nc
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)


async def test_shared_nats_is_reachable() -> None:
    """The shared NATS with JetStream answers (a failure here under CI=true means the
    machine's NATS at 127.0.0.1:4222 is down: start it, see README "Events")."""
    problem = await nats_problem()
    if problem is not None:
        from tests.conftest import IN_CI
        if IN_CI:
            pytest.fail(problem + " (required when CI=true)")
        pytest.skip(problem)


async def test_publish_dedupes_by_message_id(bus: Bus, prom: CollectorRegistry) -> None:
    """The same event id published twice is stored once; the repeat is 'duplicate'."""
    pub = Publisher(bus.js, PublishOptions(registry=prom, stream=bus.stream))
    first = await pub.publish(bus.subject, b"a", msg_id="e-1")
    again = await pub.publish(bus.subject, b"a", msg_id="e-1")
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 1
    assert _sample(prom, "meshkit_messaging_published_total",
                   subject=bus.subject, outcome="duplicate") == 1


async def test_ensure_stream_with_max_age_below_the_default_window(bus: Bus) -> None:
    """ensure_stream(max_age_s=60) with the default window makes the stream: the window
    defaults to min(120 s, max_age_s) as JetStream's own default (a 120 s window over a
    60 s max age is refused, error 10052); an explicit window longer than max_age_s, or
    a max_age_s <= 0, is a ConfigError before anything is sent."""
    name = f"{bus.stream}MA"
    try:
        info = await ensure_stream(bus.js, name, [f"{name.lower()}.>"], max_age_s=60)
        assert info.config.max_age == 60
        assert info.config.duplicate_window == 60
    finally:
        with contextlib.suppress(Exception):
            await bus.js.delete_stream(name)
    with pytest.raises(ConfigError, match=r"max_age_s \(60\), got 120"):
        await ensure_stream(bus.js, name, [f"{name.lower()}.>"], max_age_s=60,
                            duplicate_window_s=120)
    with pytest.raises(ConfigError, match=r"max_age_s must be in \(0, .*got 0"):
        await ensure_stream(bus.js, name, [f"{name.lower()}.>"], max_age_s=0)
    default = await ensure_stream(bus.js, bus.stream, [f"{bus.subject.split('.')[0]}.>"])
    assert default.config.duplicate_window == 120


async def test_publish_retries_across_a_nats_restart(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """A publish while the server restarts is retried until acked, within the budget.
    The server stays down past the first attempt's ``timeout_s`` (0.5 s), once the
    client saw it go: with 0.3 s, on uvloop the client saw the disconnect late and
    reconnected to the restarted server in time to have the first attempt acked (no
    retry to count)."""
    pub = Publisher(private_bus.js, PublishOptions(
        registry=prom, timeout_s=0.5, max_attempts=40,
        backoff=Backoff(base_delay_s=0.05, max_delay_s=0.2)))
    await pub.publish(private_bus.subject, b"before", msg_id="r-0")
    private_nats.kill()
    await until(lambda: not private_bus.nc.is_connected, timeout_s=10, what="disconnected")
    task = asyncio.create_task(pub.publish(private_bus.subject, b"during", msg_id="r-1"))
    await asyncio.sleep(0.8)
    await private_nats.start()  # same port, same store directory
    ack = await asyncio.wait_for(task, 20)
    assert ack.seq == 2
    assert _sample(prom, "meshkit_messaging_publish_retries_total",
                   subject=private_bus.subject) >= 1
    info = await private_bus.js.stream_info(private_bus.stream)
    assert info.state.messages == 2


def _consumer(bus: Bus, handler: Any, prom: CollectorRegistry, **kw: Any) -> Consumer:
    opts: dict[str, Any] = {"stream": bus.stream, "durable": "d1",
                            "dead_letter_subject": bus.dlq, "backoff": FAST,
                            "fetch_timeout_s": 0.2, "registry": prom}
    opts.update(kw)
    return Consumer(bus.js, handler, ConsumerOptions(**opts))


async def _dead_letters(bus: Bus) -> list[Any]:
    return await _fetch(bus, bus.stream, bus.dlq)


async def test_failures_back_off_then_dead_letter(bus: Bus, prom: CollectorRegistry) -> None:
    """A handler that keeps failing gets max_deliveries tries, then the dead-letter subject;
    a poison message goes there at once; a good one is acked once."""
    seen: dict[str, int] = {}

    async def handle(d: Delivery) -> None:
        seen[d.msg_id] = seen.get(d.msg_id, 0) + 1
        if d.data == b"fail":
            raise RuntimeError("boom")
        if d.data == b"poison":
            raise PoisonMessage("not json")

    pub = Publisher(bus.js, PublishOptions(registry=prom))
    for mid, data in (("ok", b"ok"), ("f", b"fail"), ("p", b"poison")):
        await pub.publish(bus.subject, data, msg_id=mid)
    c = _consumer(bus, handle, prom, max_deliveries=3, filter_subject=bus.subject)

    async def settled() -> bool:
        await c.run_once()
        return seen.get("f") == 3 and _sample(
            prom, "meshkit_messaging_consumed_total", subject=bus.subject, consumer="d1",
            outcome="dead_letter") == 2

    await until(settled, timeout_s=10, interval_s=0.01, what="dead letters")
    assert seen == {"ok": 1, "f": 3, "p": 1}
    dead = await _dead_letters(bus)
    reasons = sorted((m.headers or {})[DLQ_REASON_HEADER] for m in dead)
    assert reasons == ["failed 3 times: RuntimeError", "poison: not json"]
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                   consumer="d1", outcome="retry") == 2
    await c.run_once()  # nothing is redelivered after term / ack
    assert seen == {"ok": 1, "f": 3, "p": 1}


async def test_identity_checked_and_forgery_dead_lettered(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads) -> None:
    """A signed message reaches the handler with its publisher; an unsigned one is refused."""
    got: list[str | None] = []

    async def handle(d: Delivery) -> None:
        got.append(d.publisher.spiffe_id if d.publisher else None)

    signed = Publisher(bus.js, PublishOptions(registry=prom,
                                              signer=MessageSigner(*workloads.orderd)))
    await signed.publish(bus.subject, b"x", msg_id="s1")
    await Publisher(bus.js, PublishOptions(registry=prom)).publish(bus.subject, b"y",
                                                                  msg_id="u1")
    c = _consumer(bus, handle, prom, filter_subject=bus.subject,
                  verifier=MessageVerifier(workloads.ca_pem))
    await until(lambda: c.run_once(), timeout_s=5, what="a batch")  # type: ignore[arg-type,return-value]
    await until(lambda: _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                                consumer="d1", outcome="refused") == 1, timeout_s=5)
    assert got == ["spiffe://meshkit.test/svc/orderd"]
    assert _sample(prom, "meshkit_messaging_lag_seconds_count", subject=bus.subject,
                   consumer="d1") == 1


@pytest.mark.parametrize("msg_id", ["order-1 ", " order-1", "order-1\n", "ord\r\ner-1",
                                    "ord\ter-1", "order-1\u00a0", "", "   "])
async def test_publish_refuses_an_event_id_nats_would_send_changed(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads, msg_id: str) -> None:
    """An event id nats-py would change on the wire (it trims header values and turns line
    breaks into spaces), or an empty one, is refused before anything is sent, quoting it:
    sent, the stream would dedupe, and a verifying consumer check the signature, under
    another id than the one signed, and refuse a genuine event as forged. An id with a
    space inside travels as it is, signed and verified."""
    pub = Publisher(bus.js, PublishOptions(registry=prom,
                                           signer=MessageSigner(*workloads.orderd)))
    with pytest.raises(PublishError, match="msg_id") as err:
        await pub.publish(bus.subject, b"x", msg_id=msg_id)
    assert repr(msg_id) in str(err.value)
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 0
    got: list[str | None] = []

    async def handle(d: Delivery) -> None:
        got.append(d.publisher.spiffe_id if d.publisher else None)

    await pub.publish(bus.subject, b"x", msg_id="order 1")
    c = _consumer(bus, handle, prom, filter_subject=bus.subject,
                  verifier=MessageVerifier(workloads.ca_pem))
    await until(lambda: c.run_once(), timeout_s=5, what="a batch")  # type: ignore[arg-type,return-value]
    assert got == ["spiffe://meshkit.test/svc/orderd"]


async def test_dead_letter_keeps_a_verifiable_publisher_identity(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads) -> None:
    """A dead letter of a signed event carries the original subject and event id
    (Meshkit-Original-Subject / -Msg-Id), which the signature binds: a dead-letter
    processor with a verifier gets it with its original publisher. A dead letter whose
    original subject was changed is refused, and term'ed rather than dead-lettered again.
    (A processor reads dead letters with ``dead_letters=True``: see
    tests/messaging/test_hunt37_a8_dead_letter_replay.py.)"""
    signed = Publisher(bus.js, PublishOptions(registry=prom,
                                              signer=MessageSigner(*workloads.orderd)))
    await signed.publish(bus.subject, b"x", msg_id="s-1")
    verifier = MessageVerifier(workloads.ca_pem)
    first = _consumer(bus, _poison, prom, durable="main", filter_subject=bus.subject,
                      verifier=verifier)

    async def one(c: Consumer) -> bool:
        return await c.run_once() > 0

    await until(lambda: one(first), timeout_s=5, what="dead letter")
    [dead] = await _fetch(bus, bus.stream, bus.dlq)
    headers = dict(dead.headers or {})
    assert (headers[DLQ_SUBJECT_HEADER], headers[DLQ_MSG_ID_HEADER]) == (bus.subject, "s-1")
    moved = {k: v for k, v in headers.items() if k != "Nats-Msg-Id"}
    moved[DLQ_SUBJECT_HEADER] = bus.subject + "x"  # claims another original subject
    await bus.js.publish(bus.dlq, b"x", headers={**moved, "Nats-Msg-Id": "moved"})
    got: list[tuple[str | None, str, str]] = []

    async def dlq_handler(d: Delivery) -> None:
        got.append((d.publisher.spiffe_id if d.publisher else None, d.original_subject,
                    d.original_msg_id))

    second = _consumer(bus, dlq_handler, prom, durable="dlqproc", filter_subject=bus.dlq,
                       dead_letter_subject=f"{bus.dlq}2", verifier=verifier,
                       dead_letters=True)
    await _drive(second, 0.5)
    assert got == [("spiffe://meshkit.test/svc/orderd", bus.subject, "s-1")]
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.dlq,
                   consumer="dlqproc", outcome="refused") == 1
    assert await _fetch(bus, bus.stream, f"{bus.dlq}2") == []


@pytest.mark.parametrize("layout", ["a3d59d4", "c54979d"])
async def test_a_dead_letter_an_older_consumer_wrote_is_still_a_dead_letter(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads, layout: str) -> None:
    """Upgrading the consumers of a stream leaves the dead letters older consumers wrote
    stored in it, in their header layouts: up to a3d59d4 the original headers plus
    Meshkit-Dead-Letter-Reason, Meshkit-Original-Subject, Meshkit-Deliveries and
    ``Nats-Msg-Id: dlq-<event id>``; from c54979d also Meshkit-Dead-Letter-Consumer and
    ``Nats-Msg-Id: dlq-<stream>.<durable>-<event id>``; neither carries
    Meshkit-Original-Msg-Id. A new dead-letter processor with a verifier took the first
    for an ordinary message (a dead letter was known by Meshkit-Dead-Letter-Consumer
    alone), verified it against the dead-letter subject, refused it ("message signature
    does not match") and dead-lettered it again; the second it verified against the
    original subject with an empty event id, and refused it too. Both are dead letters:
    the handler gets them with the original subject and event id (taken from Nats-Msg-Id)
    and the publisher verified against those, and neither is dead-lettered again."""
    signed = Publisher(bus.js, PublishOptions(registry=prom,
                                              signer=MessageSigner(*workloads.orderd)))
    ack = await signed.publish(bus.subject, b"x", msg_id="s-1")
    original = await bus.js.get_msg(bus.stream, ack.seq)
    old = {k: v for k, v in (original.headers or {}).items() if k != "Nats-Msg-Id"}
    old.update({DLQ_REASON_HEADER: "poison: the old consumer refuses it",
                DLQ_SUBJECT_HEADER: bus.subject, "Meshkit-Deliveries": "1",
                "Nats-Msg-Id": "dlq-s-1"})
    if layout == "c54979d":
        old.update({DLQ_CONSUMER_HEADER: f"{bus.stream}/oldmain",
                    "Nats-Msg-Id": f"dlq-{bus.stream}.oldmain-s-1"})
    await bus.js.publish(bus.dlq, b"x", headers=old)
    got: list[tuple[str | None, str, str, bool]] = []

    async def dlq_handler(d: Delivery) -> None:
        got.append((d.publisher.spiffe_id if d.publisher else None, d.original_subject,
                    d.original_msg_id, is_dead_letter(d.headers)))

    processor = _consumer(bus, dlq_handler, prom, durable="dlqproc", filter_subject=bus.dlq,
                          dead_letter_subject=f"{bus.dlq}2",
                          verifier=MessageVerifier(workloads.ca_pem), dead_letters=True)
    await until(lambda: processor.run_once(), timeout_s=5,  # type: ignore[arg-type,return-value]
                what="the old dead letter handled")
    assert got == [("spiffe://meshkit.test/svc/orderd", bus.subject, "s-1", True)]
    assert await _fetch(bus, bus.stream, f"{bus.dlq}2") == []

    async def refuse(d: Delivery) -> None:
        raise PoisonMessage("still bad")

    again = _consumer(bus, refuse, prom, durable="dlqproc2", filter_subject=bus.dlq,
                      dead_letter_subject=f"{bus.dlq}2")
    await until(lambda: again.run_once(), timeout_s=5,  # type: ignore[arg-type,return-value]
                what="the old dead letter refused")
    assert await _fetch(bus, bus.stream, f"{bus.dlq}2") == []  # term'ed, stored where it is
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.dlq,
                   consumer="dlqproc2", outcome="terminated") == 1


async def test_an_unverified_publishers_subjects_are_recorded_as_the_filter_subject(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads, tracing: Tracing) -> None:
    """With a verifier, a message whose publisher is not verified is counted (and its
    CONSUMER span named) under the consumer's filter subject, the destination's template:
    an unsigned sender making subjects up under a wildcard filter adds no series; a
    verified publisher's message keeps its own subject."""
    n = 30
    for i in range(n):  # an unsigned sender, making subjects up
        await bus.js.publish(f"{bus.subject}.{i}", b"x", headers={"Nats-Msg-Id": f"m{i}"})
    signed = Publisher(bus.js, PublishOptions(registry=prom,
                                              signer=MessageSigner(*workloads.orderd)))
    await signed.publish(f"{bus.subject}.placed", b"s", msg_id="s1")
    handled: list[str] = []

    async def handle(d: Delivery) -> None:
        handled.append(d.subject)

    template = f"{bus.subject}.>"
    c = _consumer(bus, handle, prom, filter_subject=template, tracer_provider=tracing.provider,
                  verifier=MessageVerifier(workloads.ca_pem))
    done = 0
    async with asyncio.timeout(9):
        while done < n + 1:
            done += await c.run_once()
    assert handled == [f"{bus.subject}.placed"]
    labels = {(s.labels["subject"], s.labels["outcome"]) for fam in prom.collect()
              for s in fam.samples if s.name == "meshkit_messaging_consumed_total"}
    assert labels == {(template, "refused"), (f"{bus.subject}.placed", "ack")}
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=template, consumer="d1",
                   outcome="refused") == n
    assert _sample(prom, "meshkit_messaging_handling_seconds_count", subject=template,
                   consumer="d1") == n
    names = [s.name for s in tracing.spans() if s.name.startswith("process ")]
    assert set(names) == {f"process {bus.subject}.placed", f"process {template}"}
    assert names.count(f"process {template}") == n
    proc = next(s for s in tracing.spans() if s.name == f"process {template}")
    assert proc.attributes["messaging.destination.template"] == template
    assert proc.attributes["messaging.destination.name"].startswith(f"{bus.subject}.")


async def test_subject_labels_are_bounded_for_a_subject_per_entity(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A subject per entity (``orders.<order id>``) added series for ever: the publish
    metrics (published_total, the publish_seconds histogram, 22 samples a subject) and
    the consume metrics were labelled with every subject as given, 1,100 subject labels
    and 24,200 publish samples after 1,100 subjects, on /metrics and in memory. A
    registry now labels at most MAX_SUBJECTS (1,000) subjects with their own names,
    publishes and deliveries together, then ``other``; the first ones keep theirs."""
    from meshkit.messaging._telemetry import MAX_SUBJECTS, OTHER_SUBJECT

    pub = Publisher(bus.js, PublishOptions(registry=prom, tracing=False, access_log=False))
    n, extra = MAX_SUBJECTS + 100, 100
    for start in range(0, n, 100):
        await asyncio.wait_for(asyncio.gather(*(
            pub.publish(f"{bus.subject}.{i}", b"x", msg_id=f"c{i}")
            for i in range(start, start + 100))), 20)

    def labels(name: str) -> set[str]:
        return {s.labels["subject"] for fam in prom.collect() for s in fam.samples
                if s.name == name}

    published = labels("meshkit_messaging_published_total")
    assert len(published) == MAX_SUBJECTS + 1, len(published)
    assert _sample(prom, "meshkit_messaging_published_total", subject=f"{bus.subject}.0",
                   outcome="ok") == 1
    assert _sample(prom, "meshkit_messaging_published_total", subject=OTHER_SUBJECT,
                   outcome="ok") == extra
    assert _sample(prom, "meshkit_messaging_publish_seconds_count",
                   subject=OTHER_SUBJECT) == extra
    await pub.publish(f"{bus.subject}.0", b"x", msg_id="c0-again")  # a known subject
    assert _sample(prom, "meshkit_messaging_published_total", subject=f"{bus.subject}.0",
                   outcome="ok") == 2

    async def handle(d: Delivery) -> None:
        pass

    c = _consumer(bus, handle, prom, filter_subject=f"{bus.subject}.>", batch_size=256)
    done = 0
    async with asyncio.timeout(30):
        while done < n + 1:
            done += await c.run_once()
    consumed = labels("meshkit_messaging_consumed_total")
    assert consumed <= published and len(consumed) == MAX_SUBJECTS + 1, len(consumed)
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=OTHER_SUBJECT,
                   consumer="d1", outcome="ack") == extra


async def test_consumer_killed_mid_batch_redelivers_unacked(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A consumer that dies mid-batch (connection gone, no acks) leaves the rest to be
    redelivered after ack_wait; a handler idempotent by event id counts each once."""
    for i in range(10):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"k{i}"})
    applied: set[str] = set()
    deliveries = 0
    block = asyncio.Event()

    async def dying(d: Delivery) -> None:
        nonlocal deliveries
        deliveries += 1
        applied.add(d.msg_id)
        if len(applied) == 4:
            await block.wait()  # "killed" here: never returns, never acks

    nc2 = await nats.connect(bus.url)
    c1 = Consumer(nc2.jetstream(), dying, ConsumerOptions(
        stream=bus.stream, durable="d1", ack_wait_s=0.5, backoff=FAST,
        fetch_timeout_s=0.2, registry=prom, filter_subject=bus.subject))
    task = asyncio.create_task(c1.run_once())
    await until(lambda: len(applied) == 4, timeout_s=5)
    task.cancel()
    await nc2.close()

    async def idem(d: Delivery) -> None:
        nonlocal deliveries
        deliveries += 1
        applied.add(d.msg_id)

    c2 = _consumer(bus, idem, prom, ack_wait_s=0.5, filter_subject=bus.subject)
    t0 = time.monotonic()

    async def all_acked() -> bool:
        await c2.run_once()
        info = await bus.js.consumer_info(bus.stream, "d1")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await until(all_acked, timeout_s=15, what="every message acked")
    assert applied == {f"k{i}" for i in range(10)}
    assert deliveries >= 11  # the 4th message came twice (ack_wait, 0.5 s, after the kill)
    assert _sample(prom, "meshkit_messaging_redelivered_total", subject=bus.subject,
                   consumer="d1") >= 1
    assert time.monotonic() - t0 < 10


async def test_messages_waiting_in_a_fetched_batch_are_not_redelivered_to_a_peer(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A batch's later messages outran ack_wait while they waited their turn: JetStream
    starts every message's ack wait when it delivers the batch, and the consumer sent no
    in-progress ack, so message k was redelivered once the k-1 handlers before it took
    ack_wait together, though each took a fraction of it (defaults: 64 messages, 30 s, a
    0.5 s handler). Another process of the durable then handled it while this one was
    about to: measured with 6 messages, ack_wait 1 s, 0.3 s each: e3..e5 handled by
    both, their delivery counts rising (with max_deliveries=1 they were dead-lettered
    "not acked after 1 deliveries" while handled and acked). Now the waiting messages get
    an in-progress ack every ack_wait/2, and one at their turn: no message is handled
    twice or redelivered."""
    pub = Publisher(bus.js, PublishOptions(registry=prom))
    for i in range(6):
        await pub.publish(bus.subject, b"x", msg_id=f"e{i}")
    handled: list[tuple[str, str, float, float]] = []  # (consumer, msg_id, start, end)
    first_started = asyncio.Event()

    def handler(name: str) -> Any:
        async def handle(d: Delivery) -> None:
            first_started.set()
            t0 = time.monotonic()
            await asyncio.sleep(0.5)
            handled.append((name, d.msg_id, t0, time.monotonic()))
        return handle

    def consumer(name: str) -> Consumer:  # 6 x 0.5 s: the batch takes 1.5 x ack_wait
        return _consumer(bus, handler(name), prom, durable="shared", ack_wait_s=2.0,
                         batch_size=6, fetch_timeout_s=0.3, filter_subject=bus.subject)

    a, b = consumer("a"), consumer("b")
    task_a = asyncio.create_task(a.run_once())  # fetches all 6 at once
    await asyncio.wait_for(first_started.wait(), 5)
    await b.start()
    task_b = asyncio.create_task(b.run())  # a peer polling the durable meanwhile
    try:
        assert await asyncio.wait_for(task_a, 15) == 6

        async def all_acked() -> bool:
            info = await bus.js.consumer_info(bus.stream, "shared")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await until(all_acked, timeout_s=10, what="every message acked")
        await asyncio.sleep(0.5)  # b would be handling a redelivered one by now
    finally:
        task_b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_b
    assert max(end - start for _, _, start, end in handled) < 1.6  # each within ack_wait
    ids = [m for _, m, _, _ in handled]
    assert sorted(ids) == [f"e{i}" for i in range(6)], handled  # each once, all by a
    assert {c for c, _, _, _ in handled} == {"a"}
    info = await bus.js.consumer_info(bus.stream, "shared")
    assert info.num_redelivered == 0
    assert _sample(prom, "meshkit_messaging_redelivered_total", subject=bus.subject,
                   consumer="shared") == 0


async def test_a_stuck_handler_does_not_hold_the_rest_of_its_batch(
        bus: Bus, prom: CollectorRegistry) -> None:
    """The waiting messages of a batch are kept in progress only while the handler
    whose turn it is runs within ack_wait: a handler that never returns has its message
    redelivered after ack_wait, and the messages behind it within twice that, so a peer
    of the durable handles the whole batch."""
    for i in range(4):
        await bus.js.publish(bus.subject, b"x", headers={"Nats-Msg-Id": f"s{i}"})
    stuck = asyncio.Event()
    by_b: set[str] = set()

    async def never_returns(d: Delivery) -> None:
        stuck.set()
        await asyncio.Event().wait()

    async def handle(d: Delivery) -> None:
        by_b.add(d.msg_id)

    a = _consumer(bus, never_returns, prom, durable="shared", ack_wait_s=0.5,
                  batch_size=4, filter_subject=bus.subject)
    b = _consumer(bus, handle, prom, durable="shared", ack_wait_s=0.5,
                  filter_subject=bus.subject)
    task_a = asyncio.create_task(a.run_once())
    try:
        await asyncio.wait_for(stuck.wait(), 5)
        await b.start()
        task_b = asyncio.create_task(b.run())
        try:
            await until(lambda: len(by_b) == 4, timeout_s=10,
                        what="the stuck batch handled by the peer")
        finally:
            task_b.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task_b
    finally:
        task_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_a


async def test_in_progress_acks_only_for_messages_whose_turn_comes_late(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A batch handled fast sends no in-progress ack (``+WPI``) at all; in a batch of
    slow handlers every message after the first gets one before it is acked (its turn
    came more than ack_wait/10 after the fetch), the first none."""
    from nats.aio.msg import Msg

    progress: dict[int, int] = {}
    acks: list[int] = []

    async def spy(m: Msg) -> None:
        seq = Msg.Metadata._from_reply(m.subject).sequence.stream
        if m.data == b"+WPI":
            progress[seq] = progress.get(seq, 0) + 1
        elif m.data in (b"", b"+ACK"):
            acks.append(seq)

    sub = await bus.nc.subscribe(f"$JS.ACK.{bus.stream}.>", cb=spy)
    try:
        async def fast(d: Delivery) -> None:
            pass

        async def slow(d: Delivery) -> None:
            await asyncio.sleep(0.3)

        seqs: list[int] = []
        for i in range(12):
            seqs.append((await bus.js.publish(bus.subject, b"x",
                                              headers={"Nats-Msg-Id": f"p{i}"})).seq)
        for handler in (fast, slow):
            c = _consumer(bus, handler, prom, ack_wait_s=2.0, batch_size=6,
                          filter_subject=bus.subject)
            assert await asyncio.wait_for(c.run_once(), 10) == 6
        await until(lambda: len(acks) == 12, timeout_s=5, what="12 acks seen")
    finally:
        await sub.unsubscribe()
    assert all(seq not in progress for seq in seqs[:7]), progress
    assert all(progress.get(seq, 0) >= 1 for seq in seqs[7:]), progress


async def test_one_trace_from_publish_to_consume(
        bus: Bus, prom: CollectorRegistry, tracing: Tracing) -> None:
    """The CONSUMER span is a child of the PRODUCER span, itself a child of the caller's."""
    tracer = tracing.provider.get_tracer("test")
    pub = Publisher(bus.js, PublishOptions(registry=prom, tracer_provider=tracing.provider))
    with tracer.start_as_current_span("PlaceOrder"):
        await pub.publish(bus.subject, b"x", msg_id="t1")
    done = asyncio.Event()

    async def handle(d: Delivery) -> None:
        done.set()

    c = _consumer(bus, handle, prom, tracer_provider=tracing.provider,
                  filter_subject=bus.subject)
    await until(lambda: c.run_once(), timeout_s=5)  # type: ignore[arg-type,return-value]
    spans = {s.name: s for s in tracing.spans()}
    root, send, proc = spans["PlaceOrder"], spans[f"send {bus.subject}"], \
        spans[f"process {bus.subject}"]
    assert send.parent.span_id == root.context.span_id
    assert proc.parent.span_id == send.context.span_id
    assert proc.context.trace_id == root.context.trace_id


async def test_handler_sees_the_baggage_carried_by_the_message(
        bus: Bus, prom: CollectorRegistry) -> None:
    """Baggage current where the event was published is the handler's current baggage
    (not only a header), with tracing on and off."""
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        await Publisher(bus.js, PublishOptions(registry=prom)).publish(
            bus.subject, b"x", msg_id="b-1")
    finally:
        otel_context.detach(token)
    seen: list[tuple[str | None, object]] = []

    async def handle(d: Delivery) -> None:
        seen.append((d.headers.get("baggage"), baggage.get_baggage("tenant")))

    for durable, tracing_on in (("traced", True), ("untraced", False)):
        c = _consumer(bus, handle, prom, durable=durable, filter_subject=bus.subject,
                      tracing=tracing_on)

        async def consumed(c: Consumer = c) -> bool:
            return await c.run_once() > 0

        await until(consumed, timeout_s=5, what=f"message consumed by {durable}")
    assert seen == [("tenant=acme", "acme")] * 2
    assert baggage.get_baggage("tenant") is None  # detached after the handler


async def _poison(d: Delivery) -> None:
    raise PoisonMessage("bad body")


async def _fetch(bus: Bus, stream: str, subject: str) -> list[Any]:
    """The messages (up to 10) ``stream`` holds on ``subject`` now. A fresh pull consumer
    fetches as many as the stream's state counts there: nats-py's ``fetch(10,
    timeout=0.5)`` of fewer than 10 waited out its 0.5 s (a lingering pull), and an empty
    answer always did."""
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    stored = min((info.state.subjects or {}).get(subject, 0), 10)
    if not stored:
        return []
    sub = await bus.js.pull_subscribe(subject, stream=stream)
    try:
        return list(await sub.fetch(stored, timeout=5))
    finally:
        await sub.unsubscribe()


async def _drive(c: Consumer, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await c.run_once()


async def test_dead_letter_drops_jetstream_control_headers(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A message published with Nats-Expected-Stream (PublishOptions.stream) is
    dead-lettered into a stream of its own: the dead letter does not copy the original's
    JetStream control headers, which would make JetStream refuse it."""
    tag = uuid.uuid4().hex[:8]
    dlq_stream, dlq_subject = f"DLQ{tag}", f"dlq{tag}.orders"
    await ensure_stream(bus.js, dlq_stream, [f"dlq{tag}.>"])
    try:
        pub = Publisher(bus.js, PublishOptions(registry=prom, stream=bus.stream))
        await pub.publish(bus.subject, b"poison", msg_id="p-1",
                          headers={"Nats-TTL": "1h", "Ecom-Schema": "2"})
        c = _consumer(bus, _poison, prom, filter_subject=bus.subject,
                      dead_letter_subject=dlq_subject, max_deliveries=2)

        async def dead_lettered() -> bool:
            await c.run_once()
            return _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                           consumer="d1", outcome="dead_letter") == 1

        await until(dead_lettered, timeout_s=5, interval_s=0.01, what="dead letter")
        dead = await _fetch(bus, dlq_stream, dlq_subject)
        assert [m.data for m in dead] == [b"poison"]
        headers = dead[0].headers or {}
        assert not [k for k in headers if k.startswith("Nats-") and k != "Nats-Msg-Id"]
        assert headers["Ecom-Schema"] == "2"
    finally:
        await bus.js.delete_stream(dlq_stream)


async def test_two_durables_dead_letter_one_event_into_a_shared_dlq_stream(
        bus: Bus, prom: CollectorRegistry) -> None:
    """Two durables dead-lettering the same event into one DLQ stream both keep their
    dead letter: the dead letters' Nats-Msg-Id names the consumer, so JetStream does not
    drop the second as a duplicate."""
    dlq_stream = f"DLQ{uuid.uuid4().hex[:8]}"
    await ensure_stream(bus.js, dlq_stream, [f"dlq.{bus.stream}.>"])
    try:
        await Publisher(bus.js, PublishOptions(registry=prom)).publish(
            bus.subject, b"poison", msg_id="e-1")
        for durable in ("summary", "billing"):
            c = _consumer(bus, _poison, prom, durable=durable, filter_subject=bus.subject,
                          dead_letter_subject=None)
            assert await c.run_once() == 1
            assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                           consumer=durable, outcome="dead_letter") == 1
        a = await _fetch(bus, dlq_stream, f"dlq.{bus.stream}.summary")
        b = await _fetch(bus, dlq_stream, f"dlq.{bus.stream}.billing")
        assert (len(a), len(b)) == (1, 1)
    finally:
        await bus.js.delete_stream(dlq_stream)


async def test_dead_letter_id_taken_by_another_message_is_not_success(
        bus: Bus, prom: CollectorRegistry) -> None:
    """When the dead-letter stream already holds another message under the dead letter's
    Nats-Msg-Id, the duplicate ack is not taken for success: the message is nak'ed (kept),
    not term'ed."""
    await Publisher(bus.js, PublishOptions(registry=prom)).publish(
        bus.subject, b"poison", msg_id="e-1")
    await bus.js.publish(bus.dlq, b"someone else's",
                         headers={"Nats-Msg-Id": f"dlq-{bus.stream}.d1-e-1"})
    c = _consumer(bus, _poison, prom, filter_subject=bus.subject, max_deliveries=1,
                  ack_wait_s=5.0)
    assert await c.run_once() == 1
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                   consumer="d1", outcome="retry") == 1
    info = await bus.js.consumer_info(bus.stream, "d1")
    assert info.num_ack_pending + info.num_pending == 1


async def test_dead_letter_too_large_with_its_headers_is_naked_and_consumption_goes_on(
        bus: Bus, own_nc: Client, prom: CollectorRegistry) -> None:
    """A message that fitted the server's max_payload when published, but not with the
    dead-letter headers added, is not sent to the dead letters (the server would close
    the connection for good, "Maximum Payload Violation", and the consumer stop
    consuming): it is nak'ed, kept, and the next message is consumed."""
    payload = b"p" * (own_nc.max_payload - 200)  # fits with its own few headers
    ack = await bus.js.publish(bus.subject, payload, headers={"Nats-Msg-Id": "poison-1"})
    assert not ack.duplicate
    seen: list[str] = []

    async def handle(d: Delivery) -> None:
        seen.append(d.msg_id)
        if d.msg_id == "poison-1":
            raise PoisonMessage("undecodable")

    consumer = Consumer(own_nc.jetstream(), handle, ConsumerOptions(
        stream=bus.stream, durable="d1", filter_subject=bus.subject,
        dead_letter_subject=bus.dlq, backoff=Backoff(base_delay_s=0.05, max_delay_s=0.2),
        batch_size=1, fetch_timeout_s=0.5, registry=prom))
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: "poison-1" in seen, timeout_s=8, what="poison message handled")
        await bus.js.publish(bus.subject, b"ok", headers={"Nats-Msg-Id": "good-1"})
        await until(lambda: "good-1" in seen, timeout_s=8,
                    what=f"next message consumed (connection closed={own_nc.is_closed})")
        # past max_deliveries (5) it is nak'ed with ack_wait_s' delay (30 s), no longer
        # the backoff's 0.05-0.2 s: read below, it is not back in the redelivery queue
        await until(lambda: _sample(prom, "meshkit_messaging_consumed_total",
                                    subject=bus.subject, consumer="d1",
                                    outcome="retry") >= 6,
                    timeout_s=8, what="the poison message past max_deliveries")
        await asyncio.sleep(0.1)  # its last nak sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not own_nc.is_closed
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                   consumer="d1", outcome="retry") >= 1
    assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                   consumer="d1", outcome="dead_letter") == 0
    assert await _fetch(bus, bus.stream, bus.dlq) == []
    info = await bus.js.consumer_info(bus.stream, "d1")
    assert info.num_ack_pending + info.num_pending == 1  # the poison message, kept


async def test_consumer_recovers_when_its_stream_is_recreated(
        bus: Bus, prom: CollectorRegistry) -> None:
    """Consumer.run re-creates its durable when the stream (and so the durable) was
    deleted and made again, and consumes what is published to the new stream."""
    got: list[bytes] = []

    async def handle(d: Delivery) -> None:
        got.append(d.data)

    c = _consumer(bus, handle, prom, filter_subject=bus.subject)
    task = asyncio.create_task(c.run())
    try:
        await bus.js.publish(bus.subject, b"one", headers={"Nats-Msg-Id": "m1"})
        await until(lambda: got == [b"one"], timeout_s=5, what="first message")
        await bus.js.delete_stream(bus.stream)
        await ensure_stream(bus.js, bus.stream, [bus.subject.split(".")[0] + ".>"],
                            duplicate_window_s=60)
        await bus.js.publish(bus.subject, b"two", headers={"Nats-Msg-Id": "m2"})
        await until(lambda: got == [b"one", b"two"], timeout_s=10,
                    what="message published to the recreated stream consumed")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_whole_stream_consumer_skips_its_own_dead_letters(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A consumer of the whole stream that also captures its dead-letter subject acks its
    own dead letter without running the handler: one poison message, one dead letter."""
    calls: list[str] = []

    async def poison(d: Delivery) -> None:
        calls.append(d.subject)
        raise PoisonMessage("bad body")

    await Publisher(bus.js, PublishOptions(registry=prom)).publish(
        bus.subject, b"poison", msg_id="x-1")
    c = _consumer(bus, poison, prom, durable="all", fetch_timeout_s=0.1)

    async def skipped() -> bool:
        await c.run_once()
        return _sample(prom, "meshkit_messaging_consumed_total", subject=bus.dlq,
                       consumer="all", outcome="skipped") == 1

    await until(skipped, timeout_s=5, interval_s=0.01, what="own dead letter skipped")
    await _drive(c, 0.5)
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 2
    assert calls == [bus.subject]
    state = await bus.js.consumer_info(bus.stream, "all")
    assert state.num_ack_pending == 0 and state.num_pending == 0


async def test_two_whole_stream_consumers_do_not_dead_letter_each_others_dead_letters(
        bus: Bus, prom: CollectorRegistry) -> None:
    """Two durables on the whole stream, each seeing the other's dead letters: one poison
    message gives one dead letter per consumer and stops there. Each runs its handler on
    the other's dead letter (dead-letter processors must see them) and, when that fails
    for good, terms it ('terminated') instead of dead-lettering it again."""
    calls: list[tuple[str, str]] = []

    def poison(name: str) -> Any:
        async def handle(d: Delivery) -> None:
            calls.append((name, d.subject))
            raise PoisonMessage("bad body")
        return handle

    tag = bus.subject.split(".")[0]
    await Publisher(bus.js, PublishOptions(registry=prom)).publish(
        bus.subject, b"poison", msg_id="p-1")
    a = _consumer(bus, poison("a"), prom, durable="a", dead_letter_subject=f"{tag}.dlqa",
                  fetch_timeout_s=0.1)
    b = _consumer(bus, poison("b"), prom, durable="b", dead_letter_subject=f"{tag}.dlqb",
                  fetch_timeout_s=0.1)
    def terminated(durable: str, other: str) -> float:
        return _sample(prom, "meshkit_messaging_consumed_total", subject=f"{tag}.{other}",
                       consumer=durable, outcome="terminated")

    async def settled() -> bool:
        await asyncio.gather(a.run_once(), b.run_once())
        return terminated("a", "dlqb") >= 1 and terminated("b", "dlqa") >= 1

    await until(settled, timeout_s=10, interval_s=0.01, what="each other's dead letter termed")
    # then a few more rounds each (0.1 s fetches): nothing more is dead-lettered or handled
    await asyncio.gather(_drive(a, 0.4), _drive(b, 0.4))
    info = await bus.js.stream_info(bus.stream)
    assert info.state.messages == 3  # the poison message and one dead letter each
    assert sorted(calls) == sorted([("a", bus.subject), ("a", f"{tag}.dlqb"),
                                    ("b", bus.subject), ("b", f"{tag}.dlqa")])
    for durable, other in (("a", "dlqb"), ("b", "dlqa")):
        assert _sample(prom, "meshkit_messaging_consumed_total", subject=f"{tag}.{other}",
                       consumer=durable, outcome="terminated") == 1
        state = await bus.js.consumer_info(bus.stream, durable)
        assert state.num_ack_pending == 0 and state.num_pending == 0


async def test_handler_raising_cancelled_error_is_a_failure(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A handler raising CancelledError that nobody asked of the consumer (an awaited
    future cancelled elsewhere) has its message redelivered; Consumer.run keeps going and
    still ends when it is cancelled itself."""
    calls: list[bytes] = []

    async def handle(d: Delivery) -> None:
        calls.append(d.data)
        if d.data == b"a" and d.delivery == 1:
            other = asyncio.get_running_loop().create_future()
            other.cancel()
            await other  # a dependency was cancelled, not the consumer

    await bus.js.publish(bus.subject, b"a", headers={"Nats-Msg-Id": "c-1"})
    await bus.js.publish(bus.subject, b"b", headers={"Nats-Msg-Id": "c-2"})
    c = _consumer(bus, handle, prom, filter_subject=bus.subject, fetch_timeout_s=0.1)
    task = asyncio.create_task(c.run())
    try:
        await until(lambda: (calls.count(b"a") == 2 and b"b" in calls) or task.done(),
                    timeout_s=5, what="a redelivered, b handled")
        assert not task.done(), "Consumer.run ended after a handler's CancelledError"
        assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                       consumer="d1", outcome="retry") == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


class _MemOutbox:
    """An in-memory OutboxStore."""

    def __init__(self, events: list[OutboxEvent]) -> None:
        self.events = list(events)
        self.sent: list[str] = []

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return [e for e in self.events if e.event_id not in self.sent][:limit]

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        self.sent.extend(i for i in event_ids if i not in self.sent)


async def test_relay_publishes_the_headers_stored_with_the_event(
        bus: Bus, prom: CollectorRegistry) -> None:
    """The relay publishes an outbox event's stored headers (e.g. Content-Type) with it."""
    store = _MemOutbox([OutboxEvent("h-1", bus.subject, b"{}",
                                    {"Content-Type": "application/json",
                                     "Ecom-Schema": "2"})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)))
    assert await relay.relay_once() == 1
    msgs = await _fetch(bus, bus.stream, bus.subject)
    assert len(msgs) == 1
    headers = msgs[0].headers or {}
    assert (headers.get("Content-Type"), headers.get("Ecom-Schema"),
            headers.get("Nats-Msg-Id")) == ("application/json", "2", "h-1")


async def test_one_unpublishable_outbox_event_does_not_delay_the_others(
        bus: Bus, prom: CollectorRegistry) -> None:
    """An event whose subject is in no stream backs off alone: the events after it go out
    at the relay's normal pace (poll_interval_s, cut short by notify()), not at the
    error-backoff pace of a failed round; it stays pending, retried now and then."""
    store = _MemOutbox([OutboxEvent("bad", f"nostream{bus.stream}.x", b"x", {})])
    sent_at: dict[str, float] = {}
    mark = store.mark_sent

    async def mark_sent(event_ids: Sequence[str]) -> None:
        for i in event_ids:
            sent_at.setdefault(i, time.monotonic())
        await mark(event_ids)

    store.mark_sent = mark_sent  # type: ignore[method-assign]
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)))
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(2.0)  # the bad event has failed a few times
        latencies = []
        for i in range(5):
            eid = f"good-{i}"
            store.events.append(OutboxEvent(eid, bus.subject, b"g", {}))
            t0 = time.monotonic()
            relay.notify()
            await until(lambda eid=eid: eid in sent_at, timeout_s=8,  # type: ignore[misc]
                        interval_s=0.01, what=f"{eid} sent")
            latencies.append(sent_at[eid] - t0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # at the error-backoff pace (100 ms doubling to 5 s, full jitter) the median would be
    # about a second; one round slowed by a loaded machine must not fail the test
    assert statistics.median(latencies) < 0.5 and max(latencies) < 2.0, latencies
    assert "bad" not in store.sent and relay.event_failures >= 2
    assert relay.published == 5


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


async def test_relay_once_marks_the_good_events_of_a_batch_with_a_bad_one(
        bus: Bus, prom: CollectorRegistry) -> None:
    """relay_once publishes and marks the good events of a batch holding an unpublishable
    one without raising, then leaves the bad one out while it backs off; a batch whose
    every event fails raises PublishError (a failed round: NATS down, most likely)."""
    bad = OutboxEvent("bad", f"nostream{bus.stream}.x", b"x", {})
    store = _MemOutbox([bad, OutboxEvent("g-1", bus.subject, b"g", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)),
                        RelayOptions(error_backoff=Backoff(base_delay_s=30, max_delay_s=30,
                                                           rng=_NoJitter())))
    assert await relay.relay_once() == 1
    assert store.sent == ["g-1"] and relay.event_failures == 1
    store.events.append(OutboxEvent("g-2", bus.subject, b"g", {}))
    assert await relay.relay_once() == 1  # the bad one waits its 30 s
    assert store.sent == ["g-1", "g-2"] and relay.event_failures == 1
    alone = OutboxRelay(_MemOutbox([bad]), Publisher(bus.js, PublishOptions(registry=prom)))
    with pytest.raises(PublishError, match="all 1 events"):
        await alone.relay_once()


async def test_event_too_large_with_its_headers_is_refused_and_backs_off_alone(
        bus: Bus, own_nc: Client, workloads: Workloads, prom: CollectorRegistry) -> None:
    """An event whose payload fits max_payload but not with the headers the publisher
    adds (identity, trace context, Nats-Msg-Id) is refused with PublishError before it
    is sent: sent, the server would close the relay's connection for good ("Maximum
    Payload Violation"). It backs off alone; the next event goes out."""
    big = OutboxEvent("big-1", bus.subject, b"x" * (own_nc.max_payload - 300), {})
    store = _MemOutbox([big])
    publisher = Publisher(own_nc.jetstream(), PublishOptions(
        registry=prom, signer=MessageSigner(*workloads.orderd), max_attempts=1))
    relay = OutboxRelay(store, publisher, RelayOptions(
        error_backoff=Backoff(base_delay_s=30, max_delay_s=30, rng=_NoJitter())))
    with pytest.raises(PublishError) as err:
        await asyncio.wait_for(relay.relay_once(), 8)
    cause = err.value.__cause__
    assert isinstance(cause, PublishError) and "max_payload" in str(cause)
    assert isinstance(cause.__cause__, nats.errors.MaxPayloadError)
    store.events.append(OutboxEvent("small-1", bus.subject, b"{}", {}))
    assert await asyncio.wait_for(relay.relay_once(), 8) == 1
    assert store.sent == ["small-1"] and not own_nc.is_closed
    assert _sample(prom, "meshkit_messaging_published_total", subject=bus.subject,
                   outcome="error") == 1


async def test_good_event_behind_more_failing_events_than_batch_size_is_published(
        bus: Bus, prom: CollectorRegistry) -> None:
    """Twice batch_size unpublishable events at the head of the outbox do not starve the
    good event behind them: every failing event is remembered while it backs off and
    the read reaches past them (the relay used to remember batch_size of them, so the
    forgotten ones filled every other round and the good event was never read)."""
    bad = [OutboxEvent(f"bad-{i}", f"nostream{bus.stream}.x", b"x", {}) for i in range(4)]
    store = _MemOutbox([*bad, OutboxEvent("good-1", bus.subject, b"g", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom,
                                                                max_attempts=1)),
                        RelayOptions(batch_size=2, error_backoff=Backoff(
                            base_delay_s=30, max_delay_s=30, rng=_NoJitter())))
    for _ in range(6):  # every bad event is still backing off (30 s) during these rounds
        with contextlib.suppress(PublishError):
            await asyncio.wait_for(relay.relay_once(), 8)
        if store.sent:
            break
    assert store.sent == ["good-1"], f"event failures: {relay.event_failures}"
    assert relay.event_failures == 4  # each bad event tried once


async def test_event_backoff_counts_from_its_failed_publish(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A failed event's error_backoff starts when its publish failed, not when the round
    began: a publish that spent longer in its own retries than the backoff is not tried
    again in the very next round."""
    bad = OutboxEvent("bad", f"nostream{bus.stream}.x", b"x", {})
    store = _MemOutbox([bad])
    slow = PublishOptions(registry=prom, max_attempts=3,  # two 0.4 s retry waits
                          backoff=Backoff(base_delay_s=0.4, max_delay_s=0.4,
                                          rng=_NoJitter()))
    relay = OutboxRelay(store, Publisher(bus.js, slow), RelayOptions(
        error_backoff=Backoff(base_delay_s=0.5, max_delay_s=0.5, rng=_NoJitter())))
    with pytest.raises(PublishError):
        await asyncio.wait_for(relay.relay_once(), 8)
    assert relay.event_failures == 1
    assert await asyncio.wait_for(relay.relay_once(), 8) == 0  # still backing off
    assert relay.event_failures == 1


@pytest.mark.parametrize("bad", ["ORDERS\n", "ORD\tERS", "a b", "a.b", "a*", "a>", "a/b",
                                 "a\\b", "", 7])
def test_stream_and_durable_names_follow_nats_naming_rules(bad: object) -> None:
    """A stream or durable name with whitespace (a newline or a tab too), a dot, a
    wildcard or a path separator is a ConfigError quoting it (NATS' naming rules: names
    are part of the API's subjects and of the server's storage paths)."""
    with pytest.raises(ConfigError, match="must be a non-empty NATS name") as err:
        ConsumerOptions(stream=bad, durable="d1")  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)
    with pytest.raises(ConfigError, match="must be a non-empty NATS name"):
        ConsumerOptions(stream="ORDERS", durable=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a non-empty NATS name"):
        PublishOptions(stream=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["dlq orders", "dlq\torders", "dlq..orders", ".dlq",
                                 "dlq.", "dlq.orders.>", "dlq.*.orders", "dlq\n", "", 7])
def test_dead_letter_subject_that_cannot_be_published_to_is_refused(bad: object) -> None:
    """A dead_letter_subject with whitespace, an empty token or a wildcard was accepted
    (only stream and durable were checked): the consumer started and consumed, and the
    mistake showed only when a message was to be dead-lettered: every poison message,
    refused forgery and exhausted retry was nak'ed for ever, each time with a warning
    "dead-letter publish failed; message left for redelivery" (nats-py refuses a space,
    no stream captures an empty token or a wildcard). It is a ConfigError at
    construction naming the field and quoting the value; a subject to publish to is
    accepted."""
    with pytest.raises(ConfigError, match="dead_letter_subject must be a NATS subject"
                       ) as err:
        ConsumerOptions(stream="ORDERS", durable="summary",
                        dead_letter_subject=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)
    for good in ("dlq", "dlq.orders.summary", "dlq-orders_1.x"):
        assert ConsumerOptions(stream="ORDERS", durable="summary",
                               dead_letter_subject=good).dead_letter_for() == good


_MAX_DURATION_S = (2**63 - 1) // 10**9  # JetStream's int64 nanoseconds, in whole seconds


@pytest.mark.parametrize("field", ["fetch_timeout_s", "ack_wait_s"])
@pytest.mark.parametrize("value", [float("inf"), 1e10])
def test_consumer_durations_past_jetstreams_range_are_refused(field: str,
                                                              value: float) -> None:
    """fetch_timeout_s (the pull's ``expires``) and ack_wait_s (``AckWait``) reach
    JetStream as int64 nanoseconds: ``inf`` made every ``run_once()`` raise
    ``OverflowError`` in nats-py and 1e10 s was refused by the server (APIError 400), so
    the consumer never handled a message. Both are a ConfigError quoting the value."""
    with pytest.raises(ConfigError, match=field) as err:
        ConsumerOptions(stream="ORDERS", durable="d1", **{field: value})
    assert repr(value) in str(err.value)


async def test_consumer_with_the_longest_durations_consumes(bus: Bus,
                                                            prom: CollectorRegistry) -> None:
    """The longest fetch_timeout_s and ack_wait_s the options accept work: the durable is
    made and a pull returns the waiting message at once."""
    await bus.js.publish(bus.subject, b"hello", headers={"Nats-Msg-Id": "long-1"})
    seen: list[bytes] = []

    async def handle(d: Delivery) -> None:
        seen.append(d.data)

    for batch in (1, 64):
        c = _consumer(bus, handle, prom, durable=f"long{batch}", batch_size=batch,
                      fetch_timeout_s=_MAX_DURATION_S, ack_wait_s=_MAX_DURATION_S)
        assert await asyncio.wait_for(c.run_once(), 8) == 1
    assert seen == [b"hello", b"hello"]


@pytest.mark.parametrize("field", ["max_age_s", "duplicate_window_s"])
@pytest.mark.parametrize("value", [float("inf"), 1e10])
async def test_ensure_stream_durations_past_jetstreams_range_are_refused(
        bus: Bus, field: str, value: float) -> None:
    """An infinite or too long max_age_s or duplicate_window_s passed the ``> 0`` check
    and made nats-py raise a raw ``OverflowError`` (or the server refuse it); it is a
    ConfigError quoting the value, before anything is sent. The longest accepted ones
    make the stream."""
    name = f"{bus.stream}LD"
    with pytest.raises(ConfigError, match=field) as err:
        await ensure_stream(bus.js, name, [f"{name.lower()}.>"], **{field: value})
    assert repr(value) in str(err.value)
    try:
        info = await ensure_stream(bus.js, name, [f"{name.lower()}.>"],
                                   max_age_s=_MAX_DURATION_S,
                                   duplicate_window_s=_MAX_DURATION_S)
        assert info.config.max_age == info.config.duplicate_window == _MAX_DURATION_S
    finally:
        with contextlib.suppress(Exception):
            await bus.js.delete_stream(name)


async def test_a_cancel_the_nats_client_swallowed_still_ends_the_consumer(
        bus: Bus, own_nc: Client, prom: CollectorRegistry) -> None:
    """nats-py's ``next_msg`` waits with ``asyncio.wait_for``, which on Python 3.11
    returns a message that arrived as its task was cancelled and loses the cancel
    (gh-86296): the consumer's loop went on pulling, so ``task.cancel()`` (a drain, a
    shutdown) never ended it (seen in ``make test``: a consumer still redelivering 90 s
    after its test cancelled it). The loop ends at its next turn while its task is being
    cancelled. Here the pulls' inbox swallows every cancel (as a timeout)."""
    async def handle(d: Delivery) -> None:
        pass

    consumer = Consumer(own_nc.jetstream(), handle, ConsumerOptions(
        stream=bus.stream, durable="d-cancel", filter_subject=bus.subject,
        fetch_timeout_s=0.2, registry=prom))
    await consumer.start()
    pulls = consumer._pulls
    assert pulls is not None
    next_msg = pulls._inbox.next_msg
    swallowed: list[bool] = []

    async def swallowing_next_msg(*args: Any, **kwargs: Any) -> Any:
        try:
            return await next_msg(*args, **kwargs)
        except asyncio.CancelledError:
            swallowed.append(True)  # what wait_for does when a message came with the cancel
            raise nats.errors.TimeoutError from None

    pulls._inbox.next_msg = swallowing_next_msg  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.3)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
    assert swallowed, "the cancel did not reach the pull's wait"
    assert task in done and task.cancelled()


async def test_a_relay_cancelled_as_it_is_woken_ends(
        bus: Bus, prom: CollectorRegistry) -> None:
    """The relay waits between rounds with ``asyncio.wait_for(wake.wait(), ...)``; on
    Python 3.11 a cancel that comes in the turn ``notify()`` wakes it is lost (wait_for
    returns the finished wait, gh-86296) and the relay went on relaying, so a shutdown's
    ``task.cancel()`` never ended it. It ends."""
    store = _MemOutbox([])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)),
                        RelayOptions(poll_interval_s=30.0))
    task = asyncio.create_task(relay.run())
    for _ in range(20):  # into the wait between rounds (an empty store: one short round)
        await asyncio.sleep(0.01)
    relay.notify()
    task.cancel()  # in the same turn as the wake
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
    assert task in done and task.cancelled()


# --- A network partition (a TcpProxy between the client and NATS) and stream set-up ---

#: Large enough that a few dozen of them fill the socket buffers and nats-py's 2 MiB
#: pending buffer of a connection that moves no byte; under the default 1 MiB max_payload.
_BIG = b"x" * 500_000


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the proxy's resets and refusals are expected here."""


@contextlib.asynccontextmanager
async def _proxied_nc(bus: Bus, **kw: Any) -> AsyncIterator[tuple[TcpProxy, Client]]:
    """A connection to the shared NATS through a TcpProxy (by default reconnecting
    forever, like the ecom relay's); on exit the proxy is stopped (the held bytes
    dropped) and the connection closed."""
    host, port = bus.url.rsplit("//", 1)[1].split(":")
    opts: dict[str, Any] = {"reconnect_time_wait": 0.1, "max_reconnect_attempts": -1}
    opts.update(kw)
    async with TcpProxy(host, int(port)) as proxy:
        nc = await nats.connect(f"nats://{proxy.address}", connect_timeout=2,
                                error_cb=_quiet, **opts)
        try:
            yield proxy, nc
        finally:
            await proxy.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)


async def _reap(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and give them a bounded time to end (they may swallow it)."""
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=10)


async def test_publish_attempt_on_a_silent_connection_is_bounded_by_timeout_s(
        bus: Bus) -> None:
    """PublishOptions.timeout_s bounds one attempt "until the stream's ack". On a
    black-holed connection (a partition: no RST, no byte moves) whose socket buffers
    have filled, nats-py's request blocks *before* its timed wait, in the forced flush of
    its pending buffer (``_flush_pending(force_flush=True)``, no flush timeout), so
    ``Publisher.publish`` hung until nats-py's ping check declared the connection stale
    (2-3 x 120 s by default). Each publish now fails with ``PublishError`` (cause
    ``nats.errors.TimeoutError``) after ``timeout_s`` x ``max_attempts``."""
    async with _proxied_nc(bus) as (proxy, nc):
        pub = Publisher(nc.jetstream(), PublishOptions(
            timeout_s=0.5, max_attempts=1, tracing=False, metrics=False, access_log=False))
        await pub.publish(bus.subject, b"warm-up", msg_id=f"warm-{uuid.uuid4().hex}")
        proxy.blackhole()

        async def one(i: int) -> BaseException | None:
            try:
                await pub.publish(bus.subject, _BIG, msg_id=f"big-{i}")
            except PublishError as exc:
                return exc.__cause__
            return None

        tasks = [asyncio.create_task(one(i)) for i in range(80)]
        try:
            _, hung = await asyncio.wait(tasks, timeout=8.0)
            assert not hung, (
                f"{len(hung)} of {len(tasks)} publishes with timeout_s=0.5, max_attempts=1 "
                f"still running after 8 s on a black-holed connection")
            causes = {type(t.result()).__name__ for t in tasks}
            assert causes == {"TimeoutError"}, causes
        finally:
            await proxy.stop()
            await _reap(tasks)


async def test_relay_cancelled_during_a_network_partition_ends(bus: Bus) -> None:
    """Shutdown (``task.cancel()``) of a relay whose NATS connection is black-holed with
    its buffers full: nats-py's ``_flush_pending`` catches ``CancelledError`` and passes,
    so the cancel of a publish blocked in the forced flush was lost; the Publisher took
    the timeout that followed as a retryable failure, slept and tried again (blocking
    again), and the relay task never ended. The attempt runs in a task of its own (the
    caller's cancel reaches the caller) and a cancel pending on the caller's task ends
    the publish before a retry."""
    async with _proxied_nc(bus) as (proxy, nc):
        pub = Publisher(nc.jetstream(), PublishOptions(
            timeout_s=0.5, max_attempts=3, backoff=Backoff(base_delay_s=0.05),
            tracing=False, metrics=False, access_log=False))
        await pub.publish(bus.subject, b"warm-up", msg_id=f"warm-{uuid.uuid4().hex}")
        store = _MemOutbox([OutboxEvent(f"ev-{i:03d}", bus.subject, _BIG, {})
                            for i in range(80)])
        relay = OutboxRelay(store, pub, RelayOptions(batch_size=80, poll_interval_s=0.1))
        proxy.blackhole()
        task = asyncio.create_task(relay.run())
        try:
            # the round's publishes are written and blocked, their first attempts timed out
            # (timeout_s=0.5) and retried: blocked again (found with timeout_s=1 and 3 s;
            # 1 s after a 1 s timeout failed without the fix too)
            await asyncio.sleep(1.0)
            assert not task.done()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=6.0)
            assert done, "relay.run() still running 6 s after task.cancel()"
            assert task.cancelled()
            assert store.sent == []
        finally:
            await proxy.stop()
            await _reap([task])


async def test_ensure_stream_keeps_the_settings_it_was_not_given(bus: Bus) -> None:
    """``ensure_stream`` on an existing stream whose config differs in anything (here:
    limits an operator set) fell back to ``update_stream`` with a fresh ``StreamConfig``
    of name, subjects, window and max age: every other setting was reset to the server
    default (limits unlimited; on a cluster ``num_replicas`` 3 -> 1), silently, at every
    service start. It reads the existing config and changes only subjects, duplicate
    window and max age."""
    name = f"{bus.stream}KL"
    subjects = [f"{name.lower()}.>"]
    await bus.js.add_stream(StreamConfig(
        name=name, subjects=subjects, duplicate_window=120.0, max_bytes=50_000_000,
        max_msgs=100_000, max_msgs_per_subject=1_000, description="set by an operator"))
    try:
        info = await ensure_stream(bus.js, name, subjects, duplicate_window_s=120.0)
        c = info.config
        assert (c.max_bytes, c.max_msgs, c.max_msgs_per_subject, c.description) == \
            (50_000_000, 100_000, 1_000, "set by an operator"), c
        # what it was given does change; the rest stays
        more = [*subjects, f"{name.lower()}x.>"]
        info = await ensure_stream(bus.js, name, more, duplicate_window_s=30.0,
                                   max_age_s=3600.0)
        c = (await bus.js.stream_info(name)).config
        assert (c.subjects, c.duplicate_window, c.max_age) == (more, 30.0, 3600.0)
        assert info.config.subjects == more
        assert (c.max_bytes, c.max_msgs, c.max_msgs_per_subject, c.description) == \
            (50_000_000, 100_000, 1_000, "set by an operator"), c
    finally:
        await bus.js.delete_stream(name)


async def test_ensure_stream_reports_why_jetstream_refused_a_new_stream(bus: Bus) -> None:
    """``ensure_stream`` took every ``BadRequestError`` of ``add_stream`` for "exists with
    another config" (10058) and called ``update_stream``: a new stream JetStream refused
    for another reason (here: its subjects overlap an existing stream's, 10065) raised
    ``NotFoundError`` "stream not found" (10059) from the update, the real cause only in
    ``__context__``. Only 10058 falls back to the update; the refusal propagates."""
    name = f"{bus.stream}OV"
    with pytest.raises(nats.js.errors.APIError) as caught:
        await ensure_stream(bus.js, name, [bus.subject])  # bus.stream captures it
    try:
        assert caught.value.err_code == 10065 and "overlap" in str(caught.value), \
            f"got {caught.value!r} for a stream whose subjects overlap {bus.stream}'s"
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_stream(name)


async def test_an_ack_lost_with_the_connection_is_not_reported_as_cancelled(
        bus: Bus, tracing: Tracing, prom: CollectorRegistry) -> None:
    """The handler succeeded but the connection went away before the ack could be sent
    (a connection without reconnect, cut while the handler ran): ``msg.ack()`` raises
    ``ConnectionClosedError``, and ``Consumer.handle`` reported the delivery with its
    default result, ``("error", None, "cancelled")``: the CONSUMER span's status (and the
    access log's ``reason``) said "cancelled" though nothing was, the cause nowhere in
    the delivery's telemetry. The reason names the failed ack; the error propagates."""
    async with _proxied_nc(bus, allow_reconnect=False) as (proxy, nc):
        await bus.js.publish(bus.subject, b"event", headers={"Nats-Msg-Id": "ev-1"})

        async def handler(_: object) -> None:
            await proxy.stop()  # the connection is cut while the handler runs
            await until(lambda: nc.is_closed, timeout_s=5, what="connection closed")

        consumer = Consumer(nc.jetstream(timeout=3), handler, ConsumerOptions(
            stream=bus.stream, durable="d", filter_subject=bus.subject,
            fetch_timeout_s=1.0, registry=prom, tracer_provider=tracing.provider))
        with pytest.raises(nats.errors.ConnectionClosedError):
            await consumer.run_once()
        [span] = [s for s in tracing.spans() if s.name.startswith("process ")]
        assert span.status.description == "error: ack failed: ConnectionClosedError"
        assert _sample(prom, "meshkit_messaging_consumed_total", subject=bus.subject,
                       consumer="d", outcome="error") == 1


async def test_a_signed_event_consumed_after_its_signers_certificate_expired_is_handled(
        bus: Bus, workloads: Workloads, prom: CollectorRegistry) -> None:
    """The identity module says a signature "does not expire: a JetStream message is
    legitimately redelivered long after it was published", but ``MessageVerifier``
    checked the publisher's certificate at the time of the *check*: an event consumed
    after its signer's 24 h certificate expired (a consumer catching up after an outage,
    a new durable reading a stream that keeps a day, as ecom's does) was refused and
    dead-lettered though it was validly signed. The certificate is checked at the signed
    ``Meshkit-Sent-At-Ms``; a message older than ``max_message_age_s`` is refused."""
    later = time.time() + 25 * 3600  # the publisher's 24 h certificate has expired
    await Publisher(bus.js, PublishOptions(signer=MessageSigner(*workloads.orderd),
                                           registry=prom)
                    ).publish(bus.subject, b"order placed", msg_id="ev-signed-1")
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.msg_id)

    async def consume(durable: str, **kw: Any) -> None:
        consumer = _consumer(bus, handler, prom, durable=durable,
                             filter_subject=bus.subject, fetch_timeout_s=1.0,
                             verifier=MessageVerifier(workloads.ca_pem, clock=lambda: later,
                                                      **kw))
        async with asyncio.timeout(10):
            while not await consumer.run_once():
                pass

    await consume("late")  # max_message_age_s: 7 days by default
    assert handled == ["ev-signed-1"], await _dead_letters(bus)
    await consume("strict", max_message_age_s=24 * 3600.0)
    assert handled == ["ev-signed-1"]
    [dead] = await _dead_letters(bus)
    assert (dead.headers or {})[DLQ_REASON_HEADER].startswith(
        "message older than max_message_age_s (86400 s)"), dead.headers
