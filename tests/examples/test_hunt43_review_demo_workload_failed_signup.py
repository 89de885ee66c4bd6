"""``meshkit demo``'s workload makes its whole budget when a sign-up fails.

6d8df44d made a new user's two calls (CreateUser, Authenticate) reserved together; when
CreateUser failed the Authenticate it had reserved was never made nor given back, so
every failed sign-up made the workload one call short of "Running N calls" (and the
SIGKILL line counted calls never made)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from examples.ecom import demo
from tests.examples.test_hunt43_demo_workload_budget import _Stub

pytestmark = pytest.mark.timeout(60)


class _FailingSignups(_Stub):
    """The first ``fail`` CreateUser calls fail UNAVAILABLE (counted as made)."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    async def CreateUser(self, request: Any, **kw: Any) -> Any:
        if self.fail:
            self.fail -= 1
            self.calls.append("CreateUser")
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details="down")
        return await super().CreateUser(request, **kw)


@pytest.mark.parametrize(("budget", "concurrency", "fail"), [(10, 1, 3), (40, 4, 5)],
                         ids=["10-of-1-fail-3", "40-of-4-fail-5"])
async def test_failed_signups_give_their_login_call_back(budget: int, concurrency: int,
                                                         fail: int) -> None:
    stub = _FailingSignups(fail)
    w = demo.Workload(budget=budget, mark_at=budget // 2)
    await demo.run_workload(stub, stub, w, concurrency, 5.0)  # type: ignore[arg-type]
    assert len(stub.calls) == budget, (len(stub.calls), budget, stub.calls)
    assert w.started == budget
