"""Messaging: events through NATS JetStream with the mesh's identity, tracing and retries.

What gRPC calls get from meshkit, asynchronous messages get here:

* :class:`Publisher` publishes with ``Nats-Msg-Id`` = the event id (JetStream drops a
  repeat within the stream's ``duplicate_window``), retries timeouts / no-responders /
  JetStream 503 with full-jitter backoff inside a :class:`~meshkit.resilience.RetryBudget`
  (the rule gRPC retries follow: 20 % of publishes + 10/s), signs each message with the
  workload identity (:class:`MessageSigner`), carries W3C trace context and baggage in
  the headers, and counts / logs each publish.
* :class:`OutboxRelay` moves events from a transactional outbox (:class:`OutboxStore`: the
  service's database, written in the business transaction) to the stream: publish, then
  mark sent, so a relay killed in between only causes a repeat that the dedupe window
  or the idempotent consumer drops; with a store that can count (:class:`PendingCounter`)
  it exports the outbox backlog as a gauge.
* :class:`Consumer` runs a handler over a durable pull consumer: explicit ack, nak with
  backoff on failure, ``max_deliveries`` then a dead-letter subject (the server's
  ``max_deliver`` is unlimited and the consumer counts deliveries itself, so a message
  that kills its consumer process every time is dead-lettered on the next delivery, and
  one whose dead letter cannot be published is kept, never dropped), a CONSUMER span that
  continues the producer's trace, the publisher's identity checked against the mesh CA
  at the message's signed send time, within ``max_message_age_s`` (7 days) of now
  (:class:`MessageVerifier`; see :mod:`meshkit.messaging._identity` for why a signature
  rather than NATS credentials, and for that bound).
* :func:`ensure_stream` creates a stream, or updates an existing one's subjects,
  duplicate window (2 min, or the max age if shorter, by default) and max age, keeping
  its other settings.

Defaults: publish 3 attempts, 2 s each; consumer 5 deliveries, 100 ms..5 s backoff, 30 s
ack wait; tracing, metrics and access log on. Needs the ``meshkit[nats]`` extra (nats-py).

Example::

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await ensure_stream(js, "ORDERS", ["orders.>"], duplicate_window_s=120)
    relay = OutboxRelay(store, Publisher(js, PublishOptions(signer=signer)))
    consumer = Consumer(js, handle, ConsumerOptions(stream="ORDERS", durable="summary"))
    await asyncio.gather(relay.run(), consumer.run())
"""

from __future__ import annotations

import meshkit._log  # noqa: F401  (meshkit's loggers quiet until logging is configured)

try:
    import nats  # noqa: F401  (nats-py: the meshkit[nats] extra)
except ImportError as _exc:
    raise ImportError(f"meshkit.messaging needs nats-py, which is not installed "
                      f"({_exc.name}): pip install 'meshkit[nats]'",
                      name=_exc.name) from _exc

from meshkit.messaging._consumer import (
    DLQ_CONSUMER_HEADER,
    DLQ_DELIVERIES_HEADER,
    DLQ_MSG_ID_HEADER,
    DLQ_REASON_HEADER,
    DLQ_SUBJECT_HEADER,
    Consumer,
    ConsumerOptions,
    Delivery,
    Handler,
    PoisonMessage,
    is_dead_letter,
)
from meshkit.messaging._identity import (
    HDR_CERT,
    HDR_IDENTITY,
    HDR_SENT_AT_MS,
    HDR_SIGNATURE,
    MessageIdentityError,
    MessageSigner,
    MessageVerifier,
)
from meshkit.messaging._publisher import (
    MSG_ID_HEADER,
    OutboxEvent,
    OutboxRelay,
    OutboxStore,
    PendingCounter,
    Publisher,
    PublishError,
    PublishOptions,
    RelayOptions,
)
from meshkit.messaging._stream import ensure_stream
from meshkit.messaging._telemetry import MessagingMetrics, capture_context, messaging_metrics

__all__ = [
    "DLQ_CONSUMER_HEADER",
    "DLQ_DELIVERIES_HEADER",
    "DLQ_MSG_ID_HEADER",
    "DLQ_REASON_HEADER",
    "DLQ_SUBJECT_HEADER",
    "HDR_CERT",
    "HDR_IDENTITY",
    "HDR_SENT_AT_MS",
    "HDR_SIGNATURE",
    "MSG_ID_HEADER",
    "Consumer",
    "ConsumerOptions",
    "Delivery",
    "Handler",
    "MessageIdentityError",
    "MessageSigner",
    "MessageVerifier",
    "MessagingMetrics",
    "OutboxEvent",
    "OutboxRelay",
    "OutboxStore",
    "PendingCounter",
    "PoisonMessage",
    "PublishError",
    "PublishOptions",
    "Publisher",
    "RelayOptions",
    "capture_context",
    "ensure_stream",
    "is_dead_letter",
    "messaging_metrics",
]
