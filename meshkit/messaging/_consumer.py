"""A durable JetStream pull consumer with explicit ack, bounded redelivery and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NoReturn

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, StreamInfo
from nats.js.client import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from meshkit._config import check_bool, check_instance, check_int, check_secret_holder
from meshkit.auth import PeerIdentity
from meshkit.errors import ConfigError
from meshkit.messaging._identity import HDR_SENT_AT_MS, MessageIdentityError, MessageVerifier
from meshkit.messaging._publisher import (
    MAX_CONTROL_LINE,
    MSG_ID_HEADER,
    check_nats_filter_subject,
    check_nats_subject,
    check_telemetry_fields,
    control_line_fits,
    max_payload,
    message_size,
)
from meshkit.messaging._stream import (
    MAX_DURATION_S,
    check_duration_s,
    check_jetstream,
    check_nats_name,
)
from meshkit.messaging._telemetry import extract, log_message, messaging_metrics, tracer
from meshkit.observability._logging import get_logger
from meshkit.resilience import Backoff

__all__ = ["Consumer", "ConsumerOptions", "Delivery", "Handler", "PoisonMessage",
           "is_dead_letter"]

_NATS_PREFIX = "nats-"

#: A header name nats-py sends (an HTTP token, RFC 9110 section 5.6.2; nats-py's
#: ``_HEADER_KEY_RE``, else ``BadHeaderError``). Other clients send any name without
#: whitespace or a colon, and nats-py's parser takes it.
_SENDABLE_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

_log = get_logger("meshkit.messaging")

#: Headers a dead-lettered message carries besides its own.
DLQ_REASON_HEADER = "Meshkit-Dead-Letter-Reason"
DLQ_SUBJECT_HEADER = "Meshkit-Original-Subject"
#: The original ``Nats-Msg-Id`` (the event id): with ``Meshkit-Original-Subject``, what the
#: publisher's signature binds, so a dead letter can be verified.
DLQ_MSG_ID_HEADER = "Meshkit-Original-Msg-Id"
DLQ_DELIVERIES_HEADER = "Meshkit-Deliveries"
#: ``<stream>/<durable>`` of the consumer that dead-lettered the message.
DLQ_CONSUMER_HEADER = "Meshkit-Dead-Letter-Consumer"

#: Consecutive empty fetches after which :meth:`Consumer.run_once` asks the server
#: whether its durable consumer still exists (one ``consumer_info`` request): a pull
#: request to a deleted consumer or stream just times out (nats-py takes the 404 / 409
#: status for "no messages"), so only asking tells a lost durable from a quiet stream.
_CHECK_AFTER_EMPTY_FETCHES = 5

#: How much longer than its ``expires`` the consumer waits for a pull's ending status
#: before it stops waiting for it anyway (a slow or lost connection).
_PULL_GRACE_S = 0.5
#: How often a pull waiting for messages looks whether its connection began to drain
#: (``nc.drain()``), and how long each of the two round trips it then waits for may
#: take (seconds).
_DRAIN_CHECK_S = 0.25
_DRAIN_FLUSH_S = 2
#: The ``expires`` of a pull that takes what is waiting (see :meth:`Consumer.run_once`):
#: the server ends it at once with a ``408`` when it delivered less than its batch, but
#: only at its expiry when the durable's ``max_ack_pending`` held the rest back, and the
#: consumer waits for that end rather than leave a pull on the server.
_TAKE_EXPIRES_S = 0.25
#: The statuses JetStream ends a pull with (ADR-13): ``404 No Messages``, ``408 Request
#: Timeout`` (its ``expires`` passed, or a no-wait pull delivered fewer than its batch:
#: nothing more is waiting), ``409`` (the consumer was deleted, or the request exceeds a
#: limit of the durable's, e.g. ``Exceeded MaxRequestBatch of 4``). ``100`` is an idle
#: heartbeat.
_NO_MESSAGES, _REQUEST_TIMEOUT, _HEARTBEAT = "404", "408", "100"
#: The description of the ``409`` that ends a pull whose next message would pass its
#: ``max_bytes`` (nats-server; the message stays for the next pull).
_MAX_BYTES_DESCRIPTION = "Message Size Exceeds MaxBytes"
#: The ``409`` a pull with a ``max_bytes`` above the durable's own ``max_bytes``
#: (``MaxRequestMaxBytes``, set by whoever made it) gets.
_MAX_REQUEST_BYTES_PREFIX = "Exceeded MaxRequestMaxBytes of "
#: The ``409`` a pull for more than the durable's ``max_batch`` gets (nats-server).
_MAX_BATCH_PREFIX = "Exceeded MaxRequestBatch of "
#: The ``409`` a pull waiting longer than the durable's ``max_expires`` gets; the limit
#: as a Go duration (``500ms``, ``1m30s``).
_MAX_EXPIRES_PREFIX = "Exceeded MaxRequestExpires of "
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
              "h": 3600.0}

#: The shortest ``fetch_timeout_s``: nats-server drops a pull whose ``expires`` passed
#: before it read the request, unanswered (2.9.10: at 1e-5 s or less a consumer never
#: handled a waiting message; at 1e-4 s it did, 0.5 s late; at 1 ms at once).
_MIN_FETCH_TIMEOUT_S = 0.001

#: While a fetched batch is handled, its messages still waiting their turn get an
#: in-progress ack (``+WPI``, which restarts a message's ack wait) every ``ack_wait_s``
#: times this fraction.
_KEEP_WAITING_EVERY = 0.5
#: A message whose turn comes more than ``ack_wait_s`` times this fraction after its last
#: (re)start of the ack wait gets an in-progress ack before its handler runs, so the
#: handler has at least 90 % of ``ack_wait_s``; a batch handled faster sends none.
_REFRESH_TURN_AFTER = 0.1


def is_dead_letter(headers: Mapping[str, str] | None) -> bool:
    """Whether a message with these headers is a dead letter written by a
    :class:`Consumer`: it carries ``Meshkit-Dead-Letter-Consumer``, or (a dead letter of
    an older meshkit, whose consumers did not write that header: still stored in a
    dead-letter stream after an upgrade) both ``Meshkit-Original-Subject`` and
    ``Meshkit-Dead-Letter-Reason``."""
    return headers is not None and (DLQ_CONSUMER_HEADER in headers or (
        DLQ_SUBJECT_HEADER in headers and DLQ_REASON_HEADER in headers))


def _nak_delay_s(delay_s: float) -> float:
    """A nak's redelivery delay, seconds, within what JetStream takes: at most
    :data:`~meshkit.messaging._stream.MAX_DURATION_S` (2**63 - 1 ns, about 292 years).
    nats-py sends ``int(delay * 10**9)`` nanoseconds: nats-server (2.9) cannot read a
    delay past int64 and redelivers the message at once, and past ~1.8e299 s the
    conversion raises ``OverflowError`` (a ``Backoff`` with ``max_delay_s=math.inf``
    draws up to the largest float)."""
    return min(delay_s, MAX_DURATION_S)


def _original_msg_id(headers: Mapping[str, str]) -> str:
    """The original event id of a dead letter: ``Meshkit-Original-Msg-Id``; without it
    (written by an older meshkit) its ``Nats-Msg-Id`` without the prefix that consumer
    put before the event id, ``dlq-<stream>.<durable>-`` (its
    ``Meshkit-Dead-Letter-Consumer`` naming ``<stream>/<durable>``) or ``dlq-``; ``""``
    when there is none (the original had no ``Nats-Msg-Id``)."""
    original = headers.get(DLQ_MSG_ID_HEADER)
    if original is not None:
        return original
    dead_id = headers.get(MSG_ID_HEADER, "")
    stream, sep, durable = headers.get(DLQ_CONSUMER_HEADER, "").partition("/")
    if sep and dead_id.startswith(tagged := f"dlq-{stream}.{durable}-"):
        return dead_id[len(tagged):]
    return dead_id[4:] if dead_id.startswith("dlq-") else ""


class _ForeignDuplicate(Exception):
    """The dead-letter stream already holds another message under the dead letter's id."""


class _NotAsyncHandler(TypeError):
    """The handler's call returned no awaitable (a plain ``def``, a class given for an
    instance), or its awaitable returned work unrun (see :func:`_unrun`): a coroutine or
    another awaitable (an ``await`` forgotten), an async iterator (an ``async for``
    forgotten): a fault of the code, not of the message, so it ends :meth:`Consumer.run`
    rather than count as the message's failure; ``reason``: its short form, for the
    delivery's report; ``publisher``: the message's verified publisher, for the report
    (set by :func:`_give_back`)."""

    def __init__(self, message: str, reason: str = "handler returned no awaitable") -> None:
        super().__init__(message)
        self.reason = reason
        self.publisher: PeerIdentity | None = None


class _SettleFailed(Exception):
    """An ack, nak or term (``what``) of a delivery raised ``__cause__`` (e.g. the
    connection closed): :meth:`Consumer.handle` reports the delivery with it, then
    raises the cause."""

    def __init__(self, what: str, publisher: PeerIdentity | None) -> None:
        super().__init__(what)
        self.what = what
        self.publisher = publisher


async def _settle(what: str, call: Awaitable[None],
                  publisher: PeerIdentity | None = None) -> None:
    """Await ``msg.ack()`` / ``nak()`` / ``term()`` (``what``: its name) of a delivery
    from ``publisher``; what it raises comes out as :class:`_SettleFailed`
    (``CancelledError`` as it is)."""
    try:
        await call
    except Exception as exc:
        raise _SettleFailed(what, publisher) from exc


async def _give_back(msg: Msg, publisher: PeerIdentity | None,
                     fault: _NotAsyncHandler) -> NoReturn:
    """Nak ``msg`` (run once more, no ack: the message is given back) and raise ``fault``,
    the handler's, which ends :meth:`Consumer.run`. A nak that fails (the connection
    closed meanwhile) is ``fault``'s cause and the tail of its reason, not the error
    run() ends with: the handler's fault is what its author must see (JetStream
    redelivers the message after ``ack_wait_s``)."""
    fault.publisher = publisher  # reported as any outcome of a verified message
    try:
        await _settle("nak", msg.nak(), publisher)
    except _SettleFailed as exc:
        fault.reason = f"{fault.reason}; nak failed: {type(exc.__cause__).__name__}"
        raise fault from exc.__cause__
    raise fault


def _unrun(returned: object) -> _NotAsyncHandler | None:
    """The fault of a handler whose awaitable returned ``returned``, or ``None``. A
    handler returns ``None``; work it returned instead of running it is a forgotten
    ``await`` or ``async for``, which the ack would have reported done: a coroutine
    (``return work(d)``: closed, it never runs), another awaitable (``return
    asyncio.gather(...)``, a ``Task``, ``loop.run_in_executor(...)``, a grpc.aio call:
    cancelled, so its work does not run on beside the redelivered message, its failure
    unseen), an async generator or another async iterator (``return rows(d)``: never
    iterated). ~0.3 us for ``None``."""
    if returned is None:
        return None
    if inspect.iscoroutine(returned):  # ``return work(d)``: an await forgotten
        returned.close()  # never runs: no 'never awaited' warning either
        return _NotAsyncHandler(
            "the handler's coroutine returned a coroutine it did not await "
            "(return work(d) for return await work(d)): that work never ran",
            "handler returned a coroutine unawaited")
    kind_of = type(returned)  # protocol methods are the type's
    if inspect.isasyncgen(returned) or (hasattr(kind_of, "__anext__")
                                        and hasattr(kind_of, "__aiter__")):
        kind = "an async generator" if inspect.isasyncgen(returned) else (
            f"an async iterator ({kind_of.__name__})")
        return _NotAsyncHandler(
            f"the handler's coroutine returned {kind} it did not iterate (return "
            "rows(d) for async for ... in rows(d)): that work never ran",
            f"handler returned {kind.split(' (')[0]} unrun")
    if inspect.isawaitable(returned):  # a Future, a Task, a grpc.aio call
        cancel = getattr(returned, "cancel", None)
        if callable(cancel):  # its work stopped: the message is redelivered
            with contextlib.suppress(Exception):
                cancel()
        return _NotAsyncHandler(
            f"the handler's coroutine returned an awaitable ({kind_of.__name__}) "
            "it did not await (return fut for return await fut): the message would "
            "have been acked before that work was done; it was cancelled",
            "handler returned an awaitable unawaited")
    return None


class _Pulls:
    """A consumer's pull requests (JetStream's pull API, ADR-13), made by meshkit rather
    than nats-py's ``fetch`` (which can leave a pull waiting on the server, and then
    waits for the rest of its batch until its timeout: see :meth:`Consumer.run_once`).

    Each pull is a publish of ``{"batch": n, "no_wait": true, "expires": ns}`` to
    ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` with a reply subject of its own,
    ``<inbox>.<n>``, under one wildcard subscription (as nats.java's pull subscriptions
    do). The server delivers what is waiting at once and ends the pull with a ``408``
    when that is less than the batch; with nothing waiting, it waits up to ``expires``
    for the first message, then does the same (nats.java's ``pullNoWait(batch,
    expires)``; checked on nats-server 2.9.10). So a pull ends as soon as it brought
    something, and no pull waits on the server after it. A status is matched to its
    pull by its subject: one that comes late for a pull no longer waited for is
    ignored. A message is handled whichever pull it came for. Each pull asks for at
    most the bytes the inbox still holds (``max_bytes``: its nats-py pending limit, 128
    MiB, less what waits in it), so a batch of large messages is not partly dropped by
    nats-py as a slow consumer (a dropped message stays delivered and unacked, held for
    its ack wait and counted as a delivery); a pull that reaches it ends with a ``409
    Message Size Exceeds MaxBytes``, an end like a ``408``. A durable with a
    ``max_bytes`` of its own below that refuses such pulls (``409 Exceeded
    MaxRequestMaxBytes``): its pulls are then sent without ``max_bytes`` (logged once).

    Uses nats-py's ``PullSubscription._nc`` and ``_nms`` (the request subject), there
    since nats-py 2.0."""

    __slots__ = ("_inbox", "_n", "_nc", "_nms", "_prefix", "limit_bytes")

    def __init__(self, sub: JetStreamContext.PullSubscription, inbox: Subscription,
                 prefix: str) -> None:
        self._nc = sub._nc
        self._nms = sub._nms
        self._inbox = inbox
        self._prefix = prefix
        self._n = 0
        #: whether pulls send max_bytes (False once the durable refused it)
        self.limit_bytes = True

    @classmethod
    async def open(cls, sub: JetStreamContext.PullSubscription) -> _Pulls:
        """Subscribe the pulls' inbox (``_INBOX.<nuid>.*``) on ``sub``'s connection."""
        prefix = sub._nc.new_inbox()
        inbox = await sub._nc.subscribe(f"{prefix}.*")
        return cls(sub, inbox, prefix)

    @property
    def reply_prefix(self) -> str:
        """``<inbox>``: pull ``n`` is answered on ``<inbox>.<n>`` (n from 1)."""
        return self._prefix

    async def close(self) -> None:
        """Unsubscribe the inbox and give back (nak: redelivered at once, to another
        process of the durable) the messages still in it, an earlier pull's that came
        after it was no longer waited for: dropped with the inbox, they would be held
        for their ack wait. Raises nothing but ``CancelledError``."""
        with contextlib.suppress(nats.errors.Error):
            await self._inbox.unsubscribe()  # no message comes in after this
        left: list[Msg] = []
        self.queued(self._inbox._pending_queue.qsize(), left)
        for msg in left:
            with contextlib.suppress(Exception):
                await msg.nak()

    def hold(self) -> asyncio.Queue[Msg]:
        """Keep a drain of the connection (``nc.drain()``) waiting until the returned
        queue's ``task_done()`` is called: nats-py drains the inbox by waiting until its
        queue has no unfinished item, and closes the connection then, while messages
        taken out of it may still be handled (their acks would fail). Uses
        ``asyncio.Queue``'s ``_unfinished_tasks`` and ``_finished``, as ``put`` does."""
        queue: asyncio.Queue[Msg] = self._inbox._pending_queue
        queue._unfinished_tasks += 1  # type: ignore[attr-defined]
        queue._finished.clear()  # type: ignore[attr-defined]
        return queue

    def queued(self, limit: int, msgs: list[Msg]) -> None:
        """Move up to ``limit`` messages already in the inbox (an earlier pull's, which
        came after it was no longer waited for) to ``msgs``, statuses dropped, without
        waiting."""
        inbox = self._inbox
        queue = inbox._pending_queue
        while len(msgs) < limit:
            try:
                msg = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            inbox._pending_size -= len(msg.data)
            queue.task_done()
            if not _status(msg):
                msgs.append(msg)

    async def pull(self, batch: int, wait_s: float, msgs: list[Msg]) -> Msg | bool:
        """Pull up to ``batch`` messages into ``msgs``, the server waiting up to
        ``wait_s`` (the pull's ``expires``) for the first one, and wait for the pull's
        end: ``batch`` messages, or its own ``404``/``408`` or ``409 Message Size
        Exceeds MaxBytes`` (True); nothing within
        ``wait_s + _PULL_GRACE_S`` (False if no message came either: a deleted durable,
        a lost connection); or the status message that refused it (a ``409`` or another
        code). A message counts whichever pull brought it. With ``limit_bytes`` False
        no ``max_bytes`` is sent (a durable whose own ``max_bytes`` refuses ours).
        Raises ``nats.errors.ConnectionDrainingError``, sending nothing, while the
        connection drains (its inbox is unsubscribed: what the pull brought would be
        held for its ack wait). A pull under way when the drain begins stops waiting
        within ``_DRAIN_CHECK_S``: after two round trips (the server has then sent all
        it sent before the inbox's unsubscribe) it takes what came and ends (True);
        waited for until its end, nothing could end it early, and the drain, held by
        :meth:`Consumer.run_once`, took ``wait_s`` and its grace (or nats-py's
        ``drain_timeout``)."""
        if self._nc.is_draining:  # its inbox is unsubscribed: what it brought, lost
            raise nats.errors.ConnectionDrainingError
        self._n += 1
        reply = f"{self._prefix}.{self._n}"
        request = {"batch": batch, "no_wait": True, "expires": max(int(wait_s * 1e9), 1)}
        inbox = self._inbox
        if self.limit_bytes and inbox._pending_bytes_limit > 0:
            # what the inbox still holds: nats-py drops a message past its pending limit
            # (a slow consumer), and a dropped one stays delivered, unacked, for its ack
            # wait; the server counts more bytes per message than nats-py does
            request["max_bytes"] = max(
                inbox._pending_bytes_limit - inbox._pending_size - 1, 1)
        await self._nc.publish(self._nms, json.dumps(request).encode(), reply)
        end = time.monotonic() + wait_s + _PULL_GRACE_S
        want = len(msgs) + batch
        while len(msgs) < want:
            left = end - time.monotonic()
            try:
                msg = await self._inbox.next_msg(timeout=max(min(left, _DRAIN_CHECK_S), 0))
            except nats.errors.TimeoutError:
                if left <= _DRAIN_CHECK_S:
                    return bool(msgs)
                if self._nc.is_draining:
                    await self._drained(want, msgs)
                    return True
                continue
            status = _status(msg)
            if not status:
                msgs.append(msg)
            elif msg.subject != reply or status == _HEARTBEAT:
                continue  # an earlier pull's (stopped waiting for), or an idle heartbeat
            elif status in (_NO_MESSAGES, _REQUEST_TIMEOUT) or _full(msg):
                return True
            else:
                return msg
        return True

    async def _drained(self, want: int, msgs: list[Msg]) -> None:
        """Once the connection drains: wait two round trips (nats-py writes a ping at
        once but the inbox's unsubscribe through its flusher, so the first ping can go
        before it), then move what came to ``msgs`` (up to ``want`` in all)."""
        for _ in range(2):
            with contextlib.suppress(nats.errors.Error):
                await self._nc.flush(timeout=_DRAIN_FLUSH_S)
        self.queued(want, msgs)


def _full(status: Msg) -> bool:
    """Whether ``status`` is the ``409 Message Size Exceeds MaxBytes`` that ends a pull
    whose next message would pass its ``max_bytes``: an end like a ``408``, the message
    left for the next pull."""
    headers = status.headers or {}
    return str(headers.get("Description") or "").startswith(_MAX_BYTES_DESCRIPTION)


def _status(msg: Msg) -> str | None:
    """A JetStream status message's code (``"404"``, ``"408"``, ...), None for a
    message. A stream's message comes with a reply subject (``$JS.ACK...``, to ack it)
    and a status without one; the ``Status`` header alone does not tell them apart: a
    publisher's own ``Status`` header (``Status: shipped``) arrives as it is."""
    headers = msg.headers
    return headers.get("Status") if headers and not msg.reply else None


@dataclass(slots=True)
class _Batch:
    """A fetched batch being handled: ``msgs[turn]`` is handled since ``turn_started``,
    ``msgs[turn + 1:]`` wait, their ack wait last (re)started at ``touched`` (all
    :func:`time.monotonic`)."""

    msgs: list[Msg]
    touched: float
    turn: int = 0
    turn_started: float = 0.0


async def _in_progress(msg: Msg) -> bool:
    """Send ``msg``'s in-progress ack (``+WPI``: JetStream restarts its ack wait; one
    publish, no reply awaited); False if the connection refused it (closed, draining,
    buffer full): the message is then redelivered after its ack wait, as without."""
    try:
        await msg.in_progress()
    except nats.errors.Error:
        return False
    return True


class PoisonMessage(Exception):
    """Raised by a handler for a message that can never be handled (undecodable, invalid):
    it goes to the dead-letter subject at once instead of being redelivered."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a :class:`Consumer` handler.

    Attributes:
        subject: the subject it was published to.
        data: the payload.
        msg_id: its ``Nats-Msg-Id`` (the event id: handlers dedupe on it), or ``""``.
        headers: all its headers.
        publisher: the verified publisher (``None`` without a verifier). For a dead
            letter (only a consumer with ``ConsumerOptions.dead_letters=True`` takes
            one as verified) it vouches for ``data`` published as ``original_msg_id`` on
            ``original_subject``, not for ``subject`` nor for who dead-lettered it.
        delivery: 1 for the first delivery, 2+ for redeliveries.
        original_subject: for a dead letter (:func:`is_dead_letter`), the subject of
            the message it is the dead letter of (``Meshkit-Original-Subject``); ``""``
            for any other message.
        original_msg_id: for a dead letter, the original event id
            (``Meshkit-Original-Msg-Id``; in one an older meshkit wrote, which lacks that
            header, its ``Nats-Msg-Id`` without the ``dlq-<stream>.<durable>-`` or
            ``dlq-`` put before it; ``""`` if it had none); ``""`` otherwise.
    """

    subject: str
    data: bytes
    msg_id: str
    headers: Mapping[str, str]
    publisher: PeerIdentity | None
    delivery: int
    original_subject: str = ""
    original_msg_id: str = ""


Handler = Callable[[Delivery], Awaitable[None]]
"""A consumer's handler, an async callable (``async def``, or an object with an async
``__call__``; one that is not callable is a ``ConfigError`` when the :class:`Consumer` is
made, and one whose call returns no awaitable, a plain ``def``, or whose awaitable
returns a coroutine or another awaitable, ``return work(d)`` where ``return await
work(d)`` was meant (also ``asyncio.gather(...)``, a ``Task``, a grpc.aio call), or an
async iterator, ``return rows(d)`` where ``async for`` over it was meant, ends
:meth:`Consumer.run` with ``TypeError`` at the first message, which is nak'ed, not
counted as the message's failure, the returned coroutine closed unrun, a returned
future or call cancelled): returns to
ack; raises :class:`PoisonMessage` to dead-letter at once; raises anything else to have
the message redelivered after a backoff. That includes ``asyncio.CancelledError`` while
nobody cancelled the consumer's task (e.g. the handler awaited a future cancelled
elsewhere); when the task itself is being cancelled (``Task.cancelling()`` > 0) the error
propagates and the message is left unacked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerOptions:
    """A durable pull consumer and what :class:`Consumer` does with each delivery.

    Args:
        stream: the stream name.
        durable: the durable consumer name (its position survives restarts; several
            processes with one name share the work). Created with
            ``DeliverPolicy.ALL`` when it does not exist. Lost while the consumer runs
            (noticed at a durable check, see ``fetch_timeout_s``): deleted on its own
            (``nats consumer rm``), it is re-created with its config as last seen but
            ``DeliverPolicy.BY_START_SEQUENCE`` from its ack floor + 1 as last seen
            (messages acked since that check, and unacked ones, are delivered again;
            none is skipped); on a stream that is a new one (deleted and made again,
            a server restarted without its store: another ``created`` time), from
            the stream's start (see :meth:`Consumer.recreation_config`).
        filter_subject: subjects to consume (default ``None``: the whole stream; ``""``
            too), wildcards as whole tokens (``orders.*``, ``orders.>``); one JetStream
            would refuse (whitespace, an empty token, ``>`` before the last token, a
            wildcard character inside a token) is a ``ConfigError``.
        dead_letter_subject: where poison messages go (default ``None``:
            ``dlq.<stream>.<durable>``, see :meth:`dead_letter_for`). A dead letter is
            published to JetStream with the original headers, minus those in the
            ``Nats-`` namespace JetStream reserves for itself (``Nats-Expected-*``,
            ``Nats-Rollup``, ``Nats-TTL``...: copied, they would make JetStream refuse
            or reinterpret the dead letter), plus ``Meshkit-Dead-Letter-Reason``,
            ``Meshkit-Original-Subject``, ``Meshkit-Original-Msg-Id`` (the original
            ``Nats-Msg-Id``; with the subject, what a publisher's signature binds: a
            consumer with a ``verifier`` and ``dead_letters=True`` checks a dead letter
            against these two),
            ``Meshkit-Deliveries``, ``Meshkit-Dead-Letter-Consumer``
            (``<stream>/<durable>``) and ``Nats-Msg-Id: dlq-<stream>.<durable>-<event
            id>`` (so the dead letters of one event by several consumers are not
            dropped as duplicates of each other; for a message without
            ``Nats-Msg-Id``, ``dlq-<stream>.<durable>/<stream sequence>`` and an empty
            ``Meshkit-Original-Msg-Id``, so its dead letter is stored once too when a
            lost ``term`` has it dead-lettered again). A stream must capture the subject: if
            none does (or JetStream refuses it, or the payload with these headers is
            larger than the server's ``max_payload``: not sent, since the server would
            close the connection), the message is nak'ed instead, never dropped. The
            consumer acks messages on its own dead-letter subject without running the
            handler. A dead letter (:func:`is_dead_letter`: any consumer's, also one an
            older meshkit wrote without ``Meshkit-Dead-Letter-Consumer`` and
            ``Meshkit-Original-Msg-Id``; e.g. on a dead-letter processor's durable, or
            another durable's seen by a whole-stream consumer) is handled like any
            message, but is never dead-lettered again: when it fails for good
            (``PoisonMessage``, ``max_deliveries``, refused identity) it is ``term``'ed
            and logged (outcome ``terminated``, or ``refused``) and stays
            stored where it is; otherwise two consumers whose filters cover each
            other's dead-letter subjects would dead-letter each other's dead letters
            forever. A subject no message can be published to (a space or other
            whitespace, an empty token, a wildcard ``*`` / ``>``; or in JetStream's
            API, ``$JS.API.>``: each dead letter an API request), or longer than 3,840
            bytes (its protocol line would exceed the server's ``max_control_line``,
            4096, which closes the connection), is a ``ConfigError``, and so is a
            dead-letter subject (given, or the default) that is the
            ``filter_subject`` itself: every message would be acked unhandled.
        max_deliveries: deliveries of one message to the handler before it is
            dead-lettered (default 5, >= 1). The JetStream consumer's ``max_deliver``
            is unlimited (-1): the server never drops a message, the consumer counts
            deliveries itself. A delivery past ``max_deliveries`` means the handler
            never acked the earlier ones (it killed its process, or outran
            ``ack_wait_s``), or their dead letter could not be published: it is
            dead-lettered without running the handler, so a message that crashes
            every consumer process still reaches the dead letters. If that dead letter
            cannot be published either, the message is nak'ed with a delay of
            ``ack_wait_s`` (not ``backoff``: only the dead-letter publish is left to
            retry, and what makes it fail, a missing stream, lasts) and tried again.
            Unhandled messages fetched in the same batch as a crashing message count
            deliveries too, and so do those still waiting their turn when a consumer is
            stopped mid-batch (nak'ed, or held for ``ack_wait_s`` if it dies: JetStream
            counts every redelivery), so a message caught waiting in the batches of
            ``max_deliveries`` shutdowns (a rolling restart over a backlog) is
            dead-lettered without running the handler; use a smaller ``batch_size``
            (1 where that matters) or a larger ``max_deliveries``.
        backoff: delay before a failed message is redelivered (nak with delay; default
            full jitter 100 ms doubling to 5 s); a delay past JetStream's longest
            duration (2**63 - 1 ns, about 292 years) is sent as that.
        ack_wait_s: the server redelivers a message not acked in this time, e.g. after
            the consumer process died (default 30 s, > 0): it bounds each handler call,
            counted from the message's turn, not from the fetch of its batch. The
            messages of a batch waiting their turn get an in-progress ack (``+WPI``,
            which restarts the ack wait) every ``ack_wait_s / 2`` while the handler
            before them runs, and a message whose turn comes more than
            ``ack_wait_s / 10`` after its ack wait (re)started gets one as its handler
            starts, so a handler has at least 90 % of ``ack_wait_s`` however long the
            ones before it took, and another process of the durable is not handed the
            waiting messages meanwhile. A handler that outruns ``ack_wait_s`` has its
            message redelivered (it is not kept in progress), and the messages waiting
            behind it are no longer kept either: they are redelivered ``ack_wait_s``
            after their last in-progress ack, so a stuck handler does not hold its
            batch. When such a handler returns, the consumer still handles the rest of
            its batch (each re-claimed by an in-progress ack at its turn): one another
            process of the durable took meanwhile is handled by both (leaving them
            would instead count a delivery each time, and dead-letter unhandled the
            messages of a consumer whose handlers all outrun ``ack_wait_s``). A batch
            handled within ``ack_wait_s / 10`` sends none.
        batch_size: messages fetched per pull (default 64, >= 1).
        fetch_timeout_s: how long one pull waits for messages (default 1.0, at least
            0.001: nats-server drops a shorter pull unanswered, and the consumer would
            never see a message); after
            5 empty pulls in a row the consumer checks that its durable still exists
            (see :meth:`Consumer.run_once`), and keeps its ack floor. It and
            ``ack_wait_s`` are sent to JetStream as int64 nanoseconds (the pull's
            ``expires``, the durable's ``AckWait``), so both are at most 9223372036 s,
            about 292 years (infinity is refused).
        verifier: checks the publisher identity; a message that fails is dead-lettered
            as ``refused`` (default ``None``: no check). A message is verified against
            the subject it came on and its ``Nats-Msg-Id``, but a dead letter
            (:func:`is_dead_letter`) on a consumer with ``dead_letters=True`` against its
            original subject and event id. With a verifier, the consume
            metrics and the CONSUMER span name of a message whose publisher was not
            verified carry the consumer's ``filter_subject`` (``>`` without one), not
            the subject it came on: whoever sends unsigned messages cannot make a series
            per subject they make up (OpenTelemetry messaging conventions: a destination
            name not known to be low-cardinality is recorded as its template).
        dead_letters: whether this consumer reads dead letters (a dead-letter
            processor's durable; default ``False``). Only with a ``verifier``: the
            dead-letter headers naming the original subject and event id are not signed,
            so anyone who may publish to NATS can copy a signed event to another subject
            with them; a consumer that does not read dead letters verifies every message
            against the subject it came on, so such a copy is refused instead of handed
            to its handler as the publisher's event on that subject
            (``Delivery.subject``), and so is a genuine dead letter reaching it (refused,
            term'ed, the reason saying to set ``dead_letters=True``). With ``True``, a
            dead letter's publisher vouches for ``original_subject`` and
            ``original_msg_id``, not for ``subject``.
        tracing, metrics, access_log: a CONSUMER span per delivery (child of the
            publisher's), the consume metrics (labelled with at most 1,000 subjects per
            registry, publishes included, then ``other``: see
            :mod:`meshkit.messaging._telemetry`), one ``message`` access-log event per
            delivery (all default ``True``).
        registry: Prometheus registry (default the process's meshkit registry).
        tracer_provider: where spans go, an OpenTelemetry ``TracerProvider`` (default
            ``None``: the global provider).

    Raises:
        ConfigError: a value out of range, a ``filter_subject`` that is not a string, a
            flag that is not ``True``/``False`` (a string such as ``"false"`` included),
            a ``backoff`` that is not a ``Backoff``, a ``verifier`` that is not a
            ``MessageVerifier``, a ``registry`` that is not a ``CollectorRegistry``
            instance, or a ``tracer_provider`` that is not a ``TracerProvider`` (the
            field named, the value quoted).
    """

    stream: str
    durable: str
    filter_subject: str | None = None
    dead_letter_subject: str | None = None
    max_deliveries: int = 5
    backoff: Backoff = field(default_factory=lambda: Backoff(base_delay_s=0.1,
                                                              max_delay_s=5.0))
    ack_wait_s: float = 30.0
    batch_size: int = 64
    fetch_timeout_s: float = 1.0
    verifier: MessageVerifier | None = None
    dead_letters: bool = False
    tracing: bool = True
    metrics: bool = True
    access_log: bool = True
    registry: CollectorRegistry | None = None
    tracer_provider: Any = None

    def __post_init__(self) -> None:
        for name in ("stream", "durable"):
            value = getattr(self, name)
            check_nats_name(name, value)
        if self.dead_letter_subject is not None:
            check_nats_subject("dead_letter_subject", self.dead_letter_subject)
            # room for the request inbox and sizes on its HPUB line (see _dead_letter)
            if len(self.dead_letter_subject.encode()) > MAX_CONTROL_LINE - 256:
                raise ConfigError(
                    f"dead_letter_subject must be at most {MAX_CONTROL_LINE - 256} bytes "
                    "(a dead letter's protocol line would exceed the server's "
                    f"max_control_line, {MAX_CONTROL_LINE}: it closes the connection), "
                    f"got {len(self.dead_letter_subject.encode())}")
        check_int("max_deliveries", self.max_deliveries)
        check_int("batch_size", self.batch_size)
        # sent to JetStream in int64 nanoseconds (AckWait, a pull's expires)
        check_duration_s("ack_wait_s", self.ack_wait_s)
        check_duration_s("fetch_timeout_s", self.fetch_timeout_s)
        if self.fetch_timeout_s < _MIN_FETCH_TIMEOUT_S:
            raise ConfigError(f"fetch_timeout_s must be at least {_MIN_FETCH_TIMEOUT_S} s "
                              "(a pull whose expiry passed before the server read it is "
                              f"dropped unanswered), got {self.fetch_timeout_s!r}")
        if self.filter_subject is not None and not isinstance(self.filter_subject, str):
            raise ConfigError("filter_subject must be a subject (a str, wildcards allowed) "
                              f"or None, got {self.filter_subject!r}")
        if self.filter_subject is not None:
            check_nats_filter_subject("filter_subject", self.filter_subject)
            if self.filter_subject == self.dead_letter_for():
                # every message would be taken for its own dead letter: acked unhandled
                raise ConfigError(
                    f"the dead-letter subject {self.dead_letter_for()!r} is the "
                    "filter_subject: every message would be taken for the consumer's own "
                    "dead letter and acked without running the handler; use another "
                    "dead_letter_subject (or durable)")
        check_instance("backoff", self.backoff, Backoff, optional=False)
        check_secret_holder("verifier", self.verifier, MessageVerifier)
        check_bool("dead_letters", self.dead_letters)
        check_telemetry_fields(self)

    def dead_letter_for(self) -> str:
        """The dead-letter subject: ``dead_letter_subject`` or ``dlq.<stream>.<durable>``."""
        return self.dead_letter_subject or f"dlq.{self.stream}.{self.durable}"


class Consumer:
    """Runs a handler over a durable JetStream pull consumer.

    Per delivery: verify the publisher (if configured), run the handler under a CONSUMER
    span whose parent is the context in the headers, with the headers' W3C baggage as the
    current baggage (``opentelemetry.baggage.get_baggage`` in the handler sees it, and
    what the handler publishes or calls carries it on), then ack (explicit ack policy);
    a failure naks with ``backoff`` until ``max_deliveries``, then dead-letters; a
    :class:`PoisonMessage` or a refused identity dead-letters at once. A dead-lettered
    message is ``term``'ed only after the dead-letter publish was acked. Messages of a
    batch are handled one after another, in stream order, those waiting their turn kept
    from redelivery by in-progress acks (see ``ConsumerOptions.ack_wait_s``). A consumer
    killed mid-batch leaves its unacked messages to be redelivered within ``ack_wait_s``:
    handlers must be idempotent by :attr:`Delivery.msg_id`.

    A durable lost while it runs is re-created (:meth:`start`): deleted on its own, at
    its ack floor + 1 as the last durable check saw it (at :meth:`start`, after 5 empty
    pulls, after a refused pull), so only messages acked since that check are handled
    again; on a stream that was deleted and made again (another ``created`` time, or
    its last sequence below that floor), or when nothing was seen of it, from the
    stream's start (:meth:`recreation_config`). One warning tells where it starts
    (``start_seq``, or ``start``).

    Args:
        js: a ``nats`` JetStream context.
        handler: the :data:`Handler`, an async callable.
        options: :class:`ConsumerOptions`.

    Raises:
        ConfigError: ``js`` is no JetStream context (e.g. the connection ``nc``: pass
            ``nc.jetstream()``), or ``handler`` is not callable (their type named), or
            ``options`` no :class:`ConsumerOptions` (e.g. a dict; quoted).
    """

    def __init__(self, js: JetStreamContext, handler: Handler, options: ConsumerOptions) -> None:
        check_jetstream(js)
        check_instance("options", options, ConsumerOptions, optional=False)
        if not callable(handler):
            # its type only: an object's repr may carry a secret (as registry_argument)
            raise ConfigError("handler must be an async callable taking a Delivery, got "
                              f"a {type(handler).__name__}")
        self._js = js
        self._handler = handler
        self.options = options
        self._metrics = messaging_metrics(options.registry) if options.metrics else None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._pulls: _Pulls | None = None
        #: messages per pull: batch_size, less when the durable allows fewer (run_once)
        self._pull_batch = options.batch_size
        #: how long an idle pull waits: fetch_timeout_s, less if the durable allows less
        self._expires_s = options.fetch_timeout_s
        #: pulls send max_bytes (see _Pulls), unless the durable's own refuses it
        self._limit_bytes = True
        self._empty_fetches = 0
        #: what the last durable check (start, _rebind_if_gone) saw, for a re-creation:
        #: the durable's config, its ack floor (every stream sequence at or below it is
        #: acked), and the ``created`` time of the stream it was on (its identity)
        self._known_config: ConsumerConfig | None = None
        self._ack_floor: int | None = None
        self._stream_created: datetime | None = None
        #: why the durable was found gone (its 404), until start() re-creates or binds it
        self._lost: str | None = None
        #: a stream_info request failed (not a 404) once: logged
        self._stream_info_failed = False
        self._tag = f"{options.stream}/{options.durable}"
        self._dead_letter_subject = options.dead_letter_for()
        # what the metrics and span name of an unverified publisher's message carry
        # (messaging.destination.template): the subjects this consumer reads
        self._template = options.filter_subject or ">"

    def consumer_config(self) -> ConsumerConfig:
        """The durable consumer's configuration (explicit ack, ack wait, ``max_deliver``
        = -1, unlimited: the consumer counts deliveries against ``max_deliveries``
        itself, see :class:`ConsumerOptions`)."""
        o = self.options
        return ConsumerConfig(durable_name=o.durable, ack_policy=AckPolicy.EXPLICIT,
                              deliver_policy=DeliverPolicy.ALL, ack_wait=o.ack_wait_s,
                              max_deliver=-1, filter_subject=o.filter_subject)

    async def start(self) -> None:
        """Create (or bind to) the durable consumer; an existing one whose filter subject,
        ``max_deliver`` or ack wait differ from the options is updated to them (e.g. made
        by an older version with a bounded ``max_deliver``, or with another
        ``filter_subject``: nats-py's ``pull_subscribe`` binds to an existing durable
        as it is). JetStream allows these changes on a durable (NATS docs, JetStream
        consumers: "Filter Subject", "MaxDeliver", "AckWait" are editable); the update
        keeps the durable's other settings (``max_ack_pending``, ``max_waiting``, its
        description...: an operator's), but not a ``backoff`` (JetStream refuses one
        with ``max_deliver`` -1; the options' ``backoff`` applies); a changed
        filter keeps the durable's position, so messages of the new filter stored
        before it are not delivered (use a new durable name to read them). The update
        keeps the durable's deliver policy and start (JetStream refuses to change them).

        A durable that does not exist is created with :meth:`consumer_config`
        (``DeliverPolicy.ALL``: the whole stream), unless this consumer saw it before and
        lost it (see :meth:`_rebind_if_gone`): then it is re-created where it was, see
        :meth:`recreation_config`. One ``stream_info`` request (the stream's identity,
        its ``created`` time) and one ``consumer_info`` are made besides the binding; a
        ``stream_info`` that fails otherwise than with a 404 (a user without permission
        for ``$JS.API.STREAM.INFO``: it times out) is logged once and the stream taken
        as unknown (a lost durable is then re-created from the stream's start).
        nats-server 2.9.10 refuses every update of a ``BY_START_TIME`` durable (``start
        time can not be updated``, even with its own start time sent back): its
        ``max_deliver`` / ack wait change is logged, a filter change raises.

        Raises:
            ConfigError: the durable is a push consumer (``deliver_subject`` set: every
                pull would be refused), its ack policy is not explicit (none, all:
                JetStream cannot change it), or it is ``headers_only`` (no payloads),
                the durable and stream named.
            nats.js.errors.NotFoundError: the stream does not exist.
            nats.js.errors.Error: the server refused to create the durable, or to change
                the filter subject (consuming the old subjects would be silent data
                loss). A refused ``max_deliver`` / ack wait change is only logged.
        """
        o = self.options
        stream = await self._stream_info()
        try:
            await self._js.consumer_info(o.stream, o.durable)
        except nats.js.errors.NotFoundError:
            made, where = self.recreation_config(stream)
            await self._js.add_consumer(o.stream, made)
            if self._lost is not None:
                _log.warning("durable consumer or its stream is gone; re-creating it",
                             stream=o.stream, durable=o.durable, error=self._lost,
                             **where)
        else:
            if self._lost is not None:
                _log.warning("durable consumer or its stream is gone; re-creating it",
                             stream=o.stream, durable=o.durable, error=self._lost,
                             start="re-created by another process: bound to it")
        self._lost = None
        config = self.consumer_config()
        sub = await self._js.pull_subscribe(
            o.filter_subject or "", durable=o.durable, stream=o.stream, config=config)
        try:
            info = await sub.consumer_info()
            current = info.config
            self._check_pull(current)
            filter_changed = (current.filter_subject or None) != (o.filter_subject or None) \
                or bool(current.filter_subjects)
            if filter_changed or (current.max_deliver, current.ack_wait) != \
                    (config.max_deliver, config.ack_wait):
                # the durable's own config with the options' fields: JetStream resets
                # what an update leaves out (an operator's max_ack_pending) and refuses
                # a change of some (max_waiting, the deliver policy and start); its
                # backoff dropped (refused with max_deliver -1; the options' applies)
                own = self.consumer_config()
                config = replace(current, filter_subject=own.filter_subject,
                                 filter_subjects=None, max_deliver=own.max_deliver,
                                 ack_wait=own.ack_wait, backoff=None)
                try:
                    await self._js.add_consumer(o.stream, config)
                except nats.js.errors.Error as exc:
                    if filter_changed:
                        raise
                    _log.warning("could not update the durable consumer's config",
                                 durable=o.durable, max_deliver=current.max_deliver,
                                 error=str(exc)[:200])
                else:
                    if filter_changed:
                        _log.warning("durable consumer's filter subject changed",
                                     durable=o.durable, old=current.filter_subject,
                                     new=o.filter_subject)
                    current = config
            self._stream_created = stream.created if stream is not None else None
            self._remember(info, current)
            self._cap_batch(current.max_ack_pending)
            if self._pulls is not None:
                await self._pulls.close()
            self._pulls = await _Pulls.open(sub)
            self._pulls.limit_bytes = self._limit_bytes
        finally:
            # the pulls answer on their own inbox: the subscription's is never read; and
            # a start that failed past here keeps none (run() starts again each backoff)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._sub = sub

    def _check_pull(self, config: ConsumerConfig) -> None:
        """Raise ``ConfigError`` if the durable (its ``config``, e.g. made by another
        tool under this name) cannot work with this consumer, until it is deleted (so
        :meth:`run` ends rather than go on): a push consumer (``deliver_subject`` set:
        JetStream refuses every pull, ``409 Consumer is push based``), or an ack policy
        other than explicit (none: a failed message is never redelivered; all: an ack
        settles the nak'ed messages before it; JetStream refuses to change it, ``ack
        policy can not be updated``), or ``headers_only`` (no payload delivered)."""
        o = self.options
        if config.deliver_subject:
            raise ConfigError(f"durable {o.durable!r} of stream {o.stream!r} is a push "
                              "consumer (it has a deliver_subject): a Consumer pulls; "
                              "use another durable name, or delete that consumer")
        if config.headers_only:
            raise ConfigError(f"durable {o.durable!r} of stream {o.stream!r} is "
                              "headers_only: it delivers no payload (the handler would "
                              "get b''); use another durable name, or delete that "
                              "consumer")
        policy = config.ack_policy
        if policy is not None and policy != AckPolicy.EXPLICIT:
            raise ConfigError(f"durable {o.durable!r} of stream {o.stream!r} has ack "
                              f"policy {AckPolicy(policy).value}, not explicit: a Consumer "
                              "acks each message (at least once); use another durable "
                              "name, or delete that consumer")

    async def _stream_info(self) -> StreamInfo | None:
        """The stream's ``stream_info``, or None when the request failed otherwise than
        with a 404: a user without permission for ``$JS.API.STREAM.INFO`` (the server
        drops the request: it times out after the JetStream context's timeout), a slow
        server. Then the stream is unknown (a lost durable is re-created from the
        stream's start); logged once per consumer.

        Raises:
            nats.js.errors.NotFoundError: the stream does not exist."""
        try:
            return await self._js.stream_info(self.options.stream)
        except nats.js.errors.NotFoundError:
            raise
        except nats.errors.Error as exc:
            if not self._stream_info_failed:
                self._stream_info_failed = True
                _log.warning("stream info unavailable; a lost durable is re-created from "
                             "the stream's start", stream=self.options.stream,
                             durable=self.options.durable, error=type(exc).__name__,
                             description=str(exc)[:200])
            return None

    def recreation_config(self, stream: StreamInfo | None
                          ) -> tuple[ConsumerConfig, dict[str, Any]]:
        """The config :meth:`start` creates the missing durable with on ``stream`` (its
        ``stream_info``), and how it chose the start (the fields of its warning).

        When this consumer saw the durable before (at :meth:`start` or a durable check)
        on this same stream (the same ``created`` time, and its last sequence not below
        the durable's ack floor then): the durable's config as last seen (with the
        options' filter subject, ``max_deliver`` and ack wait, and without its
        ``backoff``: the server refuses one with ``max_deliver`` -1) but
        ``DeliverPolicy.BY_START_SEQUENCE`` from the ack floor + 1. Every message at or
        below the ack floor was acked; those above it (unacked, nak'ed, in backoff, or
        acked since that check) are delivered again: handlers are idempotent by
        :attr:`Delivery.msg_id`. Otherwise (a new stream: deleted and re-created, a
        server restarted without its store; or nothing known; or ``stream`` None, its
        ``stream_info`` unavailable): :meth:`consumer_config`, the stream from its
        start."""
        floor, known = self._ack_floor, self._known_config
        if stream is None:
            return self.consumer_config(), {"start": "stream unknown: from its start"}
        if floor is None or known is None or self._stream_created is None:
            return self.consumer_config(), {"start": "none known: from the stream's start"}
        if stream.created != self._stream_created or stream.state.last_seq < floor:
            return self.consumer_config(), {"start": "stream re-created: from its start"}
        own = self.consumer_config()
        config = replace(known, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                         opt_start_seq=floor + 1, opt_start_time=None,
                         durable_name=own.durable_name, name=own.durable_name,
                         ack_wait=own.ack_wait, max_deliver=own.max_deliver,
                         filter_subject=own.filter_subject, filter_subjects=None,
                         backoff=None)
        return config, {"start_seq": floor + 1}

    def _remember(self, info: ConsumerInfo, config: ConsumerConfig) -> None:
        """Keep the durable's ``config`` and ack floor as ``info`` (its
        ``consumer_info``) shows them, for a re-creation."""
        self._known_config = config
        if info.ack_floor is not None:
            self._ack_floor = info.ack_floor.stream_seq

    def _cap_batch(self, max_ack_pending: int | None) -> None:
        """Pull at most the durable's ``max_ack_pending`` at a time: a pull for more waits
        its expiry for messages the server does not send until acks make room."""
        most = max_ack_pending
        batch = self.options.batch_size
        self._pull_batch = min(batch, most) if most and most > 0 else batch

    async def aclose(self) -> None:
        """Stop pulling: unsubscribe the pulls' inbox, so a pull still waiting on the
        server takes no message for this consumer (JetStream skips a pull nobody listens
        to); messages waiting in the inbox unhandled (a late pull's) are nak'ed,
        redelivered at once. A message whose handler was interrupted is redelivered
        after its ack wait. :meth:`run` does it when cancelled; a later :meth:`run` or
        :meth:`run_once` binds the durable again. Raises nothing (but a cancel)."""
        pulls, self._pulls = self._pulls, None
        if pulls is not None:
            await pulls.close()

    async def run_once(self) -> int:
        """Pull one batch and handle it, its messages one after another, those waiting
        kept in progress (see ``ConsumerOptions.ack_wait_s``); returns how many messages
        were handled (0 when none came within ``fetch_timeout_s``).

        It takes what is waiting first: messages already in its inbox (an earlier pull's
        that came late) are handled without a pull; otherwise a pull (see
        :class:`_Pulls`) brings up to ``batch_size`` at once and ends. Only when none is
        waiting does it wait, up to ``fetch_timeout_s``, with a pull for ONE message,
        which ends as that comes. Each pull is waited for until the server ends it (a
        pull that the durable's ``max_ack_pending`` holds back ends at its 0.25 s
        expiry), so an event reaching an idle consumer is handled at once, a backlog is
        taken ``batch_size`` at a time, and no pull of this consumer's waits on the
        server while a handler runs (one left waiting takes the next message for a
        process that may be dying with it: nats-py's ``fetch`` could leave one, and then
        held an event up to ``fetch_timeout_s``). A durable whose ``max_ack_pending`` is
        below ``batch_size`` is pulled that many at a time (read at :meth:`start` and at
        each durable check); one whose ``max_batch`` or ``max_expires`` is below
        ``batch_size`` or ``fetch_timeout_s`` (the server refuses the pull: ``409
        Exceeded MaxRequestBatch of N`` / ``MaxRequestExpires of D``) is pulled within
        them from then on, logged once.

        Every 5th run in a row that brought nothing, and after a pull the server refused
        (any other ``409``, e.g. ``Consumer Deleted``), it checks that the durable still
        exists and re-creates it if not (a pull from a deleted durable is never
        answered). Messages a refused or cancelled pull had already brought are handled
        (refused) or nak'ed for redelivery at once (cancelled).

        Raises:
            nats.js.errors.APIError: the server refused the pull (the status as
                :meth:`~nats.js.errors.APIError.from_msg` reads it), after its messages
                were handled and the durable checked.
            nats.errors.Error: the connection is closed or failed.
        """
        if self._pulls is None:
            await self.start()
        pulls = self._pulls
        assert pulls is not None
        # a drain of the connection waits for this run's pulls and handlers (their acks)
        held = pulls.hold()
        try:
            msgs, ended = await self._pull_and_handle(pulls)
        finally:
            held.task_done()
        if isinstance(ended, Msg):
            if self._within_limits(ended):
                return len(msgs)
            await self._rebind_if_gone()
            raise nats.js.errors.APIError.from_msg(ended)
        if not msgs:
            self._empty_fetches += 1
            if self._empty_fetches >= _CHECK_AFTER_EMPTY_FETCHES:
                self._empty_fetches = 0
                await self._rebind_if_gone()
        return len(msgs)

    async def _pull_and_handle(self, pulls: _Pulls) -> tuple[list[Msg], Msg | bool]:
        """:meth:`run_once`'s pulls and handling: the messages, and how the pull ended
        (see :meth:`_Pulls.pull`)."""
        limit = self._pull_batch
        msgs: list[Msg] = []
        pulls.queued(limit, msgs)
        ended: Msg | bool = True
        if not msgs:
            try:
                ended = await pulls.pull(limit, min(_TAKE_EXPIRES_S, self._expires_s),
                                         msgs)
                if not msgs and ended is True:
                    ended = await pulls.pull(1, self._expires_s, msgs)
            except BaseException:
                # cancelled (or the connection failed) mid-pull: what came is given back
                # for redelivery now, not after its ack wait
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.nak()
                raise
        if msgs:
            self._empty_fetches = 0
            if len(msgs) == 1:
                await self.handle(msgs[0])
            else:
                await self._handle_batch(msgs)
        return msgs, ended

    def _within_limits(self, refusal: Msg) -> bool:
        """Whether ``refusal`` is ``409 Exceeded MaxRequestBatch of N`` or ``...
        MaxRequestExpires of D`` (the durable's ``max_batch`` / ``max_expires``, set by
        whoever made it, is below ``batch_size`` / ``fetch_timeout_s``): then pull
        within it from now on (logged) and say True."""
        headers = refusal.headers or {}
        description = str(headers.get("Description") or "")
        if description.startswith(_MAX_BATCH_PREFIX):
            try:
                most = int(description[len(_MAX_BATCH_PREFIX):])
            except ValueError:
                return False
            if not 1 <= most < self._pull_batch:
                return False
            _log.warning("durable consumer's max_batch is below batch_size; pulling fewer",
                         durable=self.options.durable, batch_size=self.options.batch_size,
                         max_batch=most)
            self._pull_batch = most
            return True
        if description.startswith(_MAX_REQUEST_BYTES_PREFIX) and self._limit_bytes:
            # below it, a message larger than its limit could never be pulled; without
            # max_bytes the durable takes the pull (nats-server checks only one sent)
            _log.warning("durable consumer's max_bytes refuses the pull's; pulling "
                         "without max_bytes", durable=self.options.durable,
                         max_bytes=description[len(_MAX_REQUEST_BYTES_PREFIX):][:32])
            self._limit_bytes = False
            if self._pulls is not None:
                self._pulls.limit_bytes = False
            return True
        if description.startswith(_MAX_EXPIRES_PREFIX):
            text = description[len(_MAX_EXPIRES_PREFIX):].strip()
            parts = _GO_DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                return False
            longest = sum(float(n) * _GO_UNIT_S[u] for n, u in parts)
            if not 0 < longest < self._expires_s:
                return False
            _log.warning("durable consumer's max_expires is below fetch_timeout_s; "
                         "pulls wait less", durable=self.options.durable,
                         fetch_timeout_s=self.options.fetch_timeout_s, max_expires=text)
            self._expires_s = longest * 0.9  # within it, whatever its rounding
            return True
        return False

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        """Handle ``msgs`` in order. JetStream started each one's ack wait when it
        delivered the batch, so the later ones would be redelivered (to another process
        of the durable, while this one is about to handle them) once the handlers before
        them took ``ack_wait_s`` together: a task sends the waiting ones in-progress
        acks every ``ack_wait_s / 2`` (:meth:`_keep_waiting`), and a message whose ack
        wait (re)started more than ``ack_wait_s / 10`` before its turn gets one as its
        turn comes. The task ends with the batch (also on a cancel or an error).

        A batch ended early (the consumer cancelled, a shutdown, also when a handler
        swallowed that cancel: the batch then ends at the next message's turn; the
        connection draining, ``nc.drain()``, at the next message's turn too, raising
        ``nats.errors.ConnectionDrainingError``; or an ack that failed with the
        connection) naks the messages still waiting their
        turn, so they are redelivered at once (to another process of the durable)
        rather than held for their ack wait, which the in-progress acks had just
        restarted; the message whose handler was interrupted is left unacked (see
        :data:`Handler`)."""
        ack_wait = self.options.ack_wait_s
        clock = time.monotonic
        batch = _Batch(msgs, touched=clock(), turn_started=clock())
        task = asyncio.current_task()
        nc = self._js._nc
        keeper = asyncio.create_task(self._keep_waiting(batch))
        try:
            for i, msg in enumerate(msgs):
                if i and task is not None and task.cancelling():
                    # a cancel the handler before swallowed (it returned: acked) is
                    # still this task's: the rest goes back now, not after the batch
                    raise asyncio.CancelledError
                if i and nc.is_draining:  # nc.drain(): the rest goes back while it can
                    raise nats.errors.ConnectionDrainingError
                now = clock()
                batch.turn, batch.turn_started = i, now
                if now - batch.touched > ack_wait * _REFRESH_TURN_AFTER:
                    await _in_progress(msg)
                await self.handle(msg)
        except BaseException:
            keeper.cancel()  # no in-progress ack after the naks
            for msg in msgs[batch.turn + 1:]:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise
        finally:
            # not awaited: awaiting here could swallow a cancel of this task
            keeper.cancel()

    async def _keep_waiting(self, batch: _Batch) -> None:
        """Every ``ack_wait_s / 2`` send the messages of ``batch`` waiting their turn
        an in-progress ack, unless the handler whose turn it is has run longer than
        ``ack_wait_s`` (its message is being redelivered: the ones behind it are let go
        too, rather than held by a stuck handler). Runs until cancelled."""
        ack_wait = self.options.ack_wait_s
        every = ack_wait * _KEEP_WAITING_EVERY
        clock = time.monotonic
        wake = batch.touched + every
        while True:
            await asyncio.sleep(max(wake - clock(), 0.0))
            now = clock()
            wake = now + every
            if now - batch.turn_started > ack_wait:  # stuck: let the batch go
                continue
            for msg in batch.msgs[batch.turn + 1:]:
                if not await _in_progress(msg):
                    break  # the connection refused it: try again next time
            else:
                batch.touched = now

    async def _rebind_if_gone(self) -> None:
        """Ask the server for the durable (``consumer_info``: one request; it also keeps
        the durable's ack floor and config for a re-creation); if it or its stream is
        gone (404: deleted, stream re-created, server restarted without its store), drop
        the subscription and :meth:`start` again, which re-creates the durable (logged
        once, with where it starts: see :meth:`recreation_config`) or raises while the
        stream is still missing (logged; the next :meth:`run_once` retries).

        A durable deleted on its own (``nats consumer rm``) is re-created at its ack
        floor + 1 as last seen, so the messages acked before that check are not
        delivered again; a stream that is a new one is consumed from its start."""
        sub = self._sub
        if sub is None:
            return
        try:
            info = await sub.consumer_info()
        except nats.js.errors.NotFoundError as exc:
            self._lost = str(exc)[:200]
            self._sub = None
            await self.aclose()
            try:
                await self.start()
            except nats.js.errors.NotFoundError:
                _log.warning("durable consumer or its stream is gone; re-creating it "
                             "once the stream exists", stream=self.options.stream,
                             durable=self.options.durable, error=self._lost)
                raise
        else:
            self._check_pull(info.config)
            self._remember(info, info.config)
            self._cap_batch(info.config.max_ack_pending)

    async def run(self) -> None:
        """Consume until cancelled; a lost connection or missing stream is logged and
        retried after ``backoff`` (the nats client reconnects by itself), but a
        connection closed for good (``nc.close()``, or nats-py's reconnect attempts
        spent: ``max_reconnect_attempts``, 60 by default) ends it with
        ``nats.errors.ConnectionClosedError``: it never comes back; so does a drain of
        the connection (``nc.drain()``), which waits for the message being handled (its
        ack sent; bounded by nats-py's ``drain_timeout``, 30 s by default) and for a
        pull under way (0.25 s and two round trips at most, whatever
        ``fetch_timeout_s``: see :meth:`_Pulls.pull`), while the batch's
        messages waiting their turn are nak'ed (another process of the durable gets
        them at once) and no pull is sent after it began; a handler whose call
        returns no awaitable ends it with ``TypeError`` (see :data:`Handler`), a durable
        that is a push consumer with ``ConfigError`` (see :meth:`start`). A durable lost
        while running is noticed after 5 empty fetches (or a refused pull) and
        re-created (:meth:`run_once`): deleted on its own, from its ack floor + 1 as last
        seen; with its stream deleted and re-created (server restarted without its
        store), once the stream exists, from the new stream's start
        (:meth:`recreation_config`). A cancel
        that the nats client swallowed ends it at the next fetch (``Task.cancelling()``),
        one a handler swallowed at the next message's turn in its batch.
        Cancelled, it naks the messages of its batch still waiting their turn (another
        process of the durable gets them at once; the one whose handler was interrupted
        is left unacked, redelivered after ``ack_wait_s``) and stops pulling
        (:meth:`aclose`) before it ends."""
        try:
            await self._run()
        finally:
            await self.aclose()

    async def _run(self) -> None:
        failed = 0
        task = asyncio.current_task()
        while True:
            # a cancel that a library swallowed (nats-py's next_msg runs asyncio.wait_for,
            # which on Python 3.11 returns a message that came as the cancel did, and the
            # cancel is lost: gh-86296) is still this task's: end here, not never
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            try:
                await self.run_once()
                failed = 0
            except (asyncio.CancelledError, _NotAsyncHandler, ConfigError):
                raise
            except Exception as exc:
                nc = self._js._nc
                # closed for good, or closing (nc.drain()): no reconnect will come
                if nc.is_closed or nc.is_draining:
                    raise nats.errors.ConnectionClosedError from exc
                failed += 1
                if failed == 1:
                    # a refusal's status and description (a server's words, no secret)
                    _log.warning("consumer fetch failed", durable=self.options.durable,
                                 error=type(exc).__name__,
                                 code=getattr(exc, "code", None),
                                 description=str(getattr(exc, "description", "") or "")
                                 [:200] or None)
                await asyncio.sleep(self.options.backoff.delay_s(min(failed, 8)))

    async def handle(self, msg: Msg) -> str:
        """Handle one delivered message; returns its outcome (``ack``, ``retry``,
        ``dead_letter``, ``refused``, ``terminated``: a dead letter that failed for good,
        ``term``'ed rather than dead-lettered again, or ``skipped``: a message on this
        consumer's own dead-letter subject, acked without running the handler). A
        cancel of the consumer's task while it runs propagates; the delivery is reported
        ``cancelled`` (left unacked).

        Raises:
            nats.errors.Error: the ack, nak or term that settles the delivery failed
                (e.g. ``ConnectionClosedError``: the connection went away while the
                handler ran); the delivery is reported (span status, access log
                ``reason``, ``outcome="error"``) as ``ack failed: <error>`` (``nak`` /
                ``term``), and JetStream redelivers it after ``ack_wait_s``.
            TypeError: the handler's call returned no awaitable (a plain ``def``), or
                its awaitable returned a coroutine (an ``await`` forgotten; closed
                unrun), another awaitable (a Future, Task or grpc.aio call; cancelled)
                or an async iterator (an ``async for`` forgotten; never started): the
                message is nak'ed (redelivered at once) and reported
                ``error``; a nak that fails is this error's ``__cause__`` (the message
                then redelivered after ``ack_wait_s``).
        """
        o = self.options
        headers: dict[str, str] = dict(msg.headers or {})
        msg_id = headers.get(MSG_ID_HEADER, "")
        delivery = msg.metadata.num_delivered if msg.reply else 1
        started = time.perf_counter()
        carried = extract(headers)  # the publisher's trace context and baggage
        span = None
        if o.tracing:
            span = tracer(o.tracer_provider).start_span(
                f"process {msg.subject}", context=carried, kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats",
                            "messaging.operation.type": "process",
                            "messaging.destination.name": msg.subject,
                            "messaging.destination.template": self._template,
                            "messaging.consumer.group.name": o.durable,
                            "messaging.message.id": msg_id,
                            "messaging.message.delivery_count": delivery})
        result: tuple[str, PeerIdentity | None, str] = ("error", None, "cancelled")
        # The handler runs in the message's context: the CONSUMER span current (if
        # tracing) *and* the baggage the message carries, so what the handler sends on
        # (an event, a gRPC call) carries the baggage too.
        token = otel_context.attach(trace.set_span_in_context(span, carried)
                                    if span is not None else carried)
        failed: BaseException | None = None
        try:
            try:
                result = await self._process(msg, headers, msg_id, delivery, span)
            except _SettleFailed as exc:  # the handling is done, telling NATS failed
                failed = exc.__cause__
                result = ("error", exc.publisher,
                          f"{exc.what} failed: {type(failed).__name__}")
            except _NotAsyncHandler as exc:
                failed = exc
                result = ("error", exc.publisher, exc.reason)
            except asyncio.CancelledError:  # the consumer's own (see Handler)
                result = ("cancelled", None, "cancelled")
                raise
        finally:
            outcome, publisher, reason = result
            try:
                self._report(msg, msg_id, headers, delivery, started, span, publisher,
                             outcome, reason)
            finally:
                otel_context.detach(token)
        if failed is not None:
            raise failed
        return result[0]

    async def _process(self, msg: Msg, headers: dict[str, str], msg_id: str, delivery: int,
                       span: Any) -> tuple[str, PeerIdentity | None, str]:
        """Verify, handle, and ack / nak / dead-letter; ``(outcome, publisher, reason)``."""
        o = self.options
        publisher: PeerIdentity | None = None
        if msg.subject == self._dead_letter_subject:  # our own dead letter: never handle
            await _settle("ack", msg.ack())
            return "skipped", None, "own dead letter"
        if delivery > o.max_deliveries:  # never acked: the handler died or timed out
            reason = f"not acked after {o.max_deliveries} deliveries"
            return (await self._dead_letter(msg, headers, reason, delivery, "dead_letter"),
                    None, reason)
        original_subject = original_msg_id = ""
        if is_dead_letter(headers):  # the signature binds the original subject and id
            original_subject = headers.get(DLQ_SUBJECT_HEADER, "")
            original_msg_id = _original_msg_id(headers)
        if o.verifier is not None:
            # the dead-letter headers are not signed: taken only by a consumer that reads
            # dead letters, else a signed event copied to another subject with them
            # would reach this handler as the publisher's event on that subject
            dead = bool(original_subject) and o.dead_letters
            try:
                publisher = o.verifier.verify(
                    msg.headers, msg_id=original_msg_id if dead else msg_id,
                    subject=original_subject if dead else msg.subject, payload=msg.data)
            except MessageIdentityError as exc:
                reason = str(exc)
                if original_subject and not dead:  # first: the logged reason is cut
                    reason = ("a dead letter, verified against the subject it came on "
                              "(a dead-letter processor sets ConsumerOptions("
                              f"dead_letters=True)): {reason}")
                return (await self._dead_letter(msg, headers, reason, delivery, "refused"),
                        None, reason)
            if span is not None:
                span.set_attribute("meshkit.peer.identity", publisher.spiffe_id)
        try:
            pending: object = self._handler(Delivery(
                msg.subject, msg.data, msg_id, headers, publisher, delivery,
                original_subject, original_msg_id))
            if not inspect.isawaitable(pending):  # ~0.15 us
                await _give_back(msg, publisher, _NotAsyncHandler(
                    f"the handler returned {type(pending).__name__}, not an awaitable: a "
                    "Consumer's handler is an async callable (async def, or an object "
                    "with an async __call__)"))
            returned = await pending
            fault = _unrun(returned)
            if fault is not None:
                await _give_back(msg, publisher, fault)
        except _NotAsyncHandler:
            raise
        except PoisonMessage as exc:
            reason = f"poison: {exc}"
            return (await self._dead_letter(msg, headers, reason, delivery, "dead_letter",
                                            publisher), publisher, reason)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                task = asyncio.current_task()
                if task is None or task.cancelling():  # we are being cancelled
                    raise
            reason = type(exc).__name__
            if delivery >= o.max_deliveries:
                reason = f"failed {delivery} times: {reason}"
                return (await self._dead_letter(msg, headers, reason, delivery,
                                                "dead_letter", publisher), publisher, reason)
            await _settle("nak", msg.nak(delay=_nak_delay_s(o.backoff.delay_s(delivery))),
                          publisher)
            return "retry", publisher, reason
        await _settle("ack", msg.ack(), publisher)
        return "ack", publisher, ""

    async def _dead_letter(self, msg: Msg, headers: dict[str, str], reason: str,
                           delivery: int, outcome: str,
                           publisher: PeerIdentity | None = None) -> str:
        """Publish ``msg`` to the dead-letter subject, then ``term`` it; if no stream
        takes the dead letter, or it is larger with its headers than the server's
        ``max_payload`` (not sent: the server would close the connection for good), nak
        it (never drop): with ``backoff`` while deliveries are left, with ``ack_wait_s``
        past ``max_deliveries``.

        JetStream control headers (the reserved ``Nats-`` namespace) are not copied, nor
        headers whose name nats-py refuses to send (outside HTTP's token characters,
        e.g. ``X/Trace`` from another client: the publish would raise
        ``BadHeaderError`` on every delivery, and the message never be dead-lettered). A
        duplicate ack counts as success only when the stored message is this consumer's
        dead letter of this subject (the term of an earlier delivery was lost); another
        message under the same id (within the dead-letter stream's duplicate window)
        means ours was not stored: the message is nak'ed.

        A message that already is a dead letter (:func:`is_dead_letter`) is not
        published again: it is ``term``'ed and logged (its id, reason and the consumer
        that dead-lettered it), and stays stored on its dead-letter subject; the
        outcome is ``terminated`` (``refused`` stays ``refused``). ``publisher``: the
        verified publisher, for the report of a term or nak that fails."""
        o = self.options
        if is_dead_letter(headers):
            await _settle("term", msg.term(), publisher)
            _log.warning("dead letter failed again; term'ed, not dead-lettered again",
                         subject=msg.subject, msg_id=headers.get(MSG_ID_HEADER, ""),
                         dead_lettered_by=headers.get(DLQ_CONSUMER_HEADER, ""),
                         reason=reason[:200], delivery=delivery)
            return "refused" if outcome == "refused" else "terminated"
        # its Nats-Msg-Id first (a placeholder filled below): nats-server (2.9) reads it
        # at the first occurrence of its name in the header block, and takes none when
        # that is not a line's start (a copied X-Nats-Msg-Id, a reason quoting it); then
        # not JetStream's control headers, nor names nats-py refuses to send (another
        # client's X/Trace: BadHeaderError, and the message could never be dead-lettered)
        dl = {MSG_ID_HEADER: ""}
        dl.update((k, v) for k, v in headers.items()
                  if k[:5].lower() != _NATS_PREFIX and _SENDABLE_HEADER.fullmatch(k))
        dl[DLQ_REASON_HEADER] = reason[:200]
        dl[DLQ_SUBJECT_HEADER] = msg.subject
        if headers.get(MSG_ID_HEADER):
            dl[DLQ_MSG_ID_HEADER] = headers[MSG_ID_HEADER]
        dl[DLQ_DELIVERIES_HEADER] = str(delivery)
        dl[DLQ_CONSUMER_HEADER] = self._tag
        if headers.get(MSG_ID_HEADER):
            dl[MSG_ID_HEADER] = f"dlq-{o.stream}.{o.durable}-{headers[MSG_ID_HEADER]}"
        elif msg.reply:  # no event id: its stream sequence names it (a name has no '/')
            dl[DLQ_MSG_ID_HEADER] = ""  # none, not the tail of the id below
            dl[MSG_ID_HEADER] = f"dlq-{o.stream}.{o.durable}/{msg.metadata.sequence.stream}"
        else:  # nothing names it (not a stream's message): no id, not an empty one
            del dl[MSG_ID_HEADER]
        try:
            size = message_size(msg.data, dl)
            if size > max_payload(self._js) or \
                    not control_line_fits(self._js, self._dead_letter_subject, size):
                raise nats.errors.MaxPayloadError  # sent, the server would close us
            ack = await self._js.publish(self._dead_letter_subject, msg.data, headers=dl,
                                         timeout=2.0)
            if ack.duplicate:
                stored = await self._js.get_msg(ack.stream, ack.seq)
                mine = stored.headers or {}
                if (mine.get(DLQ_CONSUMER_HEADER), mine.get(DLQ_SUBJECT_HEADER)) != \
                        (self._tag, msg.subject):
                    raise _ForeignDuplicate(dl.get(MSG_ID_HEADER, ""))
        except (nats.errors.Error, nats.js.errors.Error, _ForeignDuplicate) as exc:
            _log.warning("dead-letter publish failed; message left for redelivery",
                         subject=msg.subject, dead_letter_subject=self._dead_letter_subject,
                         error=type(exc).__name__)
            await _settle("nak", msg.nak(delay=o.ack_wait_s if delivery > o.max_deliveries
                                         else _nak_delay_s(o.backoff.delay_s(delivery))),
                          publisher)
            return "retry"
        await _settle("term", msg.term(), publisher)
        _log.warning("message dead-lettered", subject=msg.subject,
                     msg_id=headers.get(MSG_ID_HEADER, ""), reason=reason[:200],
                     delivery=delivery)
        return outcome

    def _report(self, msg: Msg, msg_id: str, headers: Mapping[str, str], delivery: int,
                started: float, span: Any, publisher: PeerIdentity | None, outcome: str,
                reason: str) -> None:
        elapsed = time.perf_counter() - started
        subject, durable = msg.subject, self.options.durable
        # With a verifier, only a verified publisher's subject is a label (and the span's
        # name): an unsigned sender's subjects are its choice, so its messages are
        # recorded under the consumer's filter subject (see ConsumerOptions.verifier).
        label = subject if (publisher is not None or self.options.verifier is None
                            or subject == self._dead_letter_subject) else self._template
        metrics = self._metrics
        if metrics is not None:
            labelled = metrics.subject(label)  # MAX_SUBJECTS per registry, then "other"
            metrics.consumed.labels(labelled, durable, outcome).inc()
            if delivery > 1:
                metrics.redelivered.labels(labelled, durable).inc()
            metrics.handling.labels(labelled, durable).observe(elapsed)
            sent = headers.get(HDR_SENT_AT_MS)
            # the publisher's text (unchecked without a verifier): ASCII digits, at most
            # 15 as MessageVerifier takes; str.isdigit alone passes '²', which int()
            # refuses, and 400 digits overflow the float division
            if outcome == "ack" and sent and len(sent) <= 15 and sent.isascii() \
                    and sent.isdigit():
                lag = time.time() - int(sent) / 1000
                metrics.lag.labels(labelled, durable).observe(max(lag, 0.0))
        failed = outcome not in ("ack", "skipped")
        if span is not None:
            if label != subject:
                span.update_name(f"process {label}")
            if failed:
                span.set_status(Status(StatusCode.ERROR, f"{outcome}: {reason}"[:200]))
            span.end()
        if self.options.access_log:
            fields: dict[str, Any] = {
                "side": "consume", "subject": subject, "consumer": durable,
                "msg_id": msg_id, "outcome": outcome,
                "duration_ms": round(elapsed * 1000, 3), "delivery": delivery}
            if publisher is not None:
                fields["peer_identity"] = publisher.spiffe_id
            if reason:
                fields["reason"] = reason[:200]
            with trace.use_span(span, end_on_exit=False) if span is not None \
                    else contextlib.nullcontext():
                # an interrupted handler (the consumer stopping) is no failure to warn of
                log_message(failed and outcome != "cancelled", fields)
