"""Resilience: deadlines, retries with budgets, hedging, rate limits.

Defaults of :func:`meshkit.dial` (each configurable on :class:`meshkit.DialOptions`):

* balancing and outlier ejection: see :mod:`meshkit.balancer` (P2C over peak EWMA,
  ejection after 5 consecutive failures);
* retries (:class:`RetryOptions`): ``UNAVAILABLE`` only, 3 attempts, 25 ms..1 s full-jitter
  backoff, only for calls safe to repeat (idempotent methods, or requests carrying an
  idempotency key), inside a retry budget of 20 % of requests + 10/s over 10 s;
* deadlines: no default timeout; a handler's remaining deadline bounds its outgoing calls.

Server side, :class:`DeadlineInterceptor` refuses calls whose deadline already passed
(``DEADLINE_EXCEEDED``) and makes the deadline visible to outgoing calls, and
:class:`RateLimitInterceptor` (the ``limits`` library; ``memory://`` or
``async+redis://``) answers callers over their rule ``RESOURCE_EXHAUSTED`` with a
``retry-after`` trailer, which the client retry logic honours;
:func:`rejected_by_rate_limit` tells an outer interceptor that it did.

Client chain: (your per-call interceptors, e.g. tracing) -> retry/hedging -> balancer
(P2C, ejection) -> per-attempt grpc.aio interceptors. Retry re-runs everything after it.

Example::

    opts = DialOptions(retry=RetryOptions(methods={
        "OrderService/Get*": RetryPolicy(idempotent=True, hedge_delay_s=0.05)}))
    channel = meshkit.dial("orderd", options=opts)
"""

from __future__ import annotations

import meshkit._log  # noqa: F401  (meshkit's loggers quiet until logging is configured)
from meshkit.resilience._backoff import Backoff
from meshkit.resilience._budget import BudgetOptions, RetryBudget
from meshkit.resilience._deadline import (
    MAX_PROPAGATED_S,
    DeadlineInterceptor,
    DeadlineOptions,
    clamp_timeout_s,
    current_deadline,
    deadline_scope,
    time_remaining_s,
)
from meshkit.resilience._retry import (
    NACK_METADATA,
    ConnectFailedError,
    RetryInterceptor,
    RetryOptions,
    RetryPolicy,
    RetryStats,
    is_nack,
)
from meshkit.resilience.ratelimit import (
    DEFAULT_MAX_KEYS,
    KeyFunc,
    Limiter,
    RateLimitInterceptor,
    RateLimitOptions,
    Rejection,
    StorageLimiter,
    SweepThrottledMemoryStorage,
    by_identity,
    by_metadata,
    by_peer,
    by_peer_network,
    rejected_by_rate_limit,
)

__all__ = [
    "DEFAULT_MAX_KEYS",
    "MAX_PROPAGATED_S",
    "NACK_METADATA",
    "Backoff",
    "BudgetOptions",
    "ConnectFailedError",
    "DeadlineInterceptor",
    "DeadlineOptions",
    "KeyFunc",
    "Limiter",
    "RateLimitInterceptor",
    "RateLimitOptions",
    "Rejection",
    "RetryBudget",
    "RetryInterceptor",
    "RetryOptions",
    "RetryPolicy",
    "RetryStats",
    "StorageLimiter",
    "SweepThrottledMemoryStorage",
    "by_identity",
    "by_metadata",
    "by_peer",
    "by_peer_network",
    "clamp_timeout_s",
    "current_deadline",
    "deadline_scope",
    "is_nack",
    "rejected_by_rate_limit",
    "time_remaining_s",
]
