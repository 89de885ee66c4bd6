"""The workload of a fault scenario, and how its calls are judged.

:class:`Workload` drives real calls through :func:`meshkit.dial` over mTLS with end-user
JWTs, as the demo client does: ``callers`` concurrent workers, each signed up as its own
user (the order service limits each user to 100 orders/s), each repeating PlaceOrder with a
fresh idempotency key, GetOrder of the order it got, and every fourth time ListOrders. Each
worker paces itself to ``iterations_per_s`` so the offered load is the same before, during
and after a fault (a closed loop would measure the machine instead). Every finished call is
kept as a :class:`Call`: method, status, message, start and end time.

:func:`recovery_s` reads those calls: from a reference time (the end of a fault, or its
start for faults that should not hurt), the time until every 1-second window is *healthy*
again up to the end of the run, where healthy means at least ``min_share`` of the pre-fault
rate of successful calls and at most ``max_failed_share`` of the window's calls failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc

import meshkit
from examples.ecom import mesh
from examples.ecom.demo import edge_tls
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc
from tests.faults._stack import StackEnv

WINDOW_S = 1.0
STEP_S = 0.25


@dataclass(frozen=True, slots=True)
class Call:
    """One finished call as its caller saw it (monotonic times)."""

    method: str
    code: grpc.StatusCode
    details: str
    start: float
    end: float

    @property
    def ok(self) -> bool:
        """Whether it succeeded."""
        return self.code is grpc.StatusCode.OK


@dataclass
class User:
    """A signed-up workload user."""

    user_id: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the user's access token."""
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Workload:
    """Callers through ``meshkit.dial`` against a running :class:`StackEnv`.

    Use as ``async with Workload(env) as w:`` (dials, signs users up or reuses those an
    earlier workload signed up on the same stack, starts the workers),
    then :meth:`stop`. ``acked`` maps each idempotency key whose PlaceOrder succeeded to the
    order id the caller was given.
    """

    env: StackEnv
    callers: int = 16
    iterations_per_s: float = 4.0
    timeout_s: float = 5.0
    calls: list[Call] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)
    users: list[User] = field(default_factory=list)
    started_at: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _exit: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> Workload:
        try:
            await self._open()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def _open(self) -> None:
        registry = meshkit.registry_from_uri(self.env.registry_uri)
        self._exit.push_async_callback(registry.close)
        tls = edge_tls(self.env.cert_dir)
        uopts = dataclasses.replace(mesh.USERS, tls=tls)
        oopts = dataclasses.replace(mesh.ORDERS, tls=tls)
        self.users_channel = await self._exit.enter_async_context(
            meshkit.dial("userd", registry=registry, options=uopts))
        self.orders_channel = await self._exit.enter_async_context(
            meshkit.dial("orderd", registry=registry, options=oopts))
        await self.users_channel.wait_for_endpoints(1, timeout_s=15)
        await self.orders_channel.wait_for_endpoints(self.env.spec.orderd, timeout_s=15)
        self.users_stub = user_pb2_grpc.UserServiceStub(  # type: ignore[no-untyped-call]
            self.users_channel)
        self.orders_stub = order_pb2_grpc.OrderServiceStub(  # type: ignore[no-untyped-call]
            self.orders_channel)
        # Users an earlier workload signed up on this (shared) stack are called as again:
        # the users are not what a scenario judges (its own calls, orders and log lines
        # are), and signing up costs two scrypt hashes each.
        reused = self.env.users[:self.callers]
        fresh = await asyncio.gather(*(self.sign_up()
                                       for _ in range(self.callers - len(reused))))
        self.env.users.extend(fresh)
        self.users = [*reused, *fresh]
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.callers)]

    async def sign_up(self) -> User:
        """Create a user and log in (a few tries within 20 s: the stack may be warming)."""
        email = f"chaos-{uuid.uuid4().hex[:12]}@example.com"
        password = f"pw-{uuid.uuid4().hex}"
        deadline = time.monotonic() + 20
        created = False
        while True:
            try:
                if not created:
                    try:
                        await self.users_stub.CreateUser(user_pb2.CreateUserRequest(
                            email=email, name="Chaos", password=password),
                            timeout=self.timeout_s)
                    except grpc.aio.AioRpcError as exc:
                        # an attempt that timed out here may have created the user: the
                        # email is this sign-up's own, so ALREADY_EXISTS means it did
                        if exc.code() is not grpc.StatusCode.ALREADY_EXISTS:
                            raise
                    created = True
                s = await self.users_stub.Authenticate(user_pb2.AuthenticateRequest(
                    email=email, password=password), timeout=self.timeout_s)
                return User(s.user_id, s.token)
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _call(self, method: str, coro: Any) -> Any:
        t0 = time.monotonic()
        try:
            reply = await coro
        except grpc.aio.AioRpcError as exc:
            self.calls.append(Call(method, exc.code(), exc.details() or "", t0,
                                   time.monotonic()))
            return None
        self.calls.append(Call(method, grpc.StatusCode.OK, "", t0, time.monotonic()))
        return reply

    async def _worker(self, n: int) -> None:
        user = self.users[n]
        md = user.metadata
        period = 1.0 / self.iterations_per_s
        # Spread the workers' phases so calls do not come in lockstep bursts.
        next_at = time.monotonic() + period * n / self.callers
        i = 0
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            next_at = max(next_at + period, time.monotonic() - period)
            i += 1
            key = uuid.uuid4().hex
            order = await self._call("PlaceOrder", self.orders_stub.PlaceOrder(
                order_pb2.PlaceOrderRequest(
                    user_id=user.user_id, currency="EUR", idempotency_key=key,
                    items=[order_pb2.OrderItem(sku=f"SKU-{i % 7}", quantity=1 + i % 3,
                                               unit_price_minor=199 + 100 * (i % 5))]),
                timeout=self.timeout_s, metadata=md))
            if order is None:
                continue
            self.acked[key] = order.id
            await self._call("GetOrder", self.orders_stub.GetOrder(
                order_pb2.GetOrderRequest(order_id=order.id), timeout=self.timeout_s,
                metadata=md))
            if i % 4 == 0:
                await self._call("ListOrders", self.orders_stub.ListOrders(
                    order_pb2.ListOrdersRequest(user_id=user.user_id, page_size=10),
                    timeout=self.timeout_s, metadata=md))

    async def stop(self) -> None:
        """Stop the workers (their last calls finish, bounded by the call timeout)."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.timeout_s + 5)
        for t in pending:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self._exit.aclose()


def ok_rate(calls: list[Call], t0: float, t1: float) -> float:
    """Successful calls per second among those that ended in ``[t0, t1)``."""
    if t1 <= t0:
        return 0.0
    return sum(1 for c in calls if c.ok and t0 <= c.end < t1) / (t1 - t0)


@dataclass(frozen=True, slots=True)
class Health:
    """What makes a window healthy: see the module docstring."""

    pre_ok_per_s: float
    min_share: float = 0.75
    max_failed_share: float = 0.02

    def healthy(self, calls: list[Call], t0: float, t1: float) -> bool:
        """Whether the calls that ended in ``[t0, t1)`` look like the pre-fault ones."""
        ok = failed = 0
        for c in calls:
            if t0 <= c.end < t1:
                if c.ok:
                    ok += 1
                else:
                    failed += 1
        return (ok >= self.min_share * self.pre_ok_per_s * (t1 - t0)
                and failed <= self.max_failed_share * (ok + failed))


def recovery_s(calls: list[Call], ref: float, end: float, health: Health,
               settle_s: float = 2.0) -> float | None:
    """Seconds from ``ref`` until every window up to ``end`` is healthy; ``None`` if the
    healthy stretch at the end is shorter than ``settle_s`` (not recovered, or not yet)."""
    starts: list[float] = []
    t = ref
    while t + WINDOW_S <= end:
        starts.append(t)
        t += STEP_S
    if not starts:
        return None
    ordered = sorted(calls, key=lambda c: c.end)
    first_good = 0
    for i, s in enumerate(starts):
        if not health.healthy(ordered, s, s + WINDOW_S):
            first_good = i + 1
    if first_good >= len(starts):
        return None
    start = starts[first_good]
    if end - start < settle_s:
        return None
    return start - ref
