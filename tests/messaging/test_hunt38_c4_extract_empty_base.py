"""A message's context is what it carries, "empty if none", under any propagator order:
before, with ``OTEL_PROPAGATORS=baggage,tracecontext`` (baggage first) the API's baggage
propagator, given no context, started from the *current* one, so a consumer (or an
outbox relay) whose task was started inside a span (a traced start-up, a gRPC handler
starting it) took that span for the parent of every message that carried no trace
context (another client's, a publisher with tracing off, an outbox row written outside
a trace): all of them one giant trace under the boot span, and its baggage handed to
every handler and on downstream. The gRPC side was fixed in df288e7."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    Consumer,
    ConsumerOptions,
    Delivery,
    OutboxEvent,
    OutboxRelay,
    Publisher,
    PublishOptions,
    RelayOptions,
)
from tests.messaging.conftest import Bus
from tests.observability.conftest import Tracing

pytestmark = pytest.mark.timeout(30)

_ORDERS = ["baggage,tracecontext", "tracecontext,baggage"]


@pytest.fixture(params=_ORDERS, ids=_ORDERS)
def propagators(request: pytest.FixtureRequest,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    kinds = {"baggage": W3CBaggagePropagator, "tracecontext": TraceContextTextMapPropagator}
    order: str = request.param
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator(
        [kinds[n]() for n in order.split(",")]))
    yield order


def _boot(tracing: Tracing) -> tuple[object, trace.Span]:
    """A boot span and boot baggage made current; (the detach token, the span)."""
    boot = tracing.provider.get_tracer("boot").start_span("boot")
    token = otel_context.attach(baggage.set_baggage(
        "tenant", "boot", trace.set_span_in_context(boot)))
    return token, boot


async def test_a_message_without_trace_context_starts_its_own_trace(
        bus: Bus, tracing: Tracing, propagators: str) -> None:
    seen: list[dict[str, object]] = []
    handled = asyncio.Event()

    async def handle(d: Delivery) -> None:
        seen.append(dict(baggage.get_all()))
        handled.set()

    consumer = Consumer(bus.js, handle, ConsumerOptions(
        stream=bus.stream, durable="noctx", filter_subject=bus.subject,
        registry=CollectorRegistry(), tracer_provider=tracing.provider, access_log=False))
    token, boot = _boot(tracing)
    try:
        task = asyncio.create_task(consumer.run())  # inherits the boot context
    finally:
        otel_context.detach(token)
    try:
        # another client's event: an id and baggage, no traceparent
        await bus.js.publish(bus.subject, b"x",
                             headers={"Nats-Msg-Id": "e1", "baggage": "region=eu"})
        await asyncio.wait_for(handled.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        boot.end()
    assert seen == [{"region": "eu"}]  # before (baggage first): tenant=boot too
    (span,) = [s for s in tracing.spans() if s.kind == SpanKind.CONSUMER]
    assert span.parent is None  # before: the boot span
    assert span.context.trace_id != boot.get_span_context().trace_id


class _Outbox:
    def __init__(self, event: OutboxEvent) -> None:
        self.events = [event]

    async def pending_events(self, limit: int) -> Sequence[OutboxEvent]:
        return self.events[:limit]

    async def mark_sent(self, event_ids: Sequence[str]) -> None:
        self.events = [e for e in self.events if e.event_id not in event_ids]


async def test_an_outbox_event_written_outside_a_trace_starts_its_own_trace(
        bus: Bus, tracing: Tracing, propagators: str) -> None:
    store = _Outbox(OutboxEvent("e2", bus.subject, b"x", {}))
    relay = OutboxRelay(store, Publisher(bus.js, PublishOptions(
        registry=CollectorRegistry(), tracer_provider=tracing.provider,
        access_log=False)), RelayOptions(poll_interval_s=0.05))
    token, boot = _boot(tracing)
    try:
        task = asyncio.create_task(relay.run())  # inherits the boot context
    finally:
        otel_context.detach(token)
    try:
        for _ in range(200):
            if not store.events:
                break
            await asyncio.sleep(0.05)
        assert not store.events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        boot.end()
    (span,) = [s for s in tracing.spans() if s.kind == SpanKind.PRODUCER]
    assert span.parent is None  # before (baggage first): the boot span
    stored = await bus.js.get_last_msg(bus.stream, bus.subject)
    assert "baggage" not in (stored.headers or {})  # before: tenant=boot sent on
