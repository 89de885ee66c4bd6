"""Failover on real processes: SIGKILL one of three order-service instances under load."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import grpc

import meshkit
from examples.ecom import mesh
from examples.ecom.demo import Stack, edge_tls, make_certificates
from examples.ecom.proto import order_pb2, order_pb2_grpc, user_pb2, user_pb2_grpc
from examples.ecom.storage import open_store
from tests.support.wait import until


async def test_sigkill_under_load_costs_no_call_and_no_order(tmp_path: Path) -> None:
    """Zero failed calls; orders stored equal successful PlaceOrder replies; no duplicates
    (the stack runs over mTLS with JWTs, as the demo does)."""
    uri = f"local://{tmp_path / 'registry'}?ttl_s=2&poll_interval_s=0.1"
    cert_dir = make_certificates(tmp_path / "certs")
    stack = Stack(tmp_path, uri, None, cert_dir)
    registry = meshkit.registry_from_uri(uri)
    tls = edge_tls(cert_dir)
    try:
        await asyncio.gather(stack.start("userd", "userd-1"),
                             *(stack.start("orderd", f"orderd-{n}") for n in (1, 2, 3)))
        async with meshkit.dial("userd", registry=registry,
                                options=dataclasses.replace(mesh.USERS, tls=tls)) as uch, \
                meshkit.dial("orderd", registry=registry,
                             options=dataclasses.replace(mesh.ORDERS, tls=tls)) as och:
            await och.wait_for_endpoints(3, timeout_s=10)
            users = user_pb2_grpc.UserServiceStub(uch)
            orders = order_pb2_grpc.OrderServiceStub(och)

            async def sign_up() -> tuple[str, tuple[tuple[str, str], ...]]:
                email = f"{uuid.uuid4().hex[:8]}@example.com"
                user = await users.CreateUser(user_pb2.CreateUserRequest(
                    email=email, name="F", password="password-1"), timeout=5)
                session = await users.Authenticate(user_pb2.AuthenticateRequest(
                    email=email, password="password-1"), timeout=5)
                return user.id, (("authorization", f"Bearer {session.token}"),)

            # One user per worker: the order service limits each user to 100 orders/s.
            accounts = await asyncio.gather(*(sign_up() for _ in range(6)))
            acked: list[str] = []
            failures: list[grpc.StatusCode] = []
            stop = asyncio.Event()

            async def load(user_id: str, md: tuple[tuple[str, str], ...]) -> None:
                while not stop.is_set():
                    try:
                        o = await orders.PlaceOrder(order_pb2.PlaceOrderRequest(
                            user_id=user_id, currency="USD", idempotency_key=uuid.uuid4().hex,
                            items=[order_pb2.OrderItem(sku="A-1", quantity=1,
                                                       unit_price_minor=100)]),
                            timeout=5, metadata=md)
                        acked.append(o.id)
                        await orders.GetOrder(order_pb2.GetOrderRequest(order_id=o.id),
                                              timeout=5, metadata=md)
                    except grpc.aio.AioRpcError as exc:
                        failures.append((exc.code(), exc.details()))  # type: ignore[arg-type]

            workers = [asyncio.create_task(load(u, md)) for u, md in accounts]
            await until(lambda: len(acked) >= 60, timeout_s=30, what="load before the kill")
            stack.kill("orderd-2")
            n_at_kill = len(acked)
            await until(lambda: len(acked) >= n_at_kill + 120, timeout_s=30,
                        what="load after the kill")
            stop.set()
            await asyncio.gather(*workers)
            served = {s.instance_id: s.calls for s in och.stats().endpoints}
        assert failures == []
        store = await open_store(f"sqlite:///{tmp_path / 'orderd.db'}")
        try:
            counts = await store.count_rows()
        finally:
            await store.close()
        assert counts.orders == len(acked) == len(set(acked))
        assert served["orderd-1"] > 0 and served["orderd-3"] > 0
    finally:
        await registry.close()
        await stack.stop_all()

