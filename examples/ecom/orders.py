"""The ``ecom.v1.OrderService`` servicer (grpc.aio).

Register it with ``order_pb2_grpc.add_OrderServiceServicer_to_server(
OrderServicer(store, user_pb2_grpc.UserServiceStub(channel)), server)``, where
``channel`` is any grpc.aio channel to a UserService (a meshkit channel in the
stack, a plain one in tests).

Idempotency: PlaceOrder takes its key from the ``idempotency_key`` field or,
when that is empty, from the ``idempotency-key`` request metadata (the field
wins). A repeat with the same key and the same request returns the first order;
the same key with a different request gives FAILED_PRECONDITION (the stored
request fingerprint differs), since retrying cannot fix that.

Store failures: when the order store cannot be reached every method answers
UNAVAILABLE with :data:`STORE_UNAVAILABLE` (the store logs the cause, once per
outage). A keyed PlaceOrder is safe to retry then (meshkit's client does): its
first attempt may or may not have committed, and the key makes the retry
return that order or place it once. Any other store failure is INTERNAL with
:data:`STORE_FAILED`, logged here with its cause. Neither message names a host,
port, path or exception class.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from examples.ecom import validation
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc
from examples.ecom.storage import ItemRecord, NewOrder, OrderRecord, Store, StoreUnavailable
from meshkit.messaging import capture_context
from meshkit.resilience import time_remaining_s

_log = structlog.get_logger("examples.ecom.orders")

_T = TypeVar("_T")

#: Request metadata key that may carry the idempotency key.
IDEMPOTENCY_METADATA_KEY = "idempotency-key"

#: Status message of UNAVAILABLE when the order store cannot be reached.
STORE_UNAVAILABLE = "order store unavailable"
#: Status message of INTERNAL when the order store fails otherwise.
STORE_FAILED = "order store failed"

_STATUS = {"PLACED": order_pb2.ORDER_STATUS_PLACED}


def request_fingerprint(user_id: str, currency: str, items: tuple[ItemRecord, ...]) -> str:
    """Return a SHA-256 hex digest identifying a PlaceOrder payload (key excluded)."""
    canonical = [user_id, currency, [[i.sku, i.quantity, i.unit_price_minor] for i in items]]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def order_message(order: OrderRecord) -> order_pb2.Order:
    """Convert a stored order to its ``ecom.v1.Order`` message."""
    msg = order_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        items=[
            order_pb2.OrderItem(sku=i.sku, quantity=i.quantity, unit_price_minor=i.unit_price_minor)
            for i in order.items
        ],
        total_minor=order.total_minor,
        currency=order.currency,
        status=_STATUS.get(order.status, order_pb2.ORDER_STATUS_UNSPECIFIED),
        idempotency_key=order.idempotency_key or "",
    )
    msg.created_at.FromMilliseconds(order.created_at_ms)
    return msg


def idempotency_key(
    request: order_pb2.PlaceOrderRequest,
    context: grpc.aio.ServicerContext[order_pb2.PlaceOrderRequest, order_pb2.Order],
) -> tuple[str, str]:
    """Return ``(key, where)``: the field if set, else the metadata value, else ``""``."""
    if request.idempotency_key:
        return request.idempotency_key, "idempotency_key"
    for key, value in context.invocation_metadata() or ():
        if key == IDEMPOTENCY_METADATA_KEY and isinstance(value, str):
            return value, f"metadata {IDEMPOTENCY_METADATA_KEY}"
    return "", "idempotency_key"


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    """``ecom.v1.OrderService`` on a :class:`~examples.ecom.storage.Store`.

    ``users`` is a ``UserServiceStub`` on any grpc.aio channel; PlaceOrder
    calls its GetUser with the caller's remaining deadline as timeout (or
    ``user_lookup_timeout_s`` seconds when the caller set no deadline).

    PlaceOrder stores the request's trace context with the order's ``OrderPlaced``
    outbox event, and calls ``on_order_placed()`` (e.g. ``OutboxRelay.notify``)
    after a new order committed.
    """

    def __init__(
        self,
        store: Store,
        users: user_pb2_grpc.UserServiceStub,
        *,
        user_lookup_timeout_s: float = 5.0,
        on_order_placed: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._on_order_placed = on_order_placed
        self._users = users
        self._user_lookup_timeout_s = user_lookup_timeout_s

    async def _require_user(
        self, user_id: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Abort unless the user service knows ``user_id``.

        NOT_FOUND for an unknown user; UNAVAILABLE ("user service unavailable")
        when the user service is unreachable, overloaded or without its store
        (UNAVAILABLE or RESOURCE_EXHAUSTED); DEADLINE_EXCEEDED when the caller's
        deadline runs out; and INTERNAL ("user service failed: <code>") for any
        other failure of the user service. The user service's own message is not
        passed on: a channel's message can name addresses.
        """
        remaining = time_remaining_s(context)  # a legal 9999999H would overflow grpcio
        if remaining is not None and remaining <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        timeout = self._user_lookup_timeout_s if remaining is None else remaining
        try:
            await self._users.GetUser(user_pb2.GetUserRequest(user_id=user_id), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
            if code == grpc.StatusCode.NOT_FOUND:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"user {user_id} not found")
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "user service did not answer in time"
                )
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "user service unavailable")
            name = code.name if code is not None else "UNKNOWN"
            await context.abort(grpc.StatusCode.INTERNAL, f"user service failed: {name}")

    @staticmethod
    async def _stored(call: Awaitable[_T], context: grpc.aio.ServicerContext[Any, Any]) -> _T:
        """Await a store call; abort UNAVAILABLE (:data:`STORE_UNAVAILABLE`) if the
        store cannot be reached, INTERNAL (:data:`STORE_FAILED`, cause logged) if it
        fails otherwise."""
        try:
            return await call
        except StoreUnavailable:  # logged by the store, once per outage
            await context.abort(grpc.StatusCode.UNAVAILABLE, STORE_UNAVAILABLE)
        except Exception:
            _log.exception("order store call failed")
            await context.abort(grpc.StatusCode.INTERNAL, STORE_FAILED)

    async def PlaceOrder(
        self,
        request: order_pb2.PlaceOrderRequest,
        context: grpc.aio.ServicerContext[order_pb2.PlaceOrderRequest, order_pb2.Order],
    ) -> order_pb2.Order:
        """Place an order (see the module docstring for idempotency).

        INVALID_ARGUMENT for bad fields, NOT_FOUND for an unknown user,
        FAILED_PRECONDITION for a reused key with a different request, the
        user-lookup failures of :meth:`_require_user`, and the store failures
        of :meth:`_stored` (UNAVAILABLE: retry a keyed call).
        """
        key, key_field = idempotency_key(request, context)
        try:
            validation.validate_place_order(
                request.user_id, request.items, request.currency, key, key_field=key_field
            )
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._require_user(request.user_id, context)
        items = tuple(ItemRecord(i.sku, i.quantity, i.unit_price_minor) for i in request.items)
        new = NewOrder(
            user_id=request.user_id,
            items=items,
            currency=request.currency,
            total_minor=sum(i.quantity * i.unit_price_minor for i in items),
            idempotency_key=key or None,
            fingerprint=request_fingerprint(request.user_id, request.currency, items),
            event_headers=tuple(capture_context().items()),
        )
        order, created = await self._stored(self._store.place_order(new), context)
        if created and self._on_order_placed is not None:
            self._on_order_placed()
        if order.fingerprint != new.fingerprint:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{key_field}: already used for a different request",
            )
        return order_message(order)

    async def GetOrder(
        self,
        request: order_pb2.GetOrderRequest,
        context: grpc.aio.ServicerContext[order_pb2.GetOrderRequest, order_pb2.Order],
    ) -> order_pb2.Order:
        """Return an order; INVALID_ARGUMENT for a malformed id, NOT_FOUND if unknown,
        UNAVAILABLE or INTERNAL for store failures (see :meth:`_stored`)."""
        try:
            validation.validate_id("order_id", request.order_id)
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        order = await self._stored(self._store.get_order(request.order_id), context)
        if order is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"order {request.order_id} not found")
        return order_message(order)

    async def ListOrders(
        self,
        request: order_pb2.ListOrdersRequest,
        context: grpc.aio.ServicerContext[
            order_pb2.ListOrdersRequest, order_pb2.ListOrdersResponse
        ],
    ) -> order_pb2.ListOrdersResponse:
        """Return one page of a user's orders, newest first.

        INVALID_ARGUMENT for a malformed user id, a page_size outside 1..100
        (0 means 20), or a bad page_token; UNAVAILABLE or INTERNAL for store
        failures (see :meth:`_stored`). An unknown user has no orders.
        """
        try:
            page_req = validation.validate_list_orders(
                request.user_id, request.page_size, request.page_token
            )
        except validation.InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        page = await self._stored(
            self._store.list_orders(request.user_id, page_req.limit, page_req.before_seq), context
        )
        token = ""
        if page.next_before_seq is not None:
            token = validation.encode_page_token(request.user_id, page.next_before_seq)
        return order_pb2.ListOrdersResponse(
            orders=[order_message(o) for o in page.orders], next_page_token=token
        )
