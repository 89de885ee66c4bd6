"""How the ecom services are dialed: which methods are safe to retry, and deadlines.

Reads (GetUser, GetOrder, ListOrders) are idempotent: retried on ``UNAVAILABLE`` and, for
the user lookup on the order service's critical path, hedged after 50 ms. PlaceOrder is
not idempotent, but every request carries an idempotency key, which makes its retries safe
(the store returns the first order for a repeated key). CreateUser and Authenticate are
left to the default policy (no key, so not retried after the request may have arrived).

Methods are spelled as gRPC names them, ``/ecom.v1.<Service>/<Method>``, here and in
:mod:`examples.ecom.security` (one spelling across the stack; see :mod:`meshkit._methods`
for the patterns meshkit accepts).
"""

from __future__ import annotations

import meshkit
from meshkit.resilience import RetryOptions, RetryPolicy

READS = RetryPolicy(idempotent=True)

USERS = meshkit.DialOptions(
    retry=RetryOptions(methods={
        "/ecom.v1.UserService/GetUser": RetryPolicy(idempotent=True, hedge_delay_s=0.05),
    }),
    method_timeouts={"/ecom.v1.UserService/*": 5.0},
)
"""Options for channels to ``userd``."""

ORDERS = meshkit.DialOptions(
    retry=RetryOptions(methods={"/ecom.v1.OrderService/GetOrder": READS,
                                "/ecom.v1.OrderService/ListOrders": READS}),
    method_timeouts={"/ecom.v1.OrderService/*": 5.0},
)
"""Options for channels to ``orderd``."""
