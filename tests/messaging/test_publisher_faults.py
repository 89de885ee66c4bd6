"""Faults found reviewing the publishing side (Publisher, OutboxRelay) against JetStream's
semantics, each on the real NATS (the shared server, a stream of the test's own)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import nats
import nats.aio.client
import nats.aio.msg
import nats.js.errors
import pytest
import structlog
from nats.js.api import DiscardPolicy, StreamConfig
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    OutboxEvent,
    OutboxRelay,
    Publisher,
    PublishError,
    PublishOptions,
    RelayOptions,
)
from meshkit.messaging._publisher import _retryable
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus, NatsServer
from tests.support.wait import until


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class _Alternating(random.Random):
    """Full jitter drawing the top of the range, then a fifth of it, in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return a + (b - a) * (1.0 if self.draws % 2 else 0.2)


class _MemOutbox:
    def __init__(self, events: list[OutboxEvent]) -> None:
        self.events = events
        self.sent: list[str] = []

    async def pending_events(self, limit: int) -> list[OutboxEvent]:
        return [e for e in self.events if e.event_id not in self.sent][:limit]

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        self.sent.extend(i for i in event_ids if i not in self.sent)


@pytest.fixture
async def full_stream(bus: Bus) -> AsyncIterator[tuple[str, str]]:
    """A stream of one message at most, discard new, already holding it: (name, subject)."""
    tag = uuid.uuid4().hex[:10]
    name, subject = f"F{tag}", f"f{tag}.x"
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"f{tag}.>"], max_msgs=1,
                                         discard=DiscardPolicy.NEW, duplicate_window=60))
    await bus.js.publish(subject, b"first", headers={"Nats-Msg-Id": "first"})
    try:
        yield name, subject
    finally:
        await bus.js.delete_stream(name)


async def test_a_stream_full_with_discard_new_is_not_retried(
        bus: Bus, full_stream: tuple[str, str], prom: CollectorRegistry) -> None:
    """A stream at its limits with discard new answers a publish 503 "maximum messages
    exceeded" (err_code 10077): the stream refuses to store it, and will until room is
    made (an ack in a work queue, max_age). That is no outage to retry at once: the
    publish fails at its first attempt, spends nothing of the retry budget other
    publishes share, and its cause names the refusal."""
    _, subject = full_stream
    publisher = Publisher(bus.js, PublishOptions(
        registry=prom, max_attempts=3,
        backoff=Backoff(base_delay_s=0.2, max_delay_s=0.2, rng=_NoJitter())))
    with pytest.raises(PublishError) as err:
        await asyncio.wait_for(publisher.publish(subject, b"second", msg_id="second"), 8)
    cause = err.value.__cause__
    assert isinstance(cause, nats.js.errors.APIError) and cause.err_code == 10077
    assert "maximum messages exceeded" in str(err.value)
    assert _sample(prom, "meshkit_messaging_publish_retries_total", subject=subject) == 0
    assert publisher.budget.retries_in_window() == 0


@pytest.fixture
async def service_subject(bus: Bus) -> AsyncIterator[str]:
    """A subject no stream captures on which a core NATS service answers "pong"."""
    subject = f"svc{uuid.uuid4().hex[:10]}.ping"

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"pong")

    sub = await bus.nc.subscribe(subject, cb=answer)
    await bus.nc.flush()
    try:
        yield subject
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def test_a_reply_that_is_no_jetstream_ack_is_a_publish_error(
        bus: Bus, service_subject: str, prom: CollectorRegistry) -> None:
    """A subject no stream captures but a core NATS service answers (an outbox event
    with a wrong subject): the reply is no PubAck. publish raises PublishError, as it
    documents for a publish that is not acked, not the JSON decoder's ValueError."""
    publisher = Publisher(bus.js, PublishOptions(registry=prom))
    with pytest.raises(PublishError, match="not a JetStream ack"):
        await asyncio.wait_for(publisher.publish(service_subject, b"x", msg_id="s-1"), 8)


async def test_an_event_whose_publish_raised_backs_off_alone_and_the_round_goes_on(
        bus: Bus, service_subject: str, prom: CollectorRegistry) -> None:
    """An outbox event whose publish raised something else than PublishError (here a
    reply that is no JetStream ack) backs off alone like any failing event: the round
    publishes and marks the others and does not fail, and the next round leaves it out.
    It used to fail every round (the relay then slept error_backoff, up to 5 s, between
    batches, for every event) and was never held back."""
    store = _MemOutbox([OutboxEvent("svc-1", service_subject, b"x", {}),
                        OutboxEvent("g-1", bus.subject, b"g", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)),
                        RelayOptions(error_backoff=Backoff(base_delay_s=30, max_delay_s=30,
                                                           rng=_NoJitter())))
    assert await asyncio.wait_for(relay.relay_once(), 8) == 1
    assert store.sent == ["g-1"] and relay.event_failures == 1
    store.events.append(OutboxEvent("g-2", bus.subject, b"g", {}))
    assert await asyncio.wait_for(relay.relay_once(), 8) == 1  # svc-1 waits its 30 s
    assert store.sent == ["g-1", "g-2"] and relay.event_failures == 1


async def test_an_event_with_a_header_value_that_is_no_string_backs_off_alone(
        bus: Bus, prom: CollectorRegistry) -> None:
    """A store that decodes stored headers from JSON may hand the relay a value that is
    no string ({"Ecom-Schema": 2}); publishing it raises AttributeError, not
    PublishError. That event backs off alone; the round is not a failed one."""
    store = _MemOutbox([OutboxEvent("int-1", bus.subject, b"x",
                                    {"Ecom-Schema": 2}),  # type: ignore[dict-item]
                        OutboxEvent("g-1", bus.subject, b"g", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)),
                        RelayOptions(error_backoff=Backoff(base_delay_s=30, max_delay_s=30,
                                                           rng=_NoJitter())))
    assert await asyncio.wait_for(relay.relay_once(), 8) == 1
    assert store.sent == ["g-1"] and relay.event_failures == 1
    assert await asyncio.wait_for(relay.relay_once(), 8) == 0  # int-1 waits its 30 s
    assert relay.event_failures == 1


async def test_an_event_failing_alone_again_and_again_is_not_a_failed_round_each_time(
        bus: Bus, prom: CollectorRegistry) -> None:
    """One event that can never be published (its subject in no stream), the rest of the
    outbox sent: each time its backoff ends it is a batch of one that fails whole. It
    backs off again, logged at its 1st, 2nd, 4th... failure; NATS is fine, so those are
    no failed rounds: ``failures`` (failed rounds) and the "outbox relay round failed"
    warning come once, for its first failure, not at every retry for ever (when a
    failed round's sleep, jittered, ended before the event's own backoff, the empty
    round between ended the streak, so the next retry was a "first" failed round,
    logged again)."""
    store = _MemOutbox([OutboxEvent("bad", f"nostream{bus.stream}.x", b"x", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom,
                                                                max_attempts=1)),
                        RelayOptions(poll_interval_s=0.02, error_backoff=Backoff(
                            base_delay_s=0.1, max_delay_s=0.1, rng=_Alternating())))
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(relay.run())
        try:
            for _ in range(400):
                if relay.event_failures >= 6:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert relay.event_failures >= 6 and store.sent == []
    rounds_failed = sum(e["event"] == "outbox relay round failed" for e in logs)
    assert (relay.failures, rounds_failed) == (1, 1)


async def _small_buffer(url: str) -> nats.aio.client.Client:
    """A connection whose pending buffer takes 1 KiB while it reconnects."""
    return await nats.connect(url, connect_timeout=2, reconnect_time_wait=0.1,
                              max_reconnect_attempts=-1, pending_size=1024)


async def test_a_publish_while_reconnecting_with_a_full_buffer_is_retried(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """While the connection is reconnecting, nats-py buffers a publish, or, when its
    pending buffer (``pending_size``) cannot take it, raises OutboundBufferLimitError at
    once: the "reconnecting" failure a publish meets (ConnectionReconnectingError comes
    only from drain). It is retried like a timeout, and the publish is acked once the
    server is back; it used to fail at its first attempt with nothing retried."""
    nc = await _small_buffer(private_nats.url)
    try:
        pub = Publisher(nc.jetstream(), PublishOptions(
            registry=prom, timeout_s=0.5, max_attempts=60,
            backoff=Backoff(base_delay_s=0.05, max_delay_s=0.2)))
        await pub.publish(private_bus.subject, b"before", msg_id="b-0")
        private_nats.kill()
        await until(lambda: not nc.is_connected, timeout_s=10, what="disconnected")
        task = asyncio.create_task(
            pub.publish(private_bus.subject, b"x" * 2000, msg_id="b-1"))
        await asyncio.sleep(0.5)
        assert not task.done() or task.exception() is None, task.exception()
        await private_nats.start()  # same port, same store directory
        ack = await asyncio.wait_for(task, 20)
        assert ack.seq == 2 and not ack.duplicate
        assert _sample(prom, "meshkit_messaging_publish_retries_total",
                       subject=private_bus.subject) >= 1
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


async def test_the_relays_warning_says_why_jetstream_refused_an_event(
        bus: Bus, full_stream: tuple[str, str], prom: CollectorRegistry) -> None:
    """The warning for an event that failed to publish gives JetStream's refusal (codes,
    description), not only the exception's type: a stream at its limits (503/10077
    "maximum messages exceeded") otherwise reads as ServiceUnavailableError, the same
    as JetStream being down, and the operator cannot tell which."""
    _, subject = full_stream
    store = _MemOutbox([OutboxEvent("full-1", subject, b"x", {})])
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(registry=prom)))
    with structlog.testing.capture_logs() as logs, pytest.raises(PublishError):
        await asyncio.wait_for(relay.relay_once(), 8)
    warnings = [str(e) for e in logs if "outbox event failed to publish" in e["event"]]
    assert len(warnings) == 1 and "full-1" in warnings[0]
    assert "maximum messages exceeded" in warnings[0], warnings[0]


async def test_an_event_whose_publish_times_out_does_not_hold_up_the_events_behind_it(
        bus: Bus, prom: CollectorRegistry) -> None:
    """An event on a subject that a core NATS subscriber listens to but no stream
    captures gets no ack, only timeouts: its publish takes max_attempts x timeout_s
    (about 3 s here). Retried in the round after its backoff, it held that round, and
    the events committed meanwhile waited for it (5.2-6.1 s with the defaults, 6 of 15
    events). Now a retry of an event that failed before runs beside the rounds; the
    others go at the normal pace."""
    silent = f"silent{uuid.uuid4().hex[:10]}.x"

    async def ignore(msg: nats.aio.msg.Msg) -> None:
        return None

    sub = await bus.nc.subscribe(silent, cb=ignore)
    await bus.nc.flush()
    store = _MemOutbox([OutboxEvent("silent-1", silent, b"x", {})])
    sent_at: dict[str, float] = {}
    mark = store.mark_sent

    async def mark_sent(event_ids: Sequence[str]) -> None:
        now = asyncio.get_running_loop().time()
        for i in event_ids:
            sent_at.setdefault(i, now)
        await mark(event_ids)

    store.mark_sent = mark_sent  # type: ignore[method-assign]
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=prom, timeout_s=1.0, max_attempts=3,
        backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01))),
        RelayOptions(error_backoff=Backoff(base_delay_s=0.05, max_delay_s=0.1)))
    task = asyncio.create_task(relay.run())
    latencies = []
    try:
        await asyncio.sleep(3.5)  # its first publish failed; it is retried from now on
        assert relay.event_failures >= 1
        for i in range(6):
            eid = f"g-{i}"
            store.events.append(OutboxEvent(eid, bus.subject, b"g", {}))
            t0 = asyncio.get_running_loop().time()
            relay.notify()
            for _ in range(1000):
                if eid in sent_at:
                    break
                await asyncio.sleep(0.01)
            latencies.append(round(sent_at.get(eid, float("inf")) - t0, 3))
            await asyncio.sleep(0.4)
        for _ in range(800):  # the retry under way fails too, and is taken
            if relay.event_failures >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sub.unsubscribe()
    assert max(latencies) < 1.5, latencies
    assert "silent-1" not in store.sent and relay.event_failures >= 2


async def test_retries_while_reconnecting_with_a_full_buffer_leak_no_reply_futures(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """nats-py's request registers the reply's future in ``nc._resp_map`` before it
    publishes, and leaves it there when the publish raises OutboundBufferLimitError (a
    full pending buffer while reconnecting): each attempt leaked one entry, so retrying
    that error tripled the leak (15 entries after 5 publishes of 3 attempts). The
    publisher drops its own attempt's entry and waits (within timeout_s) for the
    reconnect instead of attempting again at the backoff's pace."""
    nc = await _small_buffer(private_nats.url)
    try:
        pub = Publisher(nc.jetstream(), PublishOptions(
            registry=prom, timeout_s=0.1, max_attempts=3,
            backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01)))
        await pub.publish(private_bus.subject, b"before", msg_id="b-0")
        assert len(nc._resp_map) == 0
        private_nats.kill()
        await until(lambda: not nc.is_connected, timeout_s=10, what="disconnected")
        for i in range(5):
            with pytest.raises(PublishError):
                await asyncio.wait_for(
                    pub.publish(private_bus.subject, b"x" * 2000, msg_id=f"b-{i + 1}"), 8)
        assert _sample(prom, "meshkit_messaging_publish_retries_total",
                       subject=private_bus.subject) == 10
        await asyncio.sleep(0)
        assert len(nc._resp_map) == 0, len(nc._resp_map)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5)


async def test_a_payload_that_is_no_bytes_is_the_callers_error_not_a_bad_reply(
        bus: Bus, prom: CollectorRegistry) -> None:
    """publish(subject, "text"): nats-py fails on the str with TypeError, which the
    publisher wrapped as a PublishError saying the reply "is not a JetStream ack" (a
    service answering on the subject). Only a reply's parsing is wrapped; a payload
    that is no bytes is refused with TypeError before anything is sent."""
    publisher = Publisher(bus.js, PublishOptions(registry=prom))
    with pytest.raises(TypeError, match="payload"):
        await asyncio.wait_for(
            publisher.publish(bus.subject, "text", msg_id="t-1"),  # type: ignore[arg-type]
            8)


@pytest.mark.parametrize("limits", [
    {"max_msgs": 1}, {"max_bytes": 200},
    {"max_msgs_per_subject": 1, "discard_new_per_subject": True}],
    ids=["max_msgs", "max_bytes", "max_msgs_per_subject"])
async def test_each_limit_of_a_full_stream_fails_at_once(
        bus: Bus, prom: CollectorRegistry, limits: dict[str, object]) -> None:
    """The real server's refusals of a stream at each of its limits with discard new:
    503 / 10077 and a description "maximum ... exceeded", not retried."""
    tag = uuid.uuid4().hex[:10]
    name, subject = f"L{tag}", f"l{tag}.x"
    await bus.js.add_stream(StreamConfig(name=name, subjects=[f"l{tag}.>"],
                                         discard=DiscardPolicy.NEW, duplicate_window=60,
                                         **limits))  # type: ignore[arg-type]
    try:
        await bus.js.publish(subject, b"first" * 20, headers={"Nats-Msg-Id": "first"})
        publisher = Publisher(bus.js, PublishOptions(registry=prom, max_attempts=3))
        with pytest.raises(PublishError) as err:
            await asyncio.wait_for(
                publisher.publish(subject, b"second" * 20, msg_id="second"), 8)
        cause = err.value.__cause__
        assert isinstance(cause, nats.js.errors.APIError) and cause.err_code == 10077
        description = (cause.description or "").lower()
        assert "maximum" in description and "exceeded" in description, description
        assert _sample(prom, "meshkit_messaging_publish_retries_total",
                       subject=subject) == 0
    finally:
        await bus.js.delete_stream(name)


def test_a_store_failure_that_is_no_limit_is_retried() -> None:
    """10077 is JetStream's generic "stream store failed" ({err}): a closed store or an
    I/O error as well as a limit. Only "maximum ... exceeded" fails at once."""
    def refusal(description: str) -> nats.js.errors.APIError:
        return nats.js.errors.ServiceUnavailableError(
            code=503, err_code=10077, description=description)

    assert not _retryable(refusal("maximum messages exceeded"))
    assert not _retryable(refusal("maximum messages per subject exceeded"))
    assert _retryable(refusal("store closed"))
    assert _retryable(refusal("write /data/jetstream/x.blk: no space left on device"))


class _Proxy:
    """TCP proxy to the shared NATS; ``delay`` holds back the server's first bytes
    (its INFO) on new connections, as a slow server or a load balancer would."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", 4222)
        self.writers += [cw, sw]
        delay = self.delay

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, d: float) -> None:
            try:
                if d:
                    await asyncio.sleep(d)
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except Exception:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(sr, cw, delay), pipe(cr, sw, 0))

    def drop(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()


async def test_a_publish_during_the_reconnect_handshake_waits_for_the_reconnect(
        bus: Bus, prom: CollectorRegistry) -> None:
    """The publisher says: while reconnecting with a full pending buffer an attempt waits
    for the reconnect (up to timeout_s) rather than failing at once. nats-py's reconnect
    sets status CONNECTING for its handshake (_process_connect_init), where is_reconnecting
    is False: an attempt then fails at once with OutboundBufferLimitError."""
    proxy = _Proxy()
    await proxy.start()
    nc = await nats.connect(f"nats://127.0.0.1:{proxy.port}", connect_timeout=2,
                            reconnect_time_wait=0.05, max_reconnect_attempts=-1,
                            pending_size=1024)
    try:
        pub = Publisher(nc.jetstream(), PublishOptions(
            registry=prom, timeout_s=2.0, max_attempts=1,
            backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01)))
        await pub.publish(bus.subject, b"before", msg_id="c-0")
        proxy.delay = 0.5
        proxy.drop()
        await until(lambda: nc.is_connecting, timeout_s=5, what="reconnect handshake")
        try:
            ack = await pub.publish(bus.subject, b"x" * 2000, msg_id="c-1")
        except PublishError as exc:
            pytest.fail(f"failed at once in the handshake: {exc!r} <- {exc.__cause__!r}")
        assert ack.seq == 2
    finally:
        await nc.close()
        proxy.drop()
        assert proxy.server is not None
        proxy.server.close()


async def test_a_first_request_while_reconnecting_leaks_no_reply_future(
        private_nats: NatsServer, private_bus: Bus, prom: CollectorRegistry) -> None:
    """_send snapshots nc._resp_map only once nats-py's reply subscription exists: the
    first request on a connection (here, after the stream was made with a separate
    connection) that meets OutboundBufferLimitError leaves its future behind."""
    nc = await _small_buffer(private_nats.url)
    try:
        pub = Publisher(nc.jetstream(), PublishOptions(
            registry=prom, timeout_s=0.1, max_attempts=3,
            backoff=Backoff(base_delay_s=0.01, max_delay_s=0.01)))
        assert nc._resp_sub_prefix is None
        private_nats.kill()
        await until(lambda: not nc.is_connected, timeout_s=10, what="disconnected")
        for i in range(3):
            with pytest.raises(PublishError):
                await asyncio.wait_for(
                    pub.publish(private_bus.subject, b"x" * 2000, msg_id=f"f-{i}"), 8)
        await asyncio.sleep(0)
        assert len(nc._resp_map) == 0, len(nc._resp_map)
    finally:
        # nats-py's close() writes its pending buffer to the dead connection's transport:
        # asyncio's raises ConnectionResetError there (TypeError on Python 3.13: its
        # closed transport has no write method left), uvloop's RuntimeError ("the
        # handler is closed")
        with contextlib.suppress(ConnectionResetError, RuntimeError, TypeError):
            await nc.close()
