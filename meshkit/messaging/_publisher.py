"""Publishing to JetStream with retries inside a budget, and the transactional outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

# first: it reads OTEL_PROPAGATORS leaving out what is not installed, where importing
# opentelemetry.propagate alone raises ValueError (b3 without its package)
import meshkit.observability._tracing  # noqa: F401  # isort: skip
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from meshkit._config import (
    check_bool,
    check_instance,
    check_int,
    check_number,
    check_secret_holder,
)
from meshkit.errors import ConfigError, MeshError
from meshkit.messaging._identity import MessageSigner
from meshkit.messaging._stream import check_jetstream, check_nats_name
from meshkit.messaging._telemetry import extract, log_message, messaging_metrics, tracer
from meshkit.observability._logging import get_logger
from meshkit.resilience import Backoff, BudgetOptions, RetryBudget

__all__ = [
    "MSG_ID_HEADER",
    "OutboxEvent",
    "OutboxRelay",
    "OutboxStore",
    "PendingCounter",
    "PublishError",
    "PublishOptions",
    "Publisher",
    "RelayOptions",
]

MSG_ID_HEADER = "Nats-Msg-Id"

_log = get_logger("meshkit.messaging")

#: Failures after which the same publish may be tried again: the server did not answer
#: in time, JetStream had no responder (restarting, leader election) or said 503, or
#: the connection is reconnecting (a publish then meets OutboundBufferLimitError when
#: nats-py's pending buffer cannot take it; ConnectionReconnectingError comes from
#: drain). Safe because ``Nats-Msg-Id`` makes a repeat a no-op within the stream's
#: duplicate window.
_RETRYABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)

#: JetStream's ``JSStreamStoreFailedF`` (503, ``{err}``): the stream refused to store the
#: message. Its description "maximum messages exceeded" / "maximum bytes exceeded" /
#: "maximum messages per subject exceeded" is a stream at its limits with ``discard:
#: new``: a 503 like an outage's, but the stream refuses until room is made (an ack in a
#: work queue, ``max_age``), not in a retry's 50 ms..1 s, so retrying at once only spends
#: the retry budget other publishes share. The same code also carries other store
#: failures (a store closed while its stream is moved or restored, an I/O error), which
#: may pass: those are retried like any 503.
_STREAM_STORE_FAILED = 10077


def _stream_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a stream at its limits with ``discard: new`` (10077, "maximum
    ... exceeded")."""
    if not isinstance(exc, nats.js.errors.APIError) or exc.err_code != _STREAM_STORE_FAILED:
        return False
    description = (exc.description or "").lower()
    return "maximum" in description and "exceeded" in description


def _retryable(exc: BaseException) -> bool:
    """Whether the same publish may be tried again after ``exc`` (see ``_RETRYABLE``)."""
    return not _stream_full(exc) and isinstance(exc, _RETRYABLE)


class _NotAnAck(Exception):
    """The reply to a publish is no JetStream ack or error (a core NATS service, not a
    stream, answers on the subject); the parsing error is the ``__cause__``."""


#: JetStream API error classes by status code, as nats-py's ``APIError.from_error``.
_API_ERRORS: dict[int, type[nats.js.errors.APIError]] = {
    503: nats.js.errors.ServiceUnavailableError,
    500: nats.js.errors.ServerError,
    404: nats.js.errors.NotFoundError,
    400: nats.js.errors.BadRequestError,
}

#: What nats-py's ``publish`` raises before it writes or yields (a header name it cannot
#: send, a connection closed, draining or with a full pending buffer, a payload over
#: ``max_payload``, a bad subject): a request that meets one has its reply future
#: registered and never removed (see :meth:`Publisher._send`).
_REFUSED_UNSENT: tuple[type[BaseException], ...] = (
    nats.errors.OutboundBufferLimitError,
    nats.errors.BadHeaderError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
)

#: How often a publish that met a full pending buffer looks whether the reconnect ended.
_RECONNECT_POLL_S = 0.02


class PublishError(MeshError):
    """A publish failed for good (not retryable, attempts or retry budget spent); the
    last NATS exception is the ``__cause__``."""


#: The W3C headers a traced publish puts in place of those given (names lowercase).
_TRACE_HEADERS = frozenset(("traceparent", "tracestate", "baggage"))


def message_size(payload: bytes, headers: Mapping[str, str]) -> int:
    """The size the NATS server checks against its ``max_payload`` for a message with
    headers (an ``HPUB``): the payload plus the header block as nats-py encodes it
    (``NATS/1.0`` line, one ``key: value`` line per header, a blank line). nats-py itself
    checks only ``len(payload)``; a message over the limit with its headers makes the
    server answer ``Maximum Payload Violation`` and close the connection, which nats-py
    does not reopen. An upper bound when a key or value has spaces nats-py trims."""
    size = len(payload) + 12  # b"NATS/1.0\r\n" ... b"\r\n"
    for k, v in headers.items():
        size += len(k) + len(v.encode()) + 4  # b": ", b"\r\n"
    return size


MAX_CONTROL_LINE = 4096
"""nats-server's default ``max_control_line``, bytes: the longest protocol line it reads
(``HPUB <subject> <reply> <header bytes> <total bytes>``). A longer one is answered
``-ERR 'Maximum Control Line Exceeded'``, and nats-py closes the connection for good on
that error. The server does not announce the limit in ``INFO`` (NATS docs, "Set the
Maximum Control Line Size": clients limit it themselves, nats.java to 4096 by default)."""


def control_line_fits(js: JetStreamContext, subject: str, size: int) -> bool:
    """Whether a request of ``size`` bytes (headers and payload) to ``subject`` on
    ``js``'s connection has an ``HPUB`` line within :data:`MAX_CONTROL_LINE`: its reply
    subject is nats-py's request inbox (the connection's inbox prefix, a 22-character
    NUID, a token of 26), each size at most as long as ``size``."""
    reply = len(js._nc._inbox_prefix) + 50
    digits = len(str(size))
    return 5 + len(subject.encode()) + 1 + reply + 2 * (1 + digits) + 2 <= MAX_CONTROL_LINE


def max_payload(js: JetStreamContext) -> int:
    """The ``max_payload`` of ``js``'s connection (the server's, from its last ``INFO``)."""
    return int(js._nc.max_payload)


#: What JetStream's API subjects (``$JS.API.>``) start with.
_JS_API = "$JS.API."


def check_nats_subject(name: str, value: object) -> None:
    """Check that ``value`` (the field ``name``) is a subject a message can be published
    to: a non-empty string of printable characters without spaces, whose ``.``-separated
    tokens are non-empty and hold no wildcard (NATS docs, Subject-Based Messaging: "The
    period . ... and * and also > (the * and > are used as wildcards) are reserved";
    "Publishers will always send a message to a fully specified subject"). nats-py
    refuses a subject with whitespace (``BadSubjectError``) and no stream captures one
    with an empty token or a wildcard, so such a subject would fail only at the first
    publish. Nor one in JetStream's API, ``$JS.API.>``: no stream can capture
    it (nats-server: "subjects overlap with jetstream api"), and a message sent there
    is an API request (``$JS.API.STREAM.PURGE.<stream>`` purges the stream).

    Raises:
        ConfigError: any other value; ``name`` and the value quoted.
    """
    if (not isinstance(value, str) or not value or not value.isprintable() or " " in value
            or "*" in value or ">" in value or "" in value.split(".")):
        raise ConfigError(f"{name} must be a NATS subject to publish to: non-empty "
                          "tokens separated by dots, of printable characters without "
                          f"spaces or wildcards (* >), got {value!r}")
    if value.startswith(_JS_API):
        raise ConfigError(f"{name} must not be in JetStream's API ($JS.API.>: no stream "
                          "captures it, and a message there is an API request, e.g. "
                          f"a purge), got {value!r}")


def check_nats_filter_subject(name: str, value: object) -> None:
    """Check that ``value`` (the field ``name``) is a subject a consumer may filter on:
    a string of printable characters without spaces whose ``.``-separated tokens are
    non-empty, and are ``*`` (one token), ``>`` (the last token only) or hold no
    wildcard character (NATS docs, Subject-Based Messaging: wildcards match whole
    tokens, ``>`` only at the end; ``*`` and ``>`` are reserved). ``""`` is taken as
    no filter. JetStream refuses such a filter only when the durable is made
    (``400``), and a consumer's ``run()`` would retry that for ever.

    Raises:
        ConfigError: any other value; ``name`` and the value quoted.
    """
    if value == "":
        return
    text = value if isinstance(value, str) else ""
    tokens = text.split(".")
    if (not text or not text.isprintable() or " " in text
            or any(t == "" or (t not in ("*", ">") and ("*" in t or ">" in t))
                   for t in tokens)
            or ">" in tokens[:-1]):
        raise ConfigError(f"{name} must be a NATS subject to filter on: non-empty "
                          "tokens separated by dots, of printable characters without "
                          "spaces, wildcards only as whole tokens (* anywhere, > last), "
                          f"got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishOptions:
    """How :class:`Publisher` publishes.

    Args:
        stream: the stream the subject must land in (sent as ``Nats-Expected-Stream``;
            default ``None``: any stream capturing the subject).
        timeout_s: bound on one attempt, until the stream's ack (default 2.0, > 0),
            whole: also when the connection is silent (a partition) and nats-py's
            flush of its full pending buffer blocks; an attempt past it fails as a
            retryable timeout.
        max_attempts: attempts per publish, first included (default 3, >= 1); a retry
            follows only a retryable failure (timeout, no responders, JetStream 503,
            reconnecting), not a stream at its limits with ``discard: new`` (503 with
            err_code 10077 and a description "maximum ... exceeded", e.g. "maximum
            messages exceeded": it refuses until room is made, so the publish fails at
            once, the refusal in its message; another 10077 store failure is retried).
            While the connection is reconnecting and nats-py's pending buffer cannot
            take the message, an attempt waits for the reconnect (up to ``timeout_s``)
            rather than failing at once.
        backoff: delay before each retry (default full jitter 50 ms doubling to 1 s).
        budget: the retry budget shared by every publish of this publisher (default
            20 % of publishes + 10/s over 10 s: gRPC clients' rule, gRFC A6 / Finagle).
        signer: signs each message with the workload identity (default ``None``: no
            identity headers).
        tracing: a PRODUCER span per publish and the W3C context in the headers
            (default ``True``).
        metrics: the publish metrics (default ``True``), labelled with the subject, up
            to 1,000 subjects per registry (deliveries included), then ``other`` (see
            :mod:`meshkit.messaging._telemetry`): a subject per entity does not add
            series without bound. Spans and access-log events keep the subject.
        access_log: one ``message`` access-log event per publish (default ``True``).
        registry: Prometheus registry (default the process's meshkit registry).
        tracer_provider: where spans go, an OpenTelemetry ``TracerProvider`` (default
            ``None``: the global provider).

    Raises:
        ConfigError: a value out of range, a flag that is not ``True``/``False`` (a
            string such as ``"false"`` included), ``backoff``/``budget`` that is not a
            ``Backoff``/``BudgetOptions``, a ``signer`` that is not a ``MessageSigner``,
            a ``registry`` that is not a ``CollectorRegistry`` instance, or a
            ``tracer_provider`` that is not a ``TracerProvider`` (the field named, the
            value quoted).
    """

    stream: str | None = None
    timeout_s: float = 2.0
    max_attempts: int = 3
    backoff: Backoff = field(default_factory=lambda: Backoff(base_delay_s=0.05))
    budget: BudgetOptions = field(default_factory=BudgetOptions)
    signer: MessageSigner | None = None
    tracing: bool = True
    metrics: bool = True
    access_log: bool = True
    registry: CollectorRegistry | None = None
    tracer_provider: Any = None

    def __post_init__(self) -> None:
        if self.stream is not None:  # None: any stream; "" would be an impossible name
            check_nats_name("stream", self.stream)
        check_number("timeout_s", self.timeout_s, low_open=True, finite=False)
        check_int("max_attempts", self.max_attempts)
        check_instance("backoff", self.backoff, Backoff, optional=False)
        check_instance("budget", self.budget, BudgetOptions, optional=False)
        check_secret_holder("signer", self.signer, MessageSigner)
        check_telemetry_fields(self)


def check_telemetry_fields(options: Any) -> None:
    """Check the telemetry fields :class:`PublishOptions` and
    :class:`~meshkit.messaging.ConsumerOptions` share: the flags ``tracing``, ``metrics``,
    ``access_log`` (a string such as ``"false"`` would turn one on), ``registry`` (a
    ``CollectorRegistry`` instance, not the class) and ``tracer_provider`` (an
    OpenTelemetry ``TracerProvider``), each ``None`` for the default.

    Raises:
        ConfigError: the first bad field, named, its value quoted.
    """
    for flag in ("tracing", "metrics", "access_log"):
        check_bool(flag, getattr(options, flag))
    check_instance("registry", options.registry, CollectorRegistry)
    check_instance("tracer_provider", options.tracer_provider, trace.TracerProvider,
                   what="an OpenTelemetry TracerProvider")


class Publisher:
    """Publishes messages to JetStream with a message id, retries, identity and telemetry.

    Every message carries ``Nats-Msg-Id`` (the caller's event id), so JetStream drops a
    repeat within the stream's ``duplicate_window``; that is what makes a retry, or an
    outbox relay that died between publishing and marking, publish an event once.

    Args:
        js: a ``nats`` JetStream context (``nc.jetstream()``).
        options: :class:`PublishOptions` (default all defaults).

    Raises:
        ConfigError: ``js`` is no JetStream context (e.g. the connection ``nc``), or
            ``options`` no ``PublishOptions`` (e.g. a dict; quoted).
    """

    __slots__ = ("_budget", "_js", "_metrics", "options")

    def __init__(self, js: JetStreamContext, options: PublishOptions | None = None) -> None:
        check_jetstream(js)
        check_instance("options", options, PublishOptions)
        self._js = js
        self.options = options or PublishOptions()
        self._budget = RetryBudget(self.options.budget)
        self._metrics = messaging_metrics(self.options.registry) if self.options.metrics \
            else None

    @property
    def budget(self) -> RetryBudget:
        """The retry budget (for diagnostics and tests)."""
        return self._budget

    @property
    def closed(self) -> bool:
        """Whether the publisher's NATS connection is closed for good (``nc.close()``, or
        nats-py's reconnect attempts spent): no publish can succeed on it again."""
        return bool(self._js._nc.is_closed)

    async def publish(self, subject: str, payload: bytes, *, msg_id: str,
                      headers: Mapping[str, str] | None = None,
                      context: Any = None) -> PubAck:
        """Publish ``payload`` to ``subject`` and wait for the stream's ack.

        Args:
            subject: the NATS subject, fully specified (NATS docs: "Publishers will
                always send a message to a fully specified subject"): non-empty
                ``.``-separated tokens of printable characters, no whitespace, no
                wildcard (``*``, ``>``).
            payload: the message body, ``bytes``, ``bytearray`` or a ``memoryview``
                (its bytes: one of wider items, ``memoryview(array('i', ...))``, or not
                contiguous, is copied to ``bytes`` first).
            msg_id: the event id, sent as ``Nats-Msg-Id`` (the dedupe key, signed): a
                non-empty string of printable characters that neither starts nor ends
                with a space (nats-py trims header values and turns line breaks into
                spaces, so another id would travel than the one signed and deduped).
            headers: more headers (copied; the trace and identity headers are added:
                with tracing on, ``traceparent``, ``tracestate`` and ``baggage`` given
                here, in any case, are replaced by the PRODUCER span's). They are sent
                after ``Nats-Msg-Id`` (and ``Nats-Expected-Stream``), so one whose name
                ends with that name or whose value quotes it cannot hide it from
                nats-server, which reads the first occurrence of the name.
            context: the OpenTelemetry context the PRODUCER span is a child of (default
                the current one), e.g. the one stored with an outbox row.

        Returns:
            The ack; ``ack.duplicate`` is true when the stream already had ``msg_id``.

        Raises:
            TypeError: ``payload`` is no ``bytes`` / ``bytearray`` / ``memoryview``
                (e.g. a ``str``), or a header key or value no ``str`` (the key quoted,
                the value's type named), refused before anything is sent.
            PublishError: not acked after the attempts the options and budget allow; or
                the reply is no JetStream ack (a service, not a stream, answers on the
                subject); or ``msg_id`` is not one (quoted), or ``subject`` is not one
                a publisher may use (a wildcard or an empty token: JetStream would store
                ``orders.*`` as it is, out of reach of the real subject's consumers;
                quoted) or one in JetStream's API, ``$JS.API.>`` (no stream captures
                it; a message there is an API request, e.g. a stream purge), or so
                long that the protocol line sending it would exceed the server's
                ``max_control_line`` (4096 bytes by default, not announced:
                the server would close the connection for good), refused before
                anything is sent; or the payload with its
                headers (the identity and trace headers included) is larger than the
                server's ``max_payload``, refused before anything is sent (the cause is
                ``nats.errors.MaxPayloadError``): the server would close the connection
                for good.
        """
        if (not isinstance(msg_id, str) or not msg_id.isprintable() or not msg_id
                or msg_id[0] == " " or msg_id[-1] == " "):
            raise PublishError(
                "msg_id must be a non-empty string of printable characters that neither "
                f"starts nor ends with a space (NATS would send another id), got {msg_id!r}")
        if not isinstance(payload, bytes | bytearray):
            if not isinstance(payload, memoryview):
                raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
            if payload.nbytes != len(payload) or not payload.c_contiguous:
                # nats-py sizes a message by len(): items (array('i'), 2-D), not bytes,
                # and the server closes a connection whose size and bytes disagree
                payload = payload.tobytes()
        try:  # ~0.5 us; JetStream would store a wildcard subject as it is
            check_nats_subject("subject", subject)
        except ConfigError as exc:
            raise PublishError(str(exc)) from None
        opts = self.options
        # Nats-Msg-Id first: nats-server (2.9) reads a control header at the first
        # occurrence of its name in the block, and takes none when that is not a line's
        # start (a caller's X-Nats-Msg-Id, a value quoting it): the dedupe was then off
        hdrs = {MSG_ID_HEADER: msg_id}
        if headers:
            hdrs.update(headers)
            hdrs[MSG_ID_HEADER] = msg_id  # keeps its place, first
        for k, v in hdrs.items():  # else an AttributeError from deep in the size check
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"headers must map str to str, got the header {k!r}: "
                                f"{type(v).__name__}")
        started = time.perf_counter()
        span = None
        if opts.tracing:
            span = tracer(opts.tracer_provider).start_span(
                f"send {subject}", context=context, kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "nats",
                            "messaging.operation.type": "send",
                            "messaging.destination.name": subject,
                            "messaging.message.id": msg_id})
            # in any case: a Traceparent given (a Go service's, or stored in an outbox)
            # would go out beside ours, two parents (W3C names them case-insensitively)
            for k in [k for k in hdrs if k.lower() in _TRACE_HEADERS]:
                del hdrs[k]
            propagate.inject(hdrs, context=trace.set_span_in_context(span, context))
        if opts.signer is not None:
            opts.signer.sign(hdrs, msg_id=msg_id, subject=subject, payload=payload)
        self._budget.record_request()
        metrics = self._metrics
        label = metrics.subject(subject) if metrics is not None else subject
        attempts, outcome, ack = 0, "error", None
        error: BaseException | None = None
        try:
            size = message_size(payload, hdrs)
            if opts.stream is not None:  # nats-py adds Nats-Expected-Stream
                size += len(opts.stream.encode()) + 24  # bytes: a name may be non-ASCII
            if not control_line_fits(self._js, subject, size):
                error = nats.errors.ProtocolError()
                raise PublishError(
                    f"subject {subject[:64]!r}... of {len(subject.encode())} bytes is too "
                    f"long for the server's protocol line (max_control_line "
                    f"{MAX_CONTROL_LINE}): the server would close the connection"
                    ) from error
            limit = max_payload(self._js)
            if size > limit:
                error = nats.errors.MaxPayloadError()
                raise PublishError(f"message to {subject!r} of {size} bytes with its "
                                   f"headers exceeds the server's max_payload ({limit})"
                                   ) from error
            while True:
                attempts += 1
                try:
                    ack = await self._attempt(subject, payload, hdrs)
                    outcome = "duplicate" if ack.duplicate else "ok"
                    return ack
                except nats.errors.Error as exc:
                    error = exc
                    if not _retryable(exc):
                        raise PublishError(f"publish to {subject!r} failed: "
                                           f"{_describe(exc)}") from exc
                    # a cancel that nats-py swallowed (its forced flush catches
                    # CancelledError) is still this task's: end here, do not retry
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from None
                    if attempts >= opts.max_attempts:
                        raise PublishError(f"publish to {subject!r} failed after "
                                           f"{attempts} attempts") from exc
                    if not self._budget.try_withdraw():
                        if metrics is not None:
                            metrics.budget_exhausted.labels(label).inc()
                        raise PublishError(f"publish to {subject!r} failed; retry budget "
                                           "exhausted") from exc
                    if metrics is not None:
                        metrics.retries.labels(label).inc()
                    await asyncio.sleep(opts.backoff.delay_s(attempts))
                except _NotAnAck as exc:  # only the reply's parsing, not our call
                    error = exc.__cause__ or exc
                    raise PublishError(f"publish to {subject!r} got a reply that is not "
                                       f"a JetStream ack ({type(error).__name__}): a "
                                       "service, not a stream, answers on the subject"
                                       ) from error
        except asyncio.CancelledError:
            # the caller's cancel (a call given up, a relay's aclose): no failure of the
            # publish, nor the failure of an attempt before it
            error, outcome = None, "cancelled"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if metrics is not None:
                metrics.published.labels(label, outcome).inc()
                metrics.publish_seconds.labels(label).observe(elapsed)
            if span is not None:
                span.set_attribute("meshkit.attempts", attempts)
                if outcome in ("error", "cancelled"):
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__
                                           if error is not None else "cancelled"))
                span.end()
            if opts.access_log:
                ctx = trace.use_span(span, end_on_exit=False) if span is not None else None
                fields = {"side": "publish", "subject": subject, "msg_id": msg_id,
                          "outcome": outcome, "duration_ms": round(elapsed * 1000, 3),
                          "attempts": attempts}
                if ctx is None:
                    log_message(outcome == "error", fields)
                else:
                    with ctx:
                        log_message(outcome == "error", fields)

    async def _attempt(self, subject: str, payload: bytes, headers: dict[str, str]
                       ) -> PubAck:
        """One attempt, bounded by ``timeout_s`` as a whole: nats-py's ``timeout`` covers
        only the wait for the reply, not its forced flush of a full pending buffer, which
        on a silent (black-holed) connection blocks until the connection is declared
        stale (minutes) and swallows a cancel. So the attempt runs in a task of its own:
        past ``timeout_s`` it is cancelled and left behind (nats-py may finish it; its
        result is dropped) and the attempt fails with ``nats.errors.TimeoutError``
        (retryable: ``Nats-Msg-Id`` makes a repeat a no-op); a cancel of the caller
        cancels it and propagates at once."""
        attempt = asyncio.create_task(self._send(subject, payload, headers))
        try:
            done, _ = await asyncio.wait((attempt,), timeout=self.options.timeout_s)
        except asyncio.CancelledError:
            _abandon(attempt)
            raise
        if not done:
            _abandon(attempt)
            raise nats.errors.TimeoutError
        return attempt.result()

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str]) -> PubAck:
        """One request to the stream and its ack, as nats-py's ``JetStreamContext.publish``
        but: (1) while the connection is reconnecting and nats-py's pending buffer cannot
        take the message (OutboundBufferLimitError, raised before anything is written),
        the reply future nats-py registered in ``nc._resp_map`` for this request (which
        it never removes; nor when ``publish`` refuses the request otherwise before
        sending it, e.g. ``BadHeaderError`` for a header name such as ``X/Trace``, or
        ``ConnectionClosedError``: dropped then too, the error raised) is dropped, and
        the reconnect is waited for (within the
        attempt's ``timeout_s``, which cancels this) before the request is made again,
        instead of a new attempt, and a new leaked future, at the backoff's pace; (2) a
        reply that cannot be parsed raises :class:`_NotAnAck` (only the parsing: a fault
        of the call itself propagates as raised)."""
        nc = self._js._nc
        if self.options.stream is not None:
            # at the front too (see publish: the server reads the first occurrence)
            stream = self.options.stream
            headers = {"Nats-Expected-Stream": stream, **headers}
            headers["Nats-Expected-Stream"] = stream  # ours, in the first place
        if not nc._resp_sub_prefix:
            # made now, not inside the request: then nothing yields between the snapshot
            # below and the publish raising, so the futures added are this request's only
            await nc._init_request_sub()
        while True:
            before = set(nc._resp_map)
            try:
                msg = await nc.request(subject, payload, timeout=self.options.timeout_s,
                                       headers=headers)
                break
            except nats.errors.NoRespondersError:
                raise nats.js.errors.NoStreamResponseError from None
            except _REFUSED_UNSENT as exc:
                # raised by nats-py's publish before it yields (nothing was sent), after
                # it registered this request's reply future, which it never removes
                for token in set(nc._resp_map) - before:
                    nc._resp_map.pop(token).cancel()
                if not isinstance(exc, nats.errors.OutboundBufferLimitError):
                    raise
                # a reconnect's handshake is CONNECTING, not RECONNECTING, in nats-py
                # (_process_connect_init); the publisher runs after connect()
                if not (nc.is_reconnecting or nc.is_connecting):
                    raise
                while nc.is_reconnecting or nc.is_connecting:  # noqa: ASYNC110 - no event
                    await asyncio.sleep(_RECONNECT_POLL_S)
        try:
            reply = json.loads(msg.data)
            if not isinstance(reply, dict):
                raise TypeError(f"reply is a JSON {type(reply).__name__}")
            if "error" not in reply:
                return PubAck.from_response(reply)
            err = reply["error"]
            refusal = _API_ERRORS.get(err["code"], nats.js.errors.APIError)(**err)
        # RecursionError: a reply nested past the JSON decoder's depth ("[[[[...")
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise _NotAnAck from exc
        raise refusal


def _describe(exc: BaseException) -> str:
    """``exc``'s type, and for a JetStream refusal its codes and description (e.g.
    ``ServiceUnavailableError 503/10077: maximum messages exceeded``)."""
    if isinstance(exc, nats.js.errors.APIError):
        return (f"{type(exc).__name__} {exc.code}/{exc.err_code}: "
                f"{exc.description or ''}")
    return type(exc).__name__


def _abandon(attempt: asyncio.Future[PubAck]) -> None:
    """Cancel an attempt no one waits for any more; its outcome (nats-py may swallow the
    cancel and end it later with an error) is retrieved, so asyncio logs nothing."""
    attempt.cancel()
    attempt.add_done_callback(_drop_outcome)


def _drop_outcome(attempt: asyncio.Future[PubAck]) -> None:
    if not attempt.cancelled():
        attempt.exception()


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One pending row of a transactional outbox.

    Attributes:
        event_id: unique id, published as ``Nats-Msg-Id``.
        subject: where to publish it.
        payload: the message body.
        headers: headers stored with it, typically the trace context captured by
            :func:`~meshkit.messaging.capture_context` in the writing transaction; the
            relay publishes them with the event (with tracing on, the publisher puts
            its PRODUCER span, a child of the stored context, in place of the stored
            ``traceparent`` / ``tracestate`` / ``baggage``; ``Nats-Msg-Id`` is always
            ``event_id``).
    """

    event_id: str
    subject: str
    payload: bytes
    headers: Mapping[str, str]


class OutboxStore(Protocol):
    """Where an outbox lives: the service's own database, written in the same transaction
    as the business change (so an event exists exactly when the change committed)."""

    async def pending_events(self, limit: int) -> Sequence[OutboxEvent]:
        """Up to ``limit`` events not yet marked sent, oldest first."""
        ...

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        """Mark these events sent (idempotent: an id already marked is no error)."""
        ...


class PendingCounter(Protocol):
    """An :class:`OutboxStore` that can also count its pending events (optional: the
    relay then exports ``meshkit_messaging_outbox_pending``)."""

    async def count_pending(self) -> int:
        """How many events are not yet marked sent."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayOptions:
    """How :class:`OutboxRelay` polls.

    Args:
        batch_size: events read and published per round (default 100, >= 1); also the
            most publishes that run beside the rounds (see :class:`OutboxRelay`).
        poll_interval_s: wait between rounds when the outbox was drained (default 0.2,
            > 0); :meth:`OutboxRelay.notify` cuts it short.
        error_backoff: delay after a failed round (store or NATS down: the store
            raised, or first tries failed and nothing was acked, see
            :class:`OutboxRelay`; default full jitter 100 ms doubling to 5 s), and
            before an event that failed to publish is tried again (its own failure
            count; the other events go at the normal pace).
        name: the ``outbox`` label of ``meshkit_messaging_outbox_pending`` (default
            ``"outbox"``), a non-empty string.

    Raises:
        ConfigError: a value out of range, an ``error_backoff`` that is not a
            ``Backoff``, or a ``name`` that is not a non-empty string (the field named,
            the value quoted).
    """

    batch_size: int = 100
    poll_interval_s: float = 0.2
    error_backoff: Backoff = field(
        default_factory=lambda: Backoff(base_delay_s=0.1, max_delay_s=5.0))
    name: str = "outbox"

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}")
        check_number("poll_interval_s", self.poll_interval_s, low_open=True, finite=False)
        check_instance("error_backoff", self.error_backoff, Backoff, optional=False)


@dataclass(slots=True)
class _Held:
    """An outbox event whose publish failed: its failure count and when it may go again."""

    failures: int
    retry_at: float  # event-loop time, seconds


class OutboxRelay:
    """Moves committed outbox events to JetStream: read pending, publish, mark sent.

    At least once, never lost: an event is marked only after the stream acked it, so a
    relay killed between publishing and marking publishes it again on its next round (or
    another relay does); the stream's dedupe window (``Nats-Msg-Id`` = event id) drops
    that repeat, and consumers idempotent by event id drop any that gets past it (a
    restart later than the window). Several relays may share one outbox. The events of a
    batch are published concurrently on the one connection, so they reach the stream in
    outbox order except around a retried publish. With the publisher's metrics on and a
    store that has ``count_pending`` (:class:`PendingCounter`), each round ends by
    setting ``meshkit_messaging_outbox_pending{outbox=<name>}`` (one count query; one
    that fails leaves the gauge as it was, logged once, and fails no round).

    An event whose publish fails (``PublishError``, or any other exception its publish
    raised, such as a bad header a store returned: e.g. its subject is in no stream,
    JetStream refuses it, or it is larger with its headers than the server's
    ``max_payload``) does not hold up the others: the events published with it are
    marked sent, it is logged (its id, subject and error, never its payload) and left
    out of the rounds for ``error_backoff`` (its own count: 100 ms doubling to 5 s by
    default), counted from the end of its failed publish, before it is tried again,
    and the round is a normal one. An event that failed before is tried again beside
    the rounds, not in one: its publish may take ``max_attempts`` x ``timeout_s`` (no
    ack comes, e.g. its subject is one a core NATS subscriber listens to but no stream
    captures), and the events committed meanwhile do not wait for it. A round waits for
    its first tries one attempt's ``timeout_s`` (the publisher's; no bound when it is
    infinite) at most: a healthy publish is acked well within it, and one still
    running after it most likely met a stall or had its first attempt time out (the
    attempt's own ``timeout_s`` starts a little after the round's wait, so it may yet
    be acked); it goes on beside the rounds and the round marks the acked events and
    ends (an event whose first try only times out
    delays the events of its own batch's marking, and the next round, by ``timeout_s``,
    not by its ``max_attempts`` x ``timeout_s``). At most ``batch_size`` publishes run
    beside the rounds; the round's first tries past the bound take the free places
    before the retries of events that failed before, and when none is free the round
    waits for them to end, as a round did before. A later round takes each outcome
    (marks it sent, or holds it; an acked one wakes a round, a failed one waits for the
    next round at the normal pace, so an outage does not read the store at the pace
    publishes fail). Only a round in which the store failed, or every first try of the
    batch failed, or first tries failed and nothing was acked (neither a first try of
    the batch nor a publish beside the rounds that ended since the last round; the
    first tries that failed may be ones that went on beside the rounds: NATS down or
    JetStream unavailable, most likely), is a failed round, followed by
    ``error_backoff``. A round whose first tries all went on beside the rounds is
    judged when they end: a server stalled past ``timeout_s`` that then acks them on a
    retry makes no failed round. Events that had failed before and fail again only
    back off again. ``failures`` counts failed rounds, ``event_failures`` failed event
    publishes. A store failure marking acked events loses none: they stay pending and
    are published again by a later round (the stream's dedupe window drops the repeat;
    past it, consumers idempotent by event id do), counted in ``published`` once, when
    marked. :meth:`run` ends the publishes beside the rounds when it ends; a caller of
    :meth:`relay_once` alone calls :meth:`aclose` when done.

    Every failing event is remembered (its id, failure count and retry time) until it is
    published, or until a round reads the whole outbox without it (sent by another
    relay, deleted). A round asks the store for ``batch_size`` events plus those that
    failed before (backing off, being retried, or finding no free retry slot), so
    however many fail, the events behind them are read and published:
    the memory and the rows read grow with the number of failing events (e.g. every
    event of a subject no stream captures stays remembered and is read each round).

    Args:
        store: the :class:`OutboxStore`.
        publisher: the :class:`Publisher` (its retries, budget, identity and telemetry).
        options: :class:`RelayOptions`.

    Raises:
        ConfigError: ``store`` is a class, or lacks ``pending_events`` or ``mark_sent``
            (its type and the method named); ``publisher`` no :class:`Publisher` (e.g.
            the JetStream context), ``options`` no :class:`RelayOptions` (quoted).
    """

    def __init__(self, store: OutboxStore, publisher: Publisher,
                 options: RelayOptions | None = None) -> None:
        if isinstance(store, type):  # the class, not an instance
            raise ConfigError("store must be an OutboxStore instance, got the class "
                              f"{store.__qualname__}")
        for method in ("pending_events", "mark_sent"):
            if not callable(getattr(store, method, None)):
                raise ConfigError(f"store must be an OutboxStore (async pending_events and "
                                  f"mark_sent); a {type(store).__name__} has no {method}")
        if isinstance(publisher, JetStreamContext) or not hasattr(publisher, "options") \
                or not callable(getattr(publisher, "publish", None)):
            raise ConfigError("publisher must be a Publisher (Publisher(js, "
                              f"PublishOptions(...))), got a {type(publisher).__name__}")
        check_instance("options", options, RelayOptions)
        self._store = store
        self._publisher = publisher
        self.options = options or RelayOptions()
        self._wake = asyncio.Event()
        self.published = 0
        self.failures = 0
        self.event_failures = 0
        self._held: dict[str, _Held] = {}
        # publishes beside the rounds (retries, first tries past their round's bound)
        self._retrying: dict[str, tuple[OutboxEvent, asyncio.Task[
            tuple[PubAck | Exception, float]]]] = {}
        # of those, the first tries (judged when they end: see relay_once)
        self._first_beside: set[str] = set()
        self._closes = 0  # aclose() calls: a round that one met hands nothing beside
        # the last round handed first tries beside: the outbox was not drained
        self._handed = False
        self._pending_gauge = None
        self._count_pending = getattr(store, "count_pending", None)
        self._count_failed = False  # the last count_pending raised (logged once)
        if publisher.options.metrics and self._count_pending is not None:
            self._pending_gauge = messaging_metrics(publisher.options.registry) \
                .outbox_pending.labels(self.options.name)

    def notify(self) -> None:
        """Start the next round now (call after committing an event)."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of pending events and mark the acked ones sent; events that
        failed recently and are still backing off are left out, and those whose backoff
        ended are retried beside the round, their outcome taken by a later round; a
        first try still running after the publisher's ``timeout_s`` goes on beside the
        rounds too, while a slot is free (see the class docstring).

        Returns:
            How many events were published (duplicates included): the round's, and
            those of earlier publishes beside the rounds that ended since the last round.

        Raises:
            PublishError: every first try of the batch failed, or first tries failed
                (the batch's, or earlier ones that went on beside the rounds after
                ``timeout_s`` and ended since) and nothing was acked: NATS down,
                JetStream unavailable; those that failed then back off as one that
                failed alone. First tries still running beside the rounds fail no
                round until they end. Store errors propagate as raised (not a failing
                ``count_pending``: only logged).
                Events that failed while others were published, or failed again after
                failing before, only back off and are logged, whatever the exception
                (only a cancel propagates).
        """
        size = self.options.batch_size
        closes = self._closes
        self._handed = False
        retried, first_failed = await self._collect_retries()
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = {i for i, h in self._held.items() if h.retry_at > now} | \
            self._retrying.keys()
        # every event that failed before is read past: one backing off is skipped, one
        # finding no free retry slot too, so neither takes a first-try event's place
        limit = size + len(waiting | self._held.keys())
        pending = await self._store.pending_events(limit)
        if len(pending) < limit:  # every pending event seen: forget those sent since
            seen = {e.event_id for e in pending}
            for gone in [i for i in self._held if i not in seen]:
                del self._held[gone]
        events: list[OutboxEvent] = []
        again: list[OutboxEvent] = []  # failed before, backoff over: retried beside
        for e in pending:
            if e.event_id in waiting:
                continue
            if e.event_id in self._held:
                again.append(e)
            elif len(events) < size:
                events.append(e)
        # first tries as tasks started in outbox order (one connection: they reach the
        # stream in that order); the round waits for them one attempt's timeout_s at
        # most, then hands those still running to the slots beside the rounds
        tries = [asyncio.create_task(self._retry(e)) for e in events]
        beside: set[asyncio.Task[tuple[PubAck | Exception, float]]] = set()
        try:
            if tries:
                await asyncio.wait(tries, timeout=self._first_try_bound_s())
                if self._closes != closes:  # aclose() met the round: none goes beside
                    late = [t for t in tries if not t.done()]
                    for t in late:  # their events stay pending, for a later round
                        t.cancel()
                    await asyncio.gather(*late, return_exceptions=True)
                for e, t in zip(events, tries, strict=True):
                    if not t.done() and len(self._retrying) < size:
                        self._beside(e, t)
                        self._first_beside.add(e.event_id)
                        beside.add(t)
                        self._handed = True
                # no free slot: the round waits for the rest (bounded by the
                # publisher's attempts), so the publishes beside stay <= batch_size
                rest = [t for t in tries if not t.done() and t not in beside]
                if rest:
                    await asyncio.wait(rest)
        except BaseException:  # cancelled: so are the round's own publishes
            own = [t for t in tries if t not in beside]
            for t in own:
                t.cancel()
            await asyncio.gather(*own, return_exceptions=True)
            raise
        for e in again:  # after the round's first tries: they take the free slots first
            if len(self._retrying) < size and self._closes == closes:
                self._beside(e, asyncio.create_task(self._retry(e)))
        if not events:
            if self._pending_gauge is not None:
                if pending:
                    await self._count()
                else:
                    self._pending_gauge.set(0)
            if first_failed and not retried:
                raise PublishError(f"{first_failed} events failed at their first try "
                                   "beside the rounds, none was acked")
            return retried
        done: list[str] = []
        first: Exception | None = None
        own_failed = 0
        for e, t in zip(events, tries, strict=True):
            if t in beside or t.cancelled():  # cancelled: aclose() met the round
                continue
            result, at = t.result()
            if isinstance(result, PubAck):
                done.append(e.event_id)
            else:  # PublishError, or a fault of this one event's; held before marking
                self._hold(e, result, at)
                first = first or result
                own_failed += 1
        first_failed += own_failed
        if done:
            await self._store.mark_sent(done)
            for i in done:
                self._held.pop(i, None)
        self.published += len(done)
        if self._pending_gauge is not None:
            await self._count()
        if not done and own_failed == len(events):
            raise PublishError(f"all {len(events)} events of the batch failed to "
                               "publish") from first
        if not done and not retried and first_failed:
            raise PublishError(
                f"no event was acked: {first_failed} failed at their first try (this "
                f"round's or beside the rounds), {len(beside)} of the batch still "
                "publishing beside the rounds") from first
        return len(done) + retried

    async def _count(self) -> None:
        """Set ``meshkit_messaging_outbox_pending`` to the store's ``count_pending``. A
        count that fails (any exception but a cancel: a ``COUNT(*)`` over a large backlog
        hitting a statement timeout) leaves the gauge as it was and fails no round (the
        events were published and marked; a failed round would back off just when the
        backlog is large); logged once until a count succeeds again."""
        assert self._pending_gauge is not None and self._count_pending is not None
        try:
            n = await self._count_pending()
        except Exception as exc:
            if not self._count_failed:
                self._count_failed = True
                _log.warning("outbox pending count failed; gauge left as it was",
                             outbox=self.options.name, error=type(exc).__name__)
            return
        self._count_failed = False
        self._pending_gauge.set(n)

    def _first_try_bound_s(self) -> float | None:
        """How long a round waits for its first tries: the publisher's ``timeout_s``
        (``None``, no bound, when it is infinite)."""
        bound = float(self._publisher.options.timeout_s)
        return bound if bound != float("inf") else None

    def _beside(self, event: OutboxEvent,
                task: asyncio.Task[tuple[PubAck | Exception, float]]) -> None:
        """Let ``task`` (publishing ``event``) go on beside the rounds; a later round
        takes its outcome."""
        task.add_done_callback(self._retry_ended)
        self._retrying[event.event_id] = (event, task)

    async def _publish(self, event: OutboxEvent) -> PubAck:
        """Publish ``event``; its stored trace context is read here, inside the event's
        own call, so a bad stored header fails this event alone (``gather`` takes it)."""
        return await self._publisher.publish(
            event.subject, event.payload, msg_id=event.event_id, headers=event.headers,
            context=extract(event.headers))

    def _retry_ended(self, task: asyncio.Task[tuple[PubAck | Exception, float]]) -> None:
        """Wake a round when a publish beside the rounds was acked (its event is to be
        marked sent soon); a failed one only backs off, taken by the next round at the
        normal pace: waking a round at each failed retry's end read the store at the
        pace retries fail in an outage (every event held, so no failed round paused
        them)."""
        if not task.cancelled() and isinstance(task.result()[0], PubAck):
            self._wake.set()

    async def _retry(self, event: OutboxEvent) -> tuple[PubAck | Exception, float]:
        """Publish ``event`` (a first try or a retry); its ack or error (any exception
        but a cancel), and when it came (event-loop time, seconds)."""
        try:
            result: PubAck | Exception = await self._publish(event)
        except Exception as exc:
            result = exc
        return result, asyncio.get_running_loop().time()

    async def _collect_retries(self) -> tuple[int, int]:
        """Take the outcome of the publishes beside the rounds that ended: hold the
        failed ones (from when they failed), mark the acked events sent; how many were
        marked, and how many of the failed ones were first tries. A store failure
        propagates; those events stay pending, read again."""
        ended = [(e, t) for e, t in self._retrying.values() if t.done()]
        for e, _ in ended:
            del self._retrying[e.event_id]
        acked = []
        first_failed = 0
        for e, t in ended:
            first = e.event_id in self._first_beside
            self._first_beside.discard(e.event_id)
            if t.cancelled():
                continue
            result, at = t.result()
            if isinstance(result, PubAck):
                acked.append(e.event_id)
            else:
                self._hold(e, result, at)
                first_failed += first
        if acked:
            await self._store.mark_sent(acked)
            for i in acked:
                self._held.pop(i, None)
            self.published += len(acked)
        return len(acked), first_failed

    async def aclose(self) -> None:
        """Cancel the publishes running beside the rounds (retries, and first tries past
        their round's bound) and wait until they ended; idempotent, and the relay may
        run rounds again after it. Their events stay pending: an outcome not yet taken
        by a round is dropped (an event acked meanwhile is published again by a later
        round or relay, and the stream's dedupe window drops that repeat). :meth:`run`
        calls it when it ends; a caller of :meth:`relay_once` alone calls it when done
        (else those publishes go on unawaited, bounded by the publisher's attempts). A
        round under way when it is called hands nothing beside the rounds: at its bound
        it cancels its first tries still running (their events stay pending, taken by a
        later round) and starts no retry; the rounds after it run as usual.
        """
        self._closes += 1
        tasks = [task for _, task in self._retrying.values()]
        self._retrying.clear()
        self._first_beside.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _hold(self, event: OutboxEvent, error: Exception, now: float) -> None:
        """Leave ``event`` out of the rounds for its own ``error_backoff`` delay from
        ``now`` (when its publish had failed); log its 1st, 2nd, 4th, 8th... failure
        (id, subject, error: its type, and for a JetStream refusal ``reason``, its codes
        and description; never the payload)."""
        held = self._held.pop(event.event_id, None)
        failures = (held.failures if held else 0) + 1
        delay = self.options.error_backoff.delay_s(min(failures, 30))
        self._held[event.event_id] = _Held(failures, now + delay)
        self.event_failures += 1
        if failures & (failures - 1) == 0:
            cause = error.__cause__ or error
            reason = {"reason": _describe(cause)} \
                if isinstance(cause, nats.js.errors.APIError) else {}
            _log.warning("outbox event failed to publish; retried after a backoff",
                         event_id=event.event_id, subject=event.subject,
                         failures=failures, retry_in_s=round(delay, 3),
                         error=type(cause).__name__, **reason)

    async def run(self) -> None:
        """Relay until cancelled; a failed round (store error, or first tries failed and
        nothing was acked, see the class docstring) is logged and retried after
        ``error_backoff``; an event that failed alone only backs off itself (see the
        class docstring). After a round that published fewer than ``batch_size``
        events and handed none of its first tries beside the rounds (the outbox is
        drained) it waits ``poll_interval_s`` or :meth:`notify`; else the next round
        follows at once. When it ends it calls :meth:`aclose` (the publishes beside
        the rounds are cancelled; their events stay pending). A cancel that the store
        swallowed (a driver's clean-up catching ``CancelledError``) is still this
        task's: it ends the relay before the next round (``Task.cancelling()``).

        Raises:
            nats.errors.ConnectionClosedError: the publisher's connection is closed for
                good (:attr:`Publisher.closed`: ``nc.close()``, or nats-py's reconnect
                attempts spent), checked before each round: no round could publish
                again, and retrying for ever would hide it from a supervisor."""
        failed = 0
        task = asyncio.current_task()
        try:
            while True:
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError  # swallowed by the store, still ours
                if self._publisher.closed:
                    raise nats.errors.ConnectionClosedError
                self._wake.clear()
                try:
                    n = await self.relay_once()
                    failed = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failed += 1
                    self.failures += 1
                    if failed == 1:
                        _log.warning("outbox relay round failed", error=type(exc).__name__)
                    await asyncio.sleep(self.options.error_backoff.delay_s(failed))
                    continue
                # drained: fewer published than a batch, none handed beside the rounds
                if n < self.options.batch_size and not self._handed:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel
                    # that comes in the turn the wake does (gh-86296), and the relay went on
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.options.poll_interval_s):
                            await self._wake.wait()
        finally:
            await self.aclose()
