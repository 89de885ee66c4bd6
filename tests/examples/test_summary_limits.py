"""The projection's summaries at their limits: a user's total past int64, an event total
no order can have, and a summary store failing otherwise than by an outage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from structlog.testing import capture_logs

from examples.ecom import events, validation
from examples.ecom.proto import summary_pb2, summary_pb2_grpc
from examples.ecom.storage import OrderSummary, Store, StoreError
from meshkit.messaging import Delivery, PoisonMessage

from .test_events import _RecordingStore

pytestmark = pytest.mark.timeout(30)

INT64_MAX = 2**63 - 1
#: The largest total PlaceOrder accepts: 100 items of 10,000 units at 10^12 each.
MAX_TOTAL = validation.MAX_ITEMS * validation.MAX_QUANTITY * validation.MAX_UNIT_PRICE_MINOR


async def test_summary_total_saturates_instead_of_failing(store: Store) -> None:
    """Ten orders of the largest valid total (10^18 each) are all counted; the user's
    total stops at 2^63-1 (int64's maximum) instead of failing the apply on PostgreSQL
    (bigint out of range: the event redelivered, then dead-lettered) or turning into a
    float on SQLite."""
    for _ in range(10):
        assert await store.apply_order_placed(str(uuid.uuid4()), "u-1", MAX_TOTAL)
    summary = await store.order_summary("u-1")
    assert summary == OrderSummary("u-1", 10, INT64_MAX)
    assert type(summary.total_minor) is int
    assert await store.apply_order_placed(str(uuid.uuid4()), "u-1", 0)
    assert await store.order_summary("u-1") == OrderSummary("u-1", 11, INT64_MAX)
    assert await store.apply_order_placed(str(uuid.uuid4()), "u-2", 5)
    assert await store.order_summary("u-2") == OrderSummary("u-2", 1, 5)


@pytest.mark.parametrize("total", [-1, MAX_TOTAL + 1, 2**63, 10**30])
async def test_projection_dead_letters_an_impossible_total(total: int) -> None:
    """An event whose total no order can have (negative, above 10^18, beyond int64) is
    poison at once, not retried for two minutes as a store failure."""
    store = _RecordingStore()
    projection = events.Projection(store)  # type: ignore[arg-type]
    body = (b'{"type":"OrderPlaced","event_id":"e-1","user_id":"u-1","total_minor":'
            + str(total).encode() + b"}")
    with pytest.raises(PoisonMessage):
        await projection(Delivery("ecom.orders.placed", body, "e-1", {}, None, 1))
    assert store.applied == []


class _FailingStore:
    """A summary store whose reads fail with a plain StoreError (e.g. a SQL error)."""

    async def order_summary(self, user_id: str) -> OrderSummary:
        raise StoreError("the postgresql store failed") from ValueError("secret detail")


@pytest.fixture
async def summary_stub() -> AsyncIterator[summary_pb2_grpc.OrderSummaryServiceStub]:
    """OrderSummaryService over a failing store on a real grpc.aio server."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    summary_pb2_grpc.add_OrderSummaryServiceServicer_to_server(
        events.OrderSummaryServicer(_FailingStore()), server)  # type: ignore[arg-type]
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield summary_pb2_grpc.OrderSummaryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def test_summary_store_failure_is_internal(
        summary_stub: summary_pb2_grpc.OrderSummaryServiceStub) -> None:
    """A summary store failure that is not an outage is INTERNAL with a generic message
    (the cause logged), not grpc's UNKNOWN "Unexpected <class ...>" of an unhandled
    exception."""
    with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as info:
        await summary_stub.GetOrderSummary(
            summary_pb2.GetOrderSummaryRequest(user_id=str(uuid.uuid4())))
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INTERNAL, "summary store failed")
    assert any(e["event"] == "summary store call failed" for e in logs)


@pytest.mark.parametrize("fields", [
    b'"event_id":123,"user_id":"u-1"',
    b'"event_id":["e"],"user_id":"u-1"',
    b'"event_id":"e-1","user_id":""',
])
async def test_projection_dead_letters_a_bad_event_id_or_empty_user(fields: bytes) -> None:
    """An event without a message id whose body's event_id is not a string, or with an
    empty user_id, is poison at once (not handed to the store, where it failed as a
    store error on PostgreSQL and was redelivered for two minutes, or counted for no
    user)."""
    store = _RecordingStore()
    projection = events.Projection(store)  # type: ignore[arg-type]
    body = b'{"type":"OrderPlaced",' + fields + b',"total_minor":250}'
    with pytest.raises(PoisonMessage):
        await projection(Delivery("ecom.orders.placed", body, "", {}, None, 1))
    assert store.applied == []
