"""Publish/consume RED metrics, spans and access-log lines, in the conventions of RPCs.

Metrics (prometheus-client, in the registry given, default the process's meshkit registry
served at ``/metrics``; histograms in seconds with the RPC buckets, 100 µs..10 s):

* ``meshkit_messaging_published_total{subject,outcome}`` counter: publishes, by outcome;
* ``meshkit_messaging_publish_seconds{subject}`` histogram: publish until acked, retries in;
* ``meshkit_messaging_publish_retries_total{subject}`` counter: retry attempts sent;
* ``meshkit_messaging_retry_budget_exhausted_total{subject}`` counter: retries refused;
* ``meshkit_messaging_consumed_total{subject,consumer,outcome}`` counter: deliveries handled;
* ``meshkit_messaging_handling_seconds{subject,consumer}`` histogram: handler time;
* ``meshkit_messaging_lag_seconds{subject,consumer}`` histogram: signed -> handled and acked
  (needs a signing publisher: the signature's timestamp is the start);
* ``meshkit_messaging_redelivered_total{subject,consumer}`` counter: deliveries after the
  first (a nak'ed failure, or a consumer that died or outran its ack wait);
* ``meshkit_messaging_outbox_pending{outbox}`` gauge: outbox events not yet published, as
  the relay last counted them (after each round; needs a store with ``count_pending``).

``outcome`` of a publish: ``ok``, ``duplicate`` (JetStream dropped it as a repeat of its
``Nats-Msg-Id``), ``error``, ``cancelled`` (its caller cancelled it: a call given up, a
relay's ``aclose()``; it may have been stored). Of a delivery: ``ack``, ``retry`` (nak
with backoff; also a message whose dead letter could not be published, nak'ed), ``dead_letter``,
``refused`` (identity check failed: dead-lettered too; a dead letter refused is
``term``'ed), ``terminated`` (a dead letter that failed for good, ``term``'ed rather
than dead-lettered again), ``skipped`` (a message on the consumer's own dead-letter
subject, acked unhandled), ``error`` (its ack, nak or term failed, e.g. the connection
closed; or the handler returned no awaitable), ``cancelled`` (the consumer was stopped
while handling it: left unacked, redelivered after its ack wait). A ``cancelled`` one's
access-log line is an info one, not a warning; its span has an error status.

``subject`` of a publish is the subject published to. Of a delivery it is the subject it
came on, except for a consumer with a verifier and a message whose publisher it did not
verify (``refused``, or dead-lettered unverified): then the consumer's filter subject
(``>`` without one), the destination's template in the OpenTelemetry messaging
conventions, so an unauthenticated sender cannot make a series per subject it makes up.
A registry labels at most :data:`MAX_SUBJECTS` (1,000) subjects with their own names,
publishes and deliveries together, then further ones :data:`OTHER_SUBJECT` (``other``),
as the RPC metrics do client and server methods: with a subject per entity
(``orders.<order id>``) every new subject would otherwise add series (a histogram's
buckets, sum and count each) kept for ever, on ``/metrics`` and in memory. The subjects
labelled first keep their labels; spans and access-log events keep the real subject.

Spans follow the OpenTelemetry messaging conventions: ``send <subject>`` (PRODUCER) and
``process <subject>`` (CONSUMER; ``process <filter subject>`` for a message whose
publisher was not verified, as for the metrics), ``messaging.system=nats``,
``messaging.destination.name``, ``messaging.destination.template`` (CONSUMER: the filter
subject), ``messaging.message.id``; the W3C context and baggage
travel in the message headers, so a trace goes request -> outbox -> relay -> consumer.
Access log: logger ``meshkit.access``, event ``message``, fields ``side`` (``publish`` /
``consume``), ``subject``, ``msg_id``, ``outcome``, ``duration_ms``, ``attempts`` (publish)
or ``delivery`` (consume), ``peer_identity`` (consume, when verified), ``trace_id``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

# first: it reads OTEL_PROPAGATORS leaving out what is not installed, where importing
# opentelemetry.propagate alone raises ValueError (b3 without its package)
import meshkit.observability._tracing  # noqa: F401  # isort: skip
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from meshkit._config import check_instance
from meshkit.observability import default_registry
from meshkit.observability._logging import access_active, access_logger
from meshkit.observability._metrics import DURATION_BUCKETS_S
from meshkit.observability._tracing import bound_propagation_warnings

__all__ = [
    "MAX_SUBJECTS",
    "OTHER_SUBJECT",
    "MessagingMetrics",
    "capture_context",
    "log_message",
    "messaging_metrics",
    "tracer",
]

MAX_SUBJECTS = 1000
"""Subjects a registry's messaging metrics label with their own names (publish and consume
sides together, as many as :data:`meshkit.observability._metrics.MAX_CLIENT_METHODS`);
further ones are labelled :data:`OTHER_SUBJECT`. Subjects are the calling code's choice
(a subject per entity is NATS' usual addressing), each one a set of series kept for ever."""

OTHER_SUBJECT = "other"
"""The ``subject`` label of publishes and deliveries of subjects beyond
:data:`MAX_SUBJECTS` (gRFC A66's ``"other"`` for methods, here for subjects)."""


class MessagingMetrics:
    """The messaging metric families of one registry (built once, see the module table).

    Args:
        registry: the ``CollectorRegistry`` they are registered on.

    Raises:
        ConfigError: ``registry`` is no ``CollectorRegistry`` instance: ``None`` (which
            prometheus-client reads as "register nowhere": metrics no one would ever
            scrape) or the class (quoted); use :func:`messaging_metrics` for the default.
    """

    __slots__ = (
        "__weakref__",
        "_subjects",
        "budget_exhausted",
        "consumed",
        "handling",
        "lag",
        "outbox_pending",
        "publish_seconds",
        "published",
        "redelivered",
        "retries",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        check_instance("registry", registry, CollectorRegistry, optional=False)
        r = registry
        self._subjects: set[str] = set()
        self.published = Counter("meshkit_messaging_published_total",
                                 "Messages published to JetStream, by outcome.",
                                 ("subject", "outcome"), registry=r)
        self.publish_seconds = Histogram("meshkit_messaging_publish_seconds",
                                         "Publish time until the stream's ack, retries "
                                         "included.", ("subject",), registry=r,
                                         buckets=DURATION_BUCKETS_S)
        self.retries = Counter("meshkit_messaging_publish_retries_total",
                               "Publish retry attempts sent.", ("subject",), registry=r)
        self.budget_exhausted = Counter("meshkit_messaging_retry_budget_exhausted_total",
                                        "Publish retries refused by the retry budget.",
                                        ("subject",), registry=r)
        self.consumed = Counter("meshkit_messaging_consumed_total",
                                "Deliveries handled, by outcome.",
                                ("subject", "consumer", "outcome"), registry=r)
        self.handling = Histogram("meshkit_messaging_handling_seconds",
                                  "Consumer handler time.", ("subject", "consumer"),
                                  registry=r, buckets=DURATION_BUCKETS_S)
        self.lag = Histogram("meshkit_messaging_lag_seconds",
                             "From the publisher's signature to the handler's end.",
                             ("subject", "consumer"), registry=r,
                             buckets=DURATION_BUCKETS_S)
        self.redelivered = Counter("meshkit_messaging_redelivered_total",
                                   "Deliveries after a message's first.",
                                   ("subject", "consumer"), registry=r)
        self.outbox_pending = Gauge("meshkit_messaging_outbox_pending",
                                    "Outbox events not yet published (the relay's last "
                                    "count).", ("outbox",), registry=r)

    def subject(self, subject: str) -> str:
        """The ``subject`` label of ``subject``: itself if it is one of the first
        :data:`MAX_SUBJECTS` subjects labelled in this registry (publishes and deliveries
        together), else :data:`OTHER_SUBJECT`."""
        subjects = self._subjects
        if subject not in subjects:
            if len(subjects) >= MAX_SUBJECTS:
                return OTHER_SUBJECT
            subjects.add(subject)
        return subject


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, MessagingMetrics] = (
    weakref.WeakKeyDictionary())


def messaging_metrics(registry: CollectorRegistry | None = None) -> MessagingMetrics:
    """The :class:`MessagingMetrics` of ``registry`` (default the meshkit registry),
    registered on first use.

    Raises:
        ConfigError: ``registry`` is no ``CollectorRegistry`` instance nor ``None``
            (quoted).
    """
    check_instance("registry", registry, CollectorRegistry)
    reg = default_registry() if registry is None else registry
    found = _BY_REGISTRY.get(reg)
    if found is None:
        found = _BY_REGISTRY[reg] = MessagingMetrics(reg)
    return found


def tracer(provider: Any = None) -> trace.Tracer:
    """The tracer of messaging spans from ``provider`` (default the global provider,
    looked up per use so a provider installed later is honoured)."""
    if provider is not None:
        return provider.get_tracer("meshkit.messaging")  # type: ignore[no-any-return]
    return trace.get_tracer("meshkit.messaging")


def capture_context() -> dict[str, str]:
    """The current trace context and baggage as W3C headers (``traceparent``,
    ``tracestate``, ``baggage``), e.g. to store with an outbox row in the transaction
    that writes it; empty outside a trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class _AnyCaseGetter(Getter[Mapping[str, str]]):
    """Reads a propagator's header (``traceparent``, ``baggage``...) in any case: NATS
    headers keep the case they were sent in, and a Go service injecting through
    OpenTelemetry's ``propagation.HeaderCarrier`` (``http.Header.Set``) sends
    ``Traceparent`` and ``Baggage``; W3C Trace Context (section 3.2) and Baggage name
    their HTTP headers case-insensitively. The exact name is looked up first; only a
    header absent under it costs a scan of the headers (a few, per delivery)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            lowered = key.lower()
            value = next((v for k, v in carrier.items()
                          if isinstance(k, str) and k.lower() == lowered), None)
            if value is None:
                return None
        return [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier.keys())


_GETTER = _AnyCaseGetter()


def extract(headers: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context carried by message ``headers`` (empty if none), their
    names in any case (``Traceparent`` and ``Baggage`` from a Go publisher included;
    the exact lowercase name wins when both are there). The
    propagators' warnings about malformed ``baggage``/``tracestate`` headers, which quote
    the publisher's text once per message, are bounded as on a server
    (:func:`meshkit.observability._tracing.bound_propagation_warnings`, from the first
    extraction on), also in a process that only consumes.

    The extraction starts from an empty context whatever the propagators' order (the
    API's baggage propagator, given none, starts from the current one: first in
    ``OTEL_PROPAGATORS`` it made the span and baggage current where a consumer or relay
    was started the parent and baggage of every message that carried none)."""
    if not _bounded:
        _bound_warnings()
    return propagate.extract(headers or {}, Context(), getter=_GETTER)


_bounded = False


def _bound_warnings() -> None:
    global _bounded
    bound_propagation_warnings()
    _bounded = True


def log_message(warning: bool, fields: dict[str, Any]) -> None:
    """Write one ``message`` access-log event (logger ``meshkit.access``) if access logging
    is on; trace ids come from the current span."""
    if not access_active():
        return
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        fields["trace_id"] = format(ctx.trace_id, "032x")
        fields["span_id"] = format(ctx.span_id, "016x")
    lg = access_logger()
    if warning:
        lg.warning("message", **fields)
    else:
        lg.info("message", **fields)
