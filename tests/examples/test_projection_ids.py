"""The projection dead-letters at once an event whose ids no order has and the store
cannot hold (a U+0000, which PostgreSQL text refuses; a lone surrogate, no UTF-8; beyond
a B-tree key, 2,704 bytes),
instead of failing it as a store error and redelivering it for two minutes."""

from __future__ import annotations

import json

import pytest

from examples.ecom import events
from meshkit.messaging import Delivery, PoisonMessage

from .test_events import _RecordingStore

pytestmark = pytest.mark.timeout(30)

LONG = "x" * (events.MAX_EVENT_ID_CHARS + 1)


def _delivery(event_id: str, user_id: str, msg_id: str = "") -> Delivery:
    body = json.dumps({"type": "OrderPlaced", "event_id": event_id, "user_id": user_id,
                       "total_minor": 250}).encode()
    return Delivery("ecom.orders.placed", body, msg_id, {}, None, 1)


@pytest.mark.parametrize(("event_id", "user_id", "msg_id"), [
    ("e\x00", "u-1", ""),
    ("e-1", "u\x00", ""),
    (LONG, "u-1", ""),
    ("e-1", LONG, ""),
    ("e-1", "u-1", LONG),
    ("e\ud800", "u-1", ""),
    ("e-1", "u\udfff", ""),
])
async def test_ids_the_store_cannot_hold_are_poison(
        event_id: str, user_id: str, msg_id: str) -> None:
    """An event id (body or Nats-Msg-Id) or user id holding U+0000 or a lone surrogate
    (not UTF-8), or longer than MAX_EVENT_ID_CHARS characters, is poison, never handed
    to the store."""
    store = _RecordingStore()
    with pytest.raises(PoisonMessage):
        await events.Projection(store)(_delivery(event_id, user_id, msg_id))  # type: ignore[arg-type]
    assert store.applied == []


async def test_ids_at_the_limit_are_applied() -> None:
    """Ids of MAX_EVENT_ID_CHARS characters (any UUID fits many times) are applied."""
    store = _RecordingStore()
    at_limit = "\U0001f600" * events.MAX_EVENT_ID_CHARS  # 4 UTF-8 bytes each
    await events.Projection(store)(_delivery(at_limit, at_limit))  # type: ignore[arg-type]
    assert store.applied == [(at_limit, at_limit, 250)]
