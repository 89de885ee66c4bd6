"""``meshkit demo --calls N`` makes at most N calls.

A worker's first turn took one call from the budget for CreateUser and then made the
Authenticate call whatever the budget said (its ``take()`` ignored: "logging in is part
of the workload"), so every worker that started a user overshot: ``--calls 10
--concurrency 100`` printed "Running 10 calls" and then "Workload: 20 calls", all of them
sign-ups and logins (no order at all, so nothing for the SIGKILL midway to test). A new
user's two calls are now reserved together: the workload makes exactly the budget when
it can, never more."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from examples.ecom import demo

pytestmark = pytest.mark.timeout(60)


class _Stub:
    """Both stubs in one: each method counts its call and answers at once."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.n = 0

    def _next(self, name: str) -> str:
        self.calls.append(name)
        self.n += 1
        return f"{name}-{self.n}"

    async def CreateUser(self, request: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(id=self._next("CreateUser"))

    async def Authenticate(self, request: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(token=self._next("Authenticate"))

    async def PlaceOrder(self, request: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(id=self._next("PlaceOrder"))

    async def GetOrder(self, request: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(id=self._next("GetOrder"))

    async def ListOrders(self, request: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(orders=[], next=self._next("ListOrders"))


@pytest.mark.parametrize(("budget", "concurrency"), [(10, 100), (10, 8), (300, 8), (11, 3)],
                         ids=["10-of-100", "10-of-8", "300-of-8", "11-of-3"])
async def test_the_workload_never_makes_more_calls_than_its_budget(
        budget: int, concurrency: int) -> None:
    stub = _Stub()
    w = demo.Workload(budget=budget, mark_at=budget // 2)
    await demo.run_workload(stub, stub, w, concurrency, 5.0)  # type: ignore[arg-type]
    assert len(stub.calls) <= budget, (len(stub.calls), budget)
    assert len(stub.calls) >= budget - 1  # a lone call left over cannot start a user
    assert stub.calls.count("CreateUser") == stub.calls.count("Authenticate")
