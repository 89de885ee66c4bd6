"""A message whose ``Meshkit-Identity`` header names another workload than its certificate
is refused by ``MessageVerifier``.

The header is not signed: any workload able to publish could sign an event with its own
certificate and write ``Meshkit-Identity: spiffe://<td>/svc/paymentd``. It passed
verification (the certificate's identity, orderd, returned), and the handler's
``Delivery.headers``, the dead-letter copy and anything else reading the message's
headers named paymentd as its publisher. A verified message now never carries an identity
header that contradicts its certificate; one without the header still verifies (the
certificate decides).
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from meshkit.messaging import (
    HDR_IDENTITY,
    Consumer,
    ConsumerOptions,
    Delivery,
    MessageIdentityError,
    MessageSigner,
    MessageVerifier,
)
from tests.messaging.conftest import Bus, Workloads, bus, workloads  # noqa: F401 - fixtures
from tests.observability.conftest import prom  # noqa: F401 - fixture
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_ARGS = {"msg_id": "e1", "subject": "orders.placed", "payload": b"{}"}
_PAYMENTD = "spiffe://meshkit.test/svc/paymentd"


def _signed(w: Workloads, **args: object) -> dict[str, str]:
    headers: dict[str, str] = {}
    MessageSigner(*w.orderd).sign(headers, **(args or _ARGS))  # type: ignore[arg-type]
    return headers


def test_an_identity_header_naming_another_workload_is_refused(
        workloads: Workloads) -> None:  # noqa: F811 - fixture
    """orderd's signed message claiming paymentd in Meshkit-Identity is refused."""
    headers = _signed(workloads)
    headers[HDR_IDENTITY] = _PAYMENTD
    with pytest.raises(MessageIdentityError, match="paymentd") as err:
        MessageVerifier(workloads.ca_pem).verify(headers, **_ARGS)  # type: ignore[arg-type]
    assert "svc/orderd" in str(err.value)


def test_a_message_without_the_identity_header_still_verifies(
        workloads: Workloads) -> None:  # noqa: F811 - fixture
    """The header stays optional: the certificate decides who published."""
    headers = _signed(workloads)
    del headers[HDR_IDENTITY]
    peer = MessageVerifier(workloads.ca_pem).verify(headers, **_ARGS)  # type: ignore[arg-type]
    assert peer.service == "orderd"


async def test_a_consumer_never_hands_a_forged_identity_header_to_its_handler(
        bus: Bus, prom: CollectorRegistry, workloads: Workloads) -> None:  # noqa: F811
    """Published on a real JetStream stream, the forged message reached the handler as
    orderd's with headers saying paymentd; now it is refused (dead-lettered) and the
    handler sees only the genuine message."""
    seen: list[tuple[str | None, str | None]] = []

    async def handle(d: Delivery) -> None:
        seen.append((d.publisher.spiffe_id if d.publisher else None,
                     (d.headers or {}).get(HDR_IDENTITY)))

    for msg_id, forged in (("f1", True), ("g1", False)):
        headers = _signed(workloads, msg_id=msg_id, subject=bus.subject, payload=b"x")
        if forged:
            headers[HDR_IDENTITY] = _PAYMENTD
        await bus.js.publish(bus.subject, b"x", headers={**headers, "Nats-Msg-Id": msg_id})
    consumer = Consumer(bus.js, handle, ConsumerOptions(
        stream=bus.stream, durable="d1", dead_letter_subject=bus.dlq, fetch_timeout_s=0.2,
        registry=prom, filter_subject=bus.subject,
        verifier=MessageVerifier(workloads.ca_pem)))

    def refused() -> float:
        value = prom.get_sample_value("meshkit_messaging_consumed_total", {
            "subject": bus.subject, "consumer": "d1", "outcome": "refused"})
        return value or 0.0

    async def settled() -> bool:
        await consumer.run_once()
        return len(seen) + refused() >= 2

    await until(settled, timeout_s=15, interval_s=0.01, what="both messages settled")
    assert seen == [("spiffe://meshkit.test/svc/orderd", "spiffe://meshkit.test/svc/orderd")]
    assert refused() == 1
