"""A Consumer with a verifier whose handler is a programming error (a plain ``def``, a
coroutine returned unawaited) reported the delivery as from nobody: the verified
publisher was dropped on that path (``("error", None, reason)``), so the access log
line had no ``peer_identity`` and the metrics and span carried the consumer's filter
subject (``>``, an unverified sender's label) instead of the verified publisher's
subject, as every other outcome of a verified message (a failed ack included) does.
Real NATS (the bus fixture), a message signed by a mesh workload."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    Consumer,
    ConsumerOptions,
    Delivery,
    MessageSigner,
    MessageVerifier,
    _consumer,
)
from meshkit.resilience import Backoff
from tests.messaging.conftest import Bus, Workloads

pytestmark = pytest.mark.timeout(30)


async def _later(d: Delivery) -> None:
    raise AssertionError("never run")


def _plain(d: Delivery) -> None:  # a plain def: no awaitable
    return None


async def _inner(d: Delivery) -> Any:  # the await forgotten
    return _later(d)


@pytest.mark.parametrize("handler", [_plain, _inner], ids=["plain-def", "coroutine"])
async def test_a_handler_fault_is_reported_with_its_verified_publisher(
        bus: Bus, workloads: Workloads, handler: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = workloads.orderd
    headers = {"Nats-Msg-Id": "p1"}
    MessageSigner(cert, key).sign(headers, msg_id="p1", subject=bus.subject, payload=b"x")
    await bus.js.publish(bus.subject, b"x", headers=headers)
    registry = CollectorRegistry()
    options = ConsumerOptions(stream=bus.stream, durable="pub", dead_letter_subject=bus.dlq,
                              backoff=Backoff(base_delay_s=0.01, max_delay_s=0.02),
                              fetch_timeout_s=0.2, max_deliveries=3, registry=registry,
                              verifier=MessageVerifier(workloads.ca_pem))
    # the access-log line's fields as the consumer writes them, whatever logging an
    # earlier test in this process configured (caplog sees none once it was configured)
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(_consumer, "log_message",
                        lambda warning, fields: lines.append(dict(fields)))
    task = asyncio.create_task(Consumer(bus.js, handler, options).run())
    try:
        done, _ = await asyncio.wait((task,), timeout=10)
        assert done, "run() still going"
        assert isinstance(task.exception(), TypeError)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    by_subject = {s.labels["subject"]: s.value
                  for m in registry.collect() if m.name == "meshkit_messaging_consumed"
                  for s in m.samples if s.name.endswith("_total")
                  and s.labels["outcome"] == "error"}
    assert by_subject == {bus.subject: 1.0}, by_subject
    errors = [f for f in lines if f.get("outcome") == "error"]
    assert errors and all(f.get("peer_identity") == "spiffe://meshkit.test/svc/orderd"
                          for f in errors), lines
