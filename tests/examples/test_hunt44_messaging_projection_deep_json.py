"""An OrderPlaced body nested deeper than Python's JSON decoder recurses (``[[[[...``,
any body up to NATS' 1 MB max_payload) made ``json.loads`` raise ``RecursionError``, not
the ``ValueError`` the projection took for a body that is no event: the handler failed
as if the summary store were down and the event was redelivered MAX_DELIVERIES (20)
times, about two minutes, before its dead letter. It is poison: dead-lettered at once."""

from __future__ import annotations

import pytest

from examples.ecom import events
from meshkit.messaging import Delivery, PoisonMessage

from .test_events import _RecordingStore

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000],
                         ids=["array", "object"])
async def test_a_too_deeply_nested_body_is_poison(body: bytes) -> None:
    """A body nested past the decoder's recursion limit raises PoisonMessage, never
    reaching the store."""
    store = _RecordingStore()
    delivery = Delivery("ecom.orders.placed", body, "e-1", {}, None, 1)
    with pytest.raises(PoisonMessage):
        await events.Projection(store)(delivery)  # type: ignore[arg-type]
    assert store.applied == []
