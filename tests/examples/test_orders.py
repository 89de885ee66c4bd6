"""OrderService on a real in-process grpc.aio server, calling UserService over gRPC."""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from examples.ecom.orders import OrderServicer
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc
from examples.ecom.storage import RowCounts, Store
from examples.ecom.validation import encode_page_token

from .conftest import Stack
from .test_users import rpc_error

pytestmark = pytest.mark.timeout(30)

MISSING_USER = "00000000-0000-4000-8000-000000000000"


def item(sku: str = "SKU-1", quantity: int = 1, price: int = 100) -> order_pb2.OrderItem:
    """An order item."""
    return order_pb2.OrderItem(sku=sku, quantity=quantity, unit_price_minor=price)


@pytest.fixture
async def user_id(stack: Stack) -> str:
    """The id of a freshly created user."""
    user = await stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="bob@example.com", name="Bob", password="password1")
    )
    return user.id


def request(uid: str, **kw: Any) -> order_pb2.PlaceOrderRequest:
    """A valid PlaceOrder request for user ``uid``, with fields overridden by ``kw``."""
    fields: dict[str, Any] = {
        "user_id": uid,
        "items": [item("SKU-1", 2, 250), item("SKU-2", 3, 1000)],
        "currency": "EUR",
    }
    fields.update(kw)
    return order_pb2.PlaceOrderRequest(**fields)


async def test_place_and_get(stack: Stack, user_id: str) -> None:
    """A placed order has a server-computed total and can be read back."""
    order = await stack.orders.PlaceOrder(request(user_id), timeout=10)
    assert order.total_minor == 2 * 250 + 3 * 1000
    assert (order.user_id, order.currency) == (user_id, "EUR")
    assert order.status == order_pb2.ORDER_STATUS_PLACED
    assert [i.sku for i in order.items] == ["SKU-1", "SKU-2"]
    assert await stack.orders.GetOrder(order_pb2.GetOrderRequest(order_id=order.id)) == order


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"user_id": ""}, "user_id: required"),
        ({"user_id": "bob"}, "user_id: must be a UUID, got 'bob'"),
        ({"items": []}, "items: must have at least 1 item"),
        ({"items": [item()] * 101}, "items: must have at most 100 items, got 101"),
        ({"items": [item(), item(quantity=-2)]}, "items[1].quantity: must be >= 1, got -2"),
        ({"items": [item(quantity=0)]}, "items[0].quantity: must be >= 1, got 0"),
        ({"items": [item(quantity=10_001)]}, "items[0].quantity: must be <= 10000"),
        ({"items": [item(price=-1)]}, "items[0].unit_price_minor: must be >= 0, got -1"),
        ({"items": [item(price=10**12 + 1)]}, "items[0].unit_price_minor: must be <="),
        ({"items": [item(sku="")]}, "items[0].sku: required"),
        ({"items": [item(sku="S" * 65)]}, "items[0].sku: must be at most 64 characters, got 65"),
        ({"items": [item(sku="bad sku")]}, "items[0].sku: must match"),
        ({"items": [item(sku="-SKU")]}, "items[0].sku: must match"),  # first: letter/digit
        ({"currency": ""}, "currency: required"),
        ({"currency": "XYZ"}, "currency: unsupported currency 'XYZ'"),
        ({"currency": "eur"}, "currency: unsupported currency 'eur'"),
        ({"currency": "EURO"}, "currency: must be at most 3 characters, got 4"),
        ({"idempotency_key": "k" * 129}, "idempotency_key: must be at most 128 characters"),
        ({"idempotency_key": "has space"}, "idempotency_key: must be printable ASCII"),
        (
            {"items": [item(quantity=-1)], "currency": "ZZZ"},
            "items[0].quantity: must be >= 1, got -1; currency: unsupported",
        ),
    ],
)
async def test_place_order_invalid(
    stack: Stack, user_id: str, overrides: dict[str, Any], expected: str
) -> None:
    """Malformed PlaceOrder requests get INVALID_ARGUMENT naming the field, and store nothing."""
    err = await rpc_error(stack.orders.PlaceOrder(request(user_id, **overrides)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")
    assert await stack.store.count_rows() == RowCounts(users=1, orders=0, order_items=0)


async def test_unknown_user_not_found(stack: Stack) -> None:
    """PlaceOrder for a user the user service does not know gets NOT_FOUND and stores nothing."""
    err = await rpc_error(stack.orders.PlaceOrder(request(MISSING_USER)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"user {MISSING_USER} not found"
    assert await stack.store.count_rows() == RowCounts(0, 0, 0)


async def test_get_order_errors(stack: Stack) -> None:
    """GetOrder answers NOT_FOUND for an unknown id and INVALID_ARGUMENT for a malformed one."""
    err = await rpc_error(stack.orders.GetOrder(order_pb2.GetOrderRequest(order_id=MISSING_USER)))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(stack.orders.GetOrder(order_pb2.GetOrderRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "order_id: required"


async def test_idempotent_replay(stack: Stack, user_id: str) -> None:
    """Replaying PlaceOrder with the same key returns the first order and stores one."""
    first = await stack.orders.PlaceOrder(request(user_id, idempotency_key="key-1"))
    again = await stack.orders.PlaceOrder(request(user_id, idempotency_key="key-1"))
    assert again == first and first.idempotency_key == "key-1"
    assert (await stack.store.count_rows()).orders == 1


async def test_idempotency_key_from_metadata(stack: Stack, user_id: str) -> None:
    """The key may come in `idempotency-key` metadata; the request field takes precedence."""
    md = (("idempotency-key", "md-key"),)
    first = await stack.orders.PlaceOrder(request(user_id), metadata=md)
    again = await stack.orders.PlaceOrder(request(user_id), metadata=md)
    assert again.id == first.id and first.idempotency_key == "md-key"
    by_field = await stack.orders.PlaceOrder(
        request(user_id, idempotency_key="field-key"), metadata=md
    )
    assert by_field.id != first.id and by_field.idempotency_key == "field-key"
    err = await rpc_error(
        stack.orders.PlaceOrder(request(user_id), metadata=(("idempotency-key", "x" * 129),))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata idempotency-key: must be at most 128" in (err.details() or "")
    assert (await stack.store.count_rows()).orders == 2


async def test_key_reuse_with_other_payload(stack: Stack, user_id: str) -> None:
    """Reusing a key for a different request gets FAILED_PRECONDITION and stores nothing."""
    await stack.orders.PlaceOrder(request(user_id, idempotency_key="key-1"))
    err = await rpc_error(
        stack.orders.PlaceOrder(request(user_id, idempotency_key="key-1", currency="USD"))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "idempotency_key: already used for a different request" in (err.details() or "")
    assert await stack.store.count_rows() == RowCounts(users=1, orders=1, order_items=2)


async def test_list_orders_paging(stack: Stack, user_id: str) -> None:
    """ListOrders pages through a user's orders newest first and ends with an empty token."""
    ids = [(await stack.orders.PlaceOrder(request(user_id))).id for _ in range(5)]
    seen: list[str] = []
    token = ""
    for expected in (2, 2, 1):
        page = await stack.orders.ListOrders(
            order_pb2.ListOrdersRequest(user_id=user_id, page_size=2, page_token=token)
        )
        assert len(page.orders) == expected
        seen += [o.id for o in page.orders]
        token = page.next_page_token
    assert token == "" and seen == ids[::-1]
    default = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user_id))
    assert [o.id for o in default.orders] == ids[::-1] and not default.next_page_token


@pytest.mark.parametrize(
    ("page_size", "page_token", "expected"),
    [
        (101, "", "page_size: must be between 1 and 100, got 101"),
        (-1, "", "page_size: must be between 1 and 100, got -1"),
        (0, "garbage!", "page_token: malformed"),
        (0, "eyJ1IjoxfQ", "page_token: malformed"),  # {"u":1}
        (0, "x" * 600, "page_token: malformed"),
        (0, encode_page_token(MISSING_USER, 5), "page_token: was issued for a different user_id"),
    ],
)
async def test_list_orders_invalid(
    stack: Stack, user_id: str, page_size: int, page_token: str, expected: str
) -> None:
    """ListOrders with a bad page size or page token gets INVALID_ARGUMENT."""
    err = await rpc_error(
        stack.orders.ListOrders(
            order_pb2.ListOrdersRequest(user_id=user_id, page_size=page_size, page_token=page_token)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.details() or "")


def _dead_target() -> str:
    """A 127.0.0.1 address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_user_service_unavailable(sqlite_store: Store) -> None:
    """PlaceOrder answers UNAVAILABLE when the user service cannot be reached, with a
    message that does not pass on the channel's error (it names the address)."""
    dead = grpc.aio.insecure_channel(_dead_target())
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    order_pb2_grpc.add_OrderServiceServicer_to_server(
        OrderServicer(sqlite_store, user_pb2_grpc.UserServiceStub(dead)), server
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            err = await rpc_error(
                order_pb2_grpc.OrderServiceStub(ch).PlaceOrder(request(MISSING_USER), timeout=5)
            )
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "user service unavailable"
        assert (await sqlite_store.count_rows()).orders == 0
    finally:
        await dead.close()
        await server.stop(None)


class _RecordingUsers:
    """A stand-in UserServiceStub whose GetUser records its timeout."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def GetUser(
        self, req: user_pb2.GetUserRequest, *, timeout: float | None = None
    ) -> Awaitable[user_pb2.User]:
        self.timeouts.append(timeout)

        async def answer() -> user_pb2.User:
            return user_pb2.User(id=req.user_id)

        return answer()


async def test_deadline_passed_to_user_lookup(sqlite_store: Store) -> None:
    """PlaceOrder gives GetUser the caller's remaining deadline as its timeout."""
    users = _RecordingUsers()
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    order_pb2_grpc.add_OrderServiceServicer_to_server(
        OrderServicer(sqlite_store, users, user_lookup_timeout_s=7.0),  # type: ignore[arg-type]
        server,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = order_pb2_grpc.OrderServiceStub(ch)
            await stub.PlaceOrder(request(MISSING_USER), timeout=3)
            await stub.PlaceOrder(request(MISSING_USER))
        first, second = users.timeouts
        assert first is not None and 2.0 < first <= 3.1  # small clock skew in the deadline
        assert second == 7.0
    finally:
        await server.stop(None)


async def test_flow_on_each_backend(any_stack: Stack) -> None:
    """Create user, idempotent PlaceOrder replay and ListOrders work on both backends."""
    user = await any_stack.users.CreateUser(
        user_pb2.CreateUserRequest(email="c@example.com", name="C", password="password1")
    )
    first = await any_stack.orders.PlaceOrder(request(user.id, idempotency_key="k"))
    again = await any_stack.orders.PlaceOrder(request(user.id, idempotency_key="k"))
    other = await any_stack.orders.PlaceOrder(request(user.id))
    assert again == first
    page = await any_stack.orders.ListOrders(order_pb2.ListOrdersRequest(user_id=user.id))
    assert [o.id for o in page.orders] == [other.id, first.id]
    assert await any_stack.store.count_rows() == RowCounts(users=1, orders=2, order_items=4)
