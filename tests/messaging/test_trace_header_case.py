"""W3C trace headers in another case. A Go service injects with OpenTelemetry's
``propagation.HeaderCarrier`` over the message's headers, which stores them through
``http.Header.Set``: ``Traceparent`` and ``Baggage`` (MIME-canonical). NATS headers keep
their case, and W3C Trace Context names its HTTP headers case-insensitively (section
3.2), so those are the trace and baggage of the message. Publisher.publish likewise
replaced only a lowercase ``traceparent`` given in ``headers``: a ``Traceparent`` went
out beside its own, two parents on one message."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import baggage
from prometheus_client import CollectorRegistry

from meshkit.messaging import Consumer, ConsumerOptions, Delivery, Publisher, PublishOptions
from tests.messaging.conftest import Bus
from tests.observability.conftest import Tracing
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)

_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
_PARENT = f"00-{_TRACE_ID}-b7ad6b7169203331-01"


@pytest.mark.parametrize(("traceparent", "baggage_key"), [
    ("Traceparent", "Baggage"), ("TRACEPARENT", "BAGGAGE")])
async def test_a_capitalised_trace_header_is_the_messages_trace(
        bus: Bus, tracing: Tracing, traceparent: str, baggage_key: str) -> None:
    """A message published (as a Go service does) with ``Traceparent`` / ``Baggage``:
    the CONSUMER span is in its trace and the handler sees its baggage (before: a new
    trace, no baggage)."""
    await bus.js.publish(bus.subject, b"x", headers={
        traceparent: _PARENT, baggage_key: "tenant=acme", "Nats-Msg-Id": "go-1"})
    seen: list[object] = []

    async def handle(d: Delivery) -> None:
        seen.append(baggage.get_baggage("tenant"))

    consumer = Consumer(bus.js, handle, ConsumerOptions(
        stream=bus.stream, durable="go", filter_subject=bus.subject, fetch_timeout_s=0.2,
        registry=CollectorRegistry(), tracer_provider=tracing.provider))
    await asyncio.wait_for(consumer.run_once(), 5)
    await consumer.aclose()
    assert seen == ["acme"]
    (span,) = [s for s in tracing.spans() if s.name.startswith("process ")]
    assert format(span.context.trace_id, "032x") == _TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == \
        "b7ad6b7169203331"


async def test_a_capitalised_trace_header_given_to_publish_is_replaced(
        bus: Bus, tracing: Tracing) -> None:
    """publish(headers={'Traceparent': <another trace>, 'Baggage': ...}) with tracing:
    the stored message carries the PRODUCER span's traceparent only (before: the given
    ``Traceparent`` too, and its ``Baggage`` beside ``baggage``)."""
    pub = Publisher(bus.js, PublishOptions(registry=CollectorRegistry(),
                                           tracer_provider=tracing.provider))
    await pub.publish(bus.subject, b"x", msg_id="p-1",
                      headers={"Traceparent": _PARENT, "Baggage": "stale=1", "Keep": "y"})
    sub = await bus.js.pull_subscribe(bus.subject, durable="reader", stream=bus.stream)
    got: list[object] = []

    async def fetched() -> bool:
        got.extend(await sub.fetch(1, timeout=0.5))
        return bool(got)

    await until(fetched, timeout_s=3, what="the message fetched")
    headers = dict(got[0].headers or {})  # type: ignore[attr-defined]
    trace_keys = sorted(k for k in headers if k.lower() in ("traceparent", "baggage"))
    assert trace_keys == ["traceparent"], headers
    (send,) = [s for s in tracing.spans() if s.name.startswith("send ")]
    assert headers["traceparent"].split("-")[1] == format(send.context.trace_id, "032x")
    assert headers["Keep"] == "y"
