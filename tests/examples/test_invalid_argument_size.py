"""A request with many bad fields is INVALID_ARGUMENT, whatever their number.

The status message listed every violation. gRPC sends it percent-encoded in the
``grpc-message`` trailer, and a client refuses trailers past 8 KiB (some of the time) and
16 KiB (always): a PlaceOrder of 60 bad items (12 KiB) or 100 (20 KiB) reached the caller
as RESOURCE_EXHAUSTED "Stream removed (received metadata size exceeds ... limit)", a code
that says "slow down and retry", not "fix the request". The message now stops at
``validation.MAX_MESSAGE_BYTES`` encoded bytes with "and N more"; the exception keeps
every violation.
"""

from __future__ import annotations

import grpc
import pytest

from examples.ecom import validation
from examples.ecom.proto import order_pb2
from tests.examples.conftest import Stack

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("sku", ["!" + "x" * 63, "\u00e9" * 64, "\U0001f600" * 64])
async def test_a_hundred_bad_items_are_invalid_argument(stack: Stack, sku: str) -> None:
    items = [order_pb2.OrderItem(sku=sku, quantity=-5, unit_price_minor=-1)
             for _ in range(100)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.orders.PlaceOrder(order_pb2.PlaceOrderRequest(
            user_id="u" * 36, currency="usd!", items=items, idempotency_key="bad key"),
            timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = caught.value.details() or ""
    assert details.startswith("user_id: must be a UUID")
    assert "items[0].sku:" in details and details.endswith(" more violations")


def test_the_message_is_bounded_and_the_violations_kept() -> None:
    many = [(f"items[{i}].sku", "must match, got '" + "\u00e9" * 40 + "'...")
            for i in range(100)]
    exc = validation.InvalidArgument(many)
    encoded = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in str(exc).encode())
    assert encoded <= validation.MAX_MESSAGE_BYTES
    assert exc.violations == many
    few = validation.InvalidArgument(many[:2])
    assert str(few) == "; ".join(f"{f}: {m}" for f, m in many[:2])
