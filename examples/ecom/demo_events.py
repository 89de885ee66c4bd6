"""The events part of the demo: the projection (``summaryd``) must converge to the orders.

After the workload (with its SIGKILLed order-service instance, whose outbox relay died
wherever it was, unless ``--no-kill``), every user's ``OrderSummaryService`` summary must
equal what the orders table holds for them (read back through ``OrderService.ListOrders``),
within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from datetime import datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext

import meshkit
from examples.ecom import events
from examples.ecom.proto import order_pb2, order_pb2_grpc, summary_pb2, summary_pb2_grpc
from meshkit._uris import hide_userinfo
from meshkit.messaging import Consumer

NATS_URL = os.environ.get("MESHKIT_NATS_URL", "nats://127.0.0.1:4222")
#: This run's durable consumer: concurrent demos on one NATS each see every event.
DURABLE = f"order-summary-{uuid.uuid4().hex[:8]}"


async def _quiet(exc: Exception) -> None:
    """nats-py's ``error_cb`` for :func:`connect_once`: its default logs a traceback per
    failed attempt; the callers say what a failure means to them."""


async def connect_once(url: str, *, timeout_s: float = 5.0) -> NATS:
    """A NATS client for ``url`` (no reconnects) or the connect's error, within
    ``timeout_s`` seconds (TimeoutError past it).

    ``nats.connect(allow_reconnect=False)`` is not one attempt: nats-py tries a server
    that refuses up to ``max_reconnect_attempts`` (default 60) times,
    ``reconnect_time_wait`` (default 2 s) apart, whatever ``allow_reconnect`` says (and
    0 attempts means no limit), so the demo waited two minutes for a NATS that was not
    running, a traceback a try; here two tries, back to back, no traceback."""
    async with asyncio.timeout(timeout_s):
        return await nats.connect(url, connect_timeout=2, allow_reconnect=False,
                                  max_reconnect_attempts=1, reconnect_time_wait=0,
                                  error_cb=_quiet)


def service_env() -> dict[str, str]:
    """Environment for the service processes: where NATS is, this run's consumer."""
    return {"MESHKIT_NATS_URL": NATS_URL, "ECOM_SUMMARY_DURABLE": DURABLE}


async def create_durable(js: JetStreamContext, since: datetime, **overrides: Any) -> None:
    """Create this run's durable consumer (:data:`DURABLE`) so that it delivers the events
    stored from ``since`` (an aware ``datetime``; JetStream's ``DeliverPolicy.BY_START_TIME``)
    on, not the whole stream. The ``ECOM_ORDERS`` stream keeps a day of events of every run
    on this NATS, and a new durable with the projection's ``DeliverPolicy.ALL`` replayed
    them all into this run's fresh summary store first (seen: 2,400 events in a run of
    128 orders, the run's own handled up to 1.2 s after their publish). The config is
    otherwise the projection's own (:meth:`~meshkit.messaging.Consumer.consumer_config`),
    so ``summaryd``'s :meth:`~meshkit.messaging.Consumer.start` binds to it as it is.
    ``overrides``: :func:`events.consumer_options` fields (tests: another stream)."""
    opts = events.consumer_options(None, **{"durable": DURABLE, "metrics": False,
                                            "tracing": False, "access_log": False,
                                            **overrides})

    async def unused(_: Any) -> None:  # only the config is wanted
        raise AssertionError("not consuming")

    config = Consumer(js, unused, opts).consumer_config()
    config.deliver_policy = DeliverPolicy.BY_START_TIME
    config.opt_start_time = since
    await js.add_consumer(opts.stream, config)


async def _orders_table(orders: order_pb2_grpc.OrderServiceStub, user_id: str, token: str,
                        timeout_s: float) -> tuple[int, int]:
    count = total = 0
    page_token = ""
    while True:
        page = await orders.ListOrders(order_pb2.ListOrdersRequest(
            user_id=user_id, page_size=100, page_token=page_token), timeout=timeout_s,
            metadata=(("authorization", f"Bearer {token}"),))
        count += len(page.orders)
        total += sum(o.total_minor for o in page.orders)
        page_token = page.next_page_token
        if not page_token:
            return count, total


async def check_projection(registry: Any, options: meshkit.DialOptions,
                           orders: order_pb2_grpc.OrderServiceStub, tokens: dict[str, str],
                           timeout_s: float, wait_s: float = 30.0, *,
                           killed: bool = True) -> bool:
    """Print whether every user's summary converged to the orders table within ``wait_s``;
    returns it. ``tokens``: user id -> access token (to read the orders back); ``killed``:
    whether an order-service instance was SIGKILLed during the workload (the report says
    so)."""
    want = {u: await _orders_table(orders, u, t, timeout_s) for u, t in tokens.items()}
    t0 = time.monotonic()
    async with meshkit.dial("summaryd", registry=registry, options=options) as ch:
        stub = summary_pb2_grpc.OrderSummaryServiceStub(ch)
        await ch.wait_for_endpoints(1, timeout_s=10)
        got: dict[str, tuple[int, int]] = {}
        while True:
            for u in want:
                s = await stub.GetOrderSummary(summary_pb2.GetOrderSummaryRequest(user_id=u),
                                               timeout=timeout_s)
                got[u] = (s.order_count, s.total_minor)
            if got == want or time.monotonic() - t0 > wait_s:
                break
            await asyncio.sleep(0.1)
    ok = got == want
    n = sum(c for c, _ in want.values())
    print(f"\nEvents: PlaceOrder -> outbox -> NATS JetStream ({events.STREAM}) -> summaryd"
          f" (durable {DURABLE})")
    print(f"  {n} orders of {len(want)} users in the orders table; the projection "
          + (f"converged in {time.monotonic() - t0:.2f} s (summary == orders table"
             " for every user" + (", after the SIGKILL)" if killed else ")") if ok else
             f"did NOT converge within {wait_s:.0f} s: "
             f"{sum(1 for u in want if got.get(u) != want[u])} users differ"))
    return ok


def print_skipped() -> None:
    """Print that the events part was skipped: NATS could not be reached at the start."""
    print(f"\nEvents: skipped: NATS JetStream not reachable at {hide_userinfo(NATS_URL)}"
          " (start one with `nats-server -js`, or set MESHKIT_NATS_URL); the orders wait"
          " in the outbox")


async def delete_durable() -> None:
    """Delete this run's durable consumer (:data:`DURABLE`), of no use after the run; call
    it once ``summaryd`` stopped: a projection still running finds its durable gone and
    re-creates it from the stream's start (as it must after a stream or server loss),
    which handled this run's events a second time and dead-lettered every earlier run's
    event of the day (refused: signed under another run's CA). NATS unreachable, or the
    durable never made: nothing to do."""
    with contextlib.suppress(Exception):
        nc = await connect_once(NATS_URL)
        try:
            await nc.jetstream().delete_consumer(events.STREAM, DURABLE)
        finally:
            await nc.close()
