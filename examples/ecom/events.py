"""Order events of the ecom example: the outbox relay of the order service, and the
projection (CQRS read side) that turns ``OrderPlaced`` events into per-user summaries.

Flow: ``PlaceOrder`` commits the order and its ``OrderPlaced`` event in one transaction
(:mod:`examples.ecom.storage`); the order service's :class:`~meshkit.messaging.OutboxRelay`
publishes pending events to the ``ECOM_ORDERS`` stream (``Nats-Msg-Id`` = event id, signed
with the ``orderd`` workload identity) and marks them sent; the projection service's
durable consumer ``order-summary`` applies each event once (by event id) to
``order_summaries`` and serves them with ``ecom.v1.OrderSummaryService``. Poison events
(undecodable) go to ``ecom.orders.dead``, captured by the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from examples.ecom import validation
from examples.ecom.proto import summary_pb2, summary_pb2_grpc
from examples.ecom.storage import (
    ORDER_PLACED_SUBJECT,
    Store,
    StoreError,
    StoreUnavailable,
    _shown_url,
    now_ms,
)
from meshkit.messaging import (
    ConsumerOptions,
    Delivery,
    MessageSigner,
    MessageVerifier,
    OutboxRelay,
    PoisonMessage,
    Publisher,
    PublishOptions,
    RelayOptions,
    ensure_stream,
    messaging_metrics,
)
from meshkit.resilience import Backoff

STREAM = "ECOM_ORDERS"
DEAD_LETTER_SUBJECT = "ecom.orders.dead"
DURABLE = "order-summary"

#: How long a sent outbox event is kept before :func:`purge_sent_events` deletes it: a
#: day, as long as the stream keeps the event (seconds).
OUTBOX_RETENTION_S = 86400.0
#: Pause between two purges of the outbox (seconds).
PURGE_INTERVAL_S = 60.0
#: The longest retention a purge takes (seconds, about 292 million years): its cutoff in
#: milliseconds must fit the stores' signed 64-bit column (SQLite INTEGER, PostgreSQL
#: ``bigint``), which refuse one past it at every purge.
MAX_RETENTION_S = (2**63 - 1) // 1000

#: How long the ``ECOM_ORDERS`` stream keeps an event (its ``max_age``, seconds): a day.
#: JetStream deletes an event older than this, consumed or not.
STREAM_MAX_AGE_S = 86400.0
#: The stream's dedupe window (seconds): a publish repeating the ``Nats-Msg-Id`` of one
#: stored less than this long ago is dropped.
STREAM_DUPLICATE_WINDOW_S = 120.0

_log = structlog.get_logger("examples.ecom.events")


async def ensure_order_stream(js: JetStreamContext) -> None:
    """Create (or update) the ``ECOM_ORDERS`` stream over ``ecom.orders.>`` with a
    :data:`STREAM_DUPLICATE_WINDOW_S` (2-minute) dedupe window, keeping events for
    :data:`STREAM_MAX_AGE_S` (a day)."""
    await ensure_stream(js, STREAM, ["ecom.orders.>"],
                        duplicate_window_s=STREAM_DUPLICATE_WINDOW_S,
                        max_age_s=STREAM_MAX_AGE_S)


#: Deliveries of an event before the projection dead-letters it. A failed delivery is
#: most likely the summary store being down (``StoreUnavailable``) and JetStream counts
#: every redelivery, so with :data:`REDELIVERY_BACKOFF_S` between them the deliveries must
#: outlast a realistic outage (a PostgreSQL restart or failover): the 19 waits add up to
#: 113 s on average and over 70 s in 99 % of cases, where the consumer's defaults (5
#: deliveries, 100 ms doubling to 5 s) gave up within 1.5 s and dead-lettered valid
#: events. The price: an event the handler fails on for another reason reaches the dead
#: letters after about 2 minutes (a poison body goes at once).
MAX_DELIVERIES = 20
#: Caps of the (full-jitter) delay before a redelivery: 0.5 s doubling to 15 s.
REDELIVERY_BACKOFF_S = (0.5, 15.0)


def consumer_options(verifier: MessageVerifier | None, **overrides: Any) -> ConsumerOptions:
    """The projection's consumer: durable ``order-summary`` on ``ecom.orders.placed``,
    ``MAX_DELIVERIES`` deliveries with ``REDELIVERY_BACKOFF_S`` between them (enough to
    ride out a store outage of a minute or more), dead letters to ``ecom.orders.dead``;
    ``overrides`` for tests."""
    opts: dict[str, Any] = {"stream": STREAM, "durable": DURABLE,
                            "filter_subject": ORDER_PLACED_SUBJECT,
                            "dead_letter_subject": DEAD_LETTER_SUBJECT,
                            "max_deliveries": MAX_DELIVERIES,
                            "backoff": Backoff(base_delay_s=REDELIVERY_BACKOFF_S[0],
                                               max_delay_s=REDELIVERY_BACKOFF_S[1]),
                            "ack_wait_s": 5.0, "verifier": verifier}
    opts.update(overrides)
    return ConsumerOptions(**opts)


#: The longest ``event_id`` and ``user_id`` (in characters) the projection applies: a
#: UUID (every id the example makes) has 36; at 4 UTF-8 bytes a character, 128 stay far
#: below the 2,704 bytes PostgreSQL's B-tree keys (processed_events, order_summaries)
#: can hold.
MAX_EVENT_ID_CHARS = 128


def _storable_id(value: object) -> bool:
    """Whether ``value`` is an id the summary store can hold: a non-empty string of at
    most :data:`MAX_EVENT_ID_CHARS` characters, encodable as UTF-8 (no lone surrogate,
    which JSON's ``\\ud800`` gives), without U+0000 (PostgreSQL text refuses it)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_EVENT_ID_CHARS \
            or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Projection:
    """The consumer handler: applies an ``OrderPlaced`` event to the summaries once.

    A body that is not an ``OrderPlaced`` JSON object (nor JSON nested too deep to
    decode) with an ``event_id`` (the message
    id wins when there is one) and a ``user_id`` that are non-empty strings of at most
    :data:`MAX_EVENT_ID_CHARS` characters without U+0000 or a lone surrogate, and
    ``total_minor`` (a JSON integer, ``true``/``false`` are not, that an order can have:
    0..:data:`~examples.ecom.validation.MAX_ORDER_TOTAL_MINOR`) raises
    :class:`~meshkit.messaging.PoisonMessage` (dead letter); a store failure raises, so
    the message is redelivered after a backoff (see :func:`consumer_options`).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.applied = 0
        self.duplicates = 0

    async def __call__(self, d: Delivery) -> None:
        """Handle one delivery (see the class docstring)."""
        try:
            body = json.loads(d.data)
            user_id, total = body["user_id"], body["total_minor"]
            event_id = d.msg_id or body["event_id"]
        # RecursionError: a body nested past the decoder's depth ("[[[[...")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PoisonMessage(f"not an OrderPlaced event: {type(exc).__name__}") from None
        if body.get("type") != "OrderPlaced" or not _storable_id(user_id) \
                or not isinstance(total, int) or isinstance(total, bool) \
                or not _storable_id(event_id):
            raise PoisonMessage("not an OrderPlaced event")
        if not 0 <= total <= validation.MAX_ORDER_TOTAL_MINOR:  # no order has it
            raise PoisonMessage("OrderPlaced total_minor out of range")
        if await self._store.apply_order_placed(event_id, user_id, total):
            self.applied += 1
        else:
            self.duplicates += 1


class OrderSummaryServicer(summary_pb2_grpc.OrderSummaryServiceServicer):
    """``ecom.v1.OrderSummaryService`` over the projection's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def GetOrderSummary(
        self,
        request: summary_pb2.GetOrderSummaryRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> summary_pb2.OrderSummary:
        """The user's summary; INVALID_ARGUMENT for a malformed id, UNAVAILABLE when the
        store cannot be reached, INTERNAL ("summary store failed", the cause logged) when
        it fails otherwise."""
        try:
            validation.validate_id("user_id", request.user_id)
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            s = await self._store.order_summary(request.user_id)
        except StoreUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "summary store unavailable")
        except StoreError:
            _log.exception("summary store call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "summary store failed")
        return summary_pb2.OrderSummary(user_id=s.user_id, order_count=s.order_count,
                                        total_minor=s.total_minor)


async def purge_sent_events(store: Store, *, retention_s: float = OUTBOX_RETENTION_S,
                            interval_s: float = PURGE_INTERVAL_S, batch: int = 1000) -> None:
    """Delete the outbox events sent more than ``retention_s`` seconds ago (default
    :data:`OUTBOX_RETENTION_S`, a day), now and then every ``interval_s`` seconds
    (default :data:`PURGE_INTERVAL_S`), until cancelled.

    Each purge deletes ``batch`` rows at a time (default 1000; one short transaction
    each, so a PlaceOrder waits for one batch at most) until a batch comes back short. A
    store failure is logged as a warning (``outbox purge failed``) and the next interval
    tried again; pending events are never deleted. Several relays purging one outbox is
    harmless. Raises ``ValueError`` for a ``retention_s`` not a finite number > 0 and at
    most :data:`MAX_RETENTION_S` (use :func:`outbox_relay`'s ``retention_s=None`` to keep
    events for ever), an ``interval_s`` not > 0 or a ``batch`` below 1.
    """
    await purge_every(store.purge_sent, retention_s=retention_s, interval_s=interval_s,
                      batch=batch, warning="outbox purge failed", errors=(StoreError,))


def _check_retention_s(retention_s: float) -> None:
    """Raise ``ValueError`` quoting ``retention_s`` unless it is a number > 0 and at most
    :data:`MAX_RETENTION_S` seconds: ``inf`` raised ``OverflowError`` from ``round(inf *
    1000)`` at the first purge, and past the bound the cutoff's milliseconds are past
    int64, which the store refused at every purge."""
    if not 0 < retention_s <= MAX_RETENTION_S:
        raise ValueError(f"retention_s must be a finite number > 0 and at most "
                         f"{MAX_RETENTION_S} (seconds), got {retention_s!r}")


async def purge_every(purge: Callable[[int, int], Awaitable[int]], *, retention_s: float,
                      interval_s: float, batch: int, warning: str,
                      errors: tuple[type[Exception], ...]) -> None:
    """Call ``purge(cutoff_ms, batch)`` (a store's ``purge_sent`` / ``purge_processed``:
    deletes up to ``batch`` rows older than ``cutoff_ms``, unix ms, and returns how many)
    with the cutoff ``retention_s`` seconds ago until a batch comes back short, now and
    then every ``interval_s`` seconds, until cancelled; ``errors`` it raises are logged
    as ``warning`` and the next interval tried again. Raises ``ValueError`` for a
    ``retention_s`` not a finite number > 0 and at most :data:`MAX_RETENTION_S` (its
    cutoff's milliseconds must fit a signed 64-bit integer), an ``interval_s`` not > 0
    or a ``batch`` below 1."""
    _check_retention_s(retention_s)
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    while True:
        try:
            cutoff = now_ms() - round(retention_s * 1000)
            while True:
                if await purge(cutoff, batch) < batch:
                    break
                await asyncio.sleep(0)  # the store's waiting calls go first
        except errors as exc:
            _log.warning(warning, cause=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(interval_s)


def event_signer(cert_dir: str | os.PathLike[str], service: str, *,
                 reload_interval_s: float = 5.0) -> MessageSigner:
    """The signer of ``service``'s events from a meshkit certs directory
    (``<service>.pem``, ``<service>.key``): ``MessageSigner.from_dir``, which takes a
    renewed pair at most every ``reload_interval_s`` seconds (a long-running relay that
    kept its first certificate had every event dead-lettered once it expired, 24 h by
    default; a half-written pair keeps the old one).

    Raises:
        meshkit.auth.CertificateError, ConfigError: as ``MessageSigner.from_dir``.
    """
    return MessageSigner.from_dir(cert_dir, service, reload_interval_s=reload_interval_s)


def event_verifier(cert_dir: str | os.PathLike[str], *, allowed_publishers: Sequence[str],
                   reload_interval_s: float = 5.0) -> MessageVerifier:
    """The projection's verifier over the directory's CA bundle (``ca.pem``):
    ``MessageVerifier.from_file``, which takes a changed bundle (a CA rotation adds the
    new CA, then reissues the workloads' certificates from it) at most every
    ``reload_interval_s`` seconds; before, every event signed by a certificate of the new
    CA was dead-lettered until a restart.

    Raises:
        meshkit.auth.CertificateError, ConfigError: as ``MessageVerifier.from_file``.
    """
    return MessageVerifier.from_file(Path(cert_dir) / "ca.pem",
                                     allowed_publishers=allowed_publishers,
                                     reload_interval_s=reload_interval_s)


#: Pause between two attempts to connect to NATS, or to create the stream (seconds).
NATS_RETRY_S = 0.2
#: Pause before the stream is asked for again after JetStream refused (seconds).
STREAM_RETRY_S = 2.0

#: nats-py errors meaning "the server cannot be reached now" (logged once per outage).
_NATS_DOWN: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, nats.errors.NoServersError, nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
)


class _NatsOutages:
    """nats-py's error, disconnect and reconnect callbacks for a long-lived connection:
    one warning when the server cannot be reached (``nats unavailable, retrying``, the
    error's type and message, no traceback) and one info line when it is back, where
    nats-py's default logs a traceback at every attempt (five a second at
    :data:`NATS_RETRY_S`). Other errors (credentials refused, a permission violation, a
    slow consumer) are logged as a warning (``nats error``) once each until the next
    successful connect: a refused login is retried at the same pace. The URL, which may
    hold credentials, is never logged."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.down = False
        self._said: set[str] = set()

    async def error(self, exc: Exception) -> None:
        """nats-py's ``error_cb``."""
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, _NATS_DOWN):
            if error not in self._said and len(self._said) < 100:
                self._said.add(error)
                _log.warning("nats error", of=self._what, error=error)
        elif not self.down:
            self.down = True
            _log.warning("nats unavailable, retrying", of=self._what, error=error)

    async def connected(self) -> None:
        """nats-py's ``reconnected_cb``, and called once the first connect succeeded."""
        self._said.clear()
        if self.down:
            self.down = False
            _log.info("nats available again", of=self._what)


async def nats_connection(url: str, what: str) -> tuple[NATS, asyncio.Task[None]]:
    """A NATS client for ``url`` and the task connecting it in the background.

    The caller serves at once: the task retries every :data:`NATS_RETRY_S` seconds for
    as long as the server cannot be reached (``nats.connect`` with unlimited attempts
    returns only once connected, so a process that awaited it never served while NATS
    was down at its start), the outage logged once (:class:`_NatsOutages`, ``what``
    names the user in the log), and the client reconnects by itself after a later
    outage. Await the task before using the client; when done, cancel it and
    :func:`close_nats` the client.

    Raises:
        nats.errors.Error: ``url`` is malformed (e.g. a port past 65535), at once, as the
            connect's first step refuses it, quoting ``url`` without its credentials (a
            failure of the connect later, no outage, is logged as an error: ``nats
            connect failed``)."""
    nc = NATS()
    outages = _NatsOutages(what)

    async def connect() -> None:
        wait: Any = NATS_RETRY_S  # nats-py annotates an int; it sleeps a float
        try:
            await nc.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=wait,
                             error_cb=outages.error, reconnected_cb=outages.connected)
        except Exception as exc:  # a configuration nats-py will not retry: nobody awaits
            _log.error("nats connect failed", of=what, error=f"{type(exc).__name__}: {exc}")
            raise
        await outages.connected()

    task = asyncio.create_task(connect(), name=f"nats-connect-{what}")
    await asyncio.sleep(0)  # its first step reads the URL: a malformed one fails here
    if task.done() and not task.cancelled() and (refused := task.exception()) is not None:
        if not isinstance(refused, nats.errors.Error):
            raise refused
        # nats-py raised it while handling urllib's ValueError, whose message quotes what
        # it took for the port: a piece of a password holding '/', '?' or '#' unencoded
        raise nats.errors.Error(
            f"{refused} {_shown_url(url)!r} (a password holding '/', '?' or '#'"
            f" percent-encoded: %2F, %3F, %23)") from None
    return nc, task


#: Longest a NATS client's close may take at shutdown (seconds).
NATS_CLOSE_S = 5.0


async def close_nats(nc: NATS) -> None:
    """Close ``nc`` from :func:`nats_connection`, connected or not (nats-py's ``close``
    asserts on a client whose connect failed before it began), within
    :data:`NATS_CLOSE_S` (its flush and socket close have no bound of their own; past
    it, logged ``nats close timed out``, the process goes on stopping).

    A client that lost its server and buffered what was published since (an event, an
    ack, a fetch: kept for the reconnect) is closed too: nats-py's ``close`` flushes that
    buffer to the dead connection and raises (asyncio's ``ConnectionResetError``, or on
    Python 3.12 and later ``TypeError`` "'NoneType' object is not callable" from its
    closed transport's ``writelines``; uvloop's ``RuntimeError`` "the handler is
    closed"), which ended the service's
    shutdown in a traceback; what it held is lost either way (an event stays pending in
    the outbox until acked, an unacked delivery is redelivered)."""
    try:
        async with asyncio.timeout(NATS_CLOSE_S):
            await nc.close()
    except AssertionError:
        pass
    except (ConnectionError, RuntimeError, TypeError):  # the buffer flushed to a lost
        pass  # connection (TypeError: 3.12+'s closed selector transport)
    except TimeoutError:
        _log.warning("nats close timed out", timeout_s=NATS_CLOSE_S)


async def ensure_order_stream_when_connected(connecting: asyncio.Task[None],
                                             js: JetStreamContext) -> None:
    """Wait for ``connecting`` (see :func:`nats_connection`), then
    :func:`ensure_order_stream`, tried again every :data:`STREAM_RETRY_S` seconds while
    JetStream refuses or does not answer (logged once: ``order stream not ready``).

    A cancel of the caller ends it, also one that nats-py lost: awaited directly, the
    connecting task took the caller's cancel as its own, and a connect just completing
    swallowed it (its ``wait_for``, Python 3.11), as a JetStream request just answered
    can; the caller then went on to relay or consume, and a process stopping within
    milliseconds of its start waited :data:`CANCEL_WAIT_S` and logged ``task did not end
    when cancelled`` (the order service), or did not stop (the projection). Cancel
    ``connecting`` itself as well."""
    await asyncio.shield(connecting)
    logged = False
    task = asyncio.current_task()
    while True:
        made = False
        try:
            await ensure_order_stream(js)
            made = True
        except Exception as exc:  # JetStream off, not answering, refusing the config
            if not logged:
                logged = True
                _log.warning("order stream not ready, retrying", stream=STREAM,
                             error=f"{type(exc).__name__}: {exc}")
        if task is not None and task.cancelling():  # a cancel the request swallowed
            raise asyncio.CancelledError
        if made:
            return
        await asyncio.sleep(STREAM_RETRY_S)


#: Pause between two counts of the outbox while the relay waits for NATS (seconds).
PENDING_COUNT_S = 5.0


async def _count_pending(store: Store, publisher: Publisher, relay: OutboxRelay) -> None:
    """Set ``meshkit_messaging_outbox_pending`` from the store every
    :data:`PENDING_COUNT_S` seconds until cancelled: the relay's rounds set it, and none
    runs before NATS answers, so it read the 0 it was made with while the outbox grew
    (an alert on it silent for a whole outage at the start). A failure skips a count."""
    count = getattr(store, "count_pending", None)  # as OutboxRelay: a store may lack it
    if not publisher.options.metrics or count is None:
        return
    gauge = messaging_metrics(publisher.options.registry).outbox_pending.labels(
        relay.options.name)
    while True:
        with contextlib.suppress(Exception):  # never in the relay's way (it awaits us)
            gauge.set(await count())
        await asyncio.sleep(PENDING_COUNT_S)


#: How long a stop waits for each of its tasks to end once cancelled (seconds).
CANCEL_WAIT_S = 5.0


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, :data:`CANCEL_WAIT_S` at most: one still
    running then (nats-py's connect, retrying a server that refuses the credentials,
    once outlived its cancel: a relay's stop hung until pytest's timeout) is logged
    (``task did not end when cancelled``) and left; the exception a task ended with, other
    than its cancel, is raised, as an await of it raises it."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
    for task in pending:
        _log.warning("task did not end when cancelled", task=task.get_name(),
                     timeout_s=CANCEL_WAIT_S)
    for task in tasks:
        if task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def outbox_relay(store: Store, nats_url: str | None, signer: MessageSigner | None,
                       options: RelayOptions | None = None, *,
                       retention_s: float | None = OUTBOX_RETENTION_S,
                       ) -> AsyncIterator[OutboxRelay | None]:
    """Run the order store's outbox relay to ``nats_url`` for the body of the ``with``
    (yields ``None`` and does nothing when ``nats_url`` is empty), with ``options``
    (default: :class:`~meshkit.messaging.RelayOptions` named ``orders``). The relay keeps
    retrying while NATS is down; events wait in the outbox meanwhile. Beside it,
    :func:`purge_sent_events` deletes the events sent more than ``retention_s`` seconds
    ago (default :data:`OUTBOX_RETENTION_S`; None: keep them for ever).

    The body starts at once, whether or not NATS answers (:func:`nats_connection`):
    PlaceOrder needs only the store, and the relay publishes once NATS is reachable and
    the stream made (:func:`ensure_order_stream_when_connected`). Raises ``ValueError``
    for a ``retention_s`` that is not ``None`` nor a finite number > 0 and at most
    :data:`MAX_RETENTION_S`, at once (not from the purge task at the relay's stop)."""
    if retention_s is not None:
        _check_retention_s(retention_s)
    if not nats_url:
        yield None
        return
    nc, connecting = await nats_connection(nats_url, "outbox relay")
    js = nc.jetstream()
    publisher = Publisher(js, PublishOptions(stream=STREAM, signer=signer))
    relay = OutboxRelay(store, publisher, options or RelayOptions(name="orders"))

    async def run() -> None:
        counting = asyncio.create_task(_count_pending(store, publisher, relay))
        try:
            await ensure_order_stream_when_connected(connecting, js)
        finally:
            await _cancel([counting])
        await relay.run()

    tasks = [connecting, asyncio.create_task(run(), name="outbox-relay")]
    if retention_s is not None:
        tasks.append(asyncio.create_task(
            purge_sent_events(store, retention_s=retention_s), name="outbox-purge"))
    try:
        yield relay
    finally:
        await _cancel(tasks)
        await close_nats(nc)
