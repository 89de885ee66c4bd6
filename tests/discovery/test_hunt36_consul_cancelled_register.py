"""ConsulRegistry: a register() cancelled with its PUT under way leaves the instance
deregistered once the agent answers (as the local registry withdraws such a write),
against the Consul agent double."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


async def test_a_register_cancelled_with_its_put_under_way_is_withdrawn(
        double: ConsulDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    """A register() cancelled while its PUT was on its way (a server's start cancelled: a
    TaskGroup sibling failed, a start timeout), which its caller takes for not done, left
    the instance registered with its checks passing and no keeper: listed to every watch
    for up to ttl_s (its server stopped), then failing() (prometheus-targets: down, the
    MeshkitInstanceDown alert) until the agent reaped it. It is now deregistered once the
    agent has answered the PUT; a register() of it again afterwards works as ever."""
    service = unique_service()
    instance = make_instance(service, 1)
    options = ConsulOptions(addr=double.addr, ttl_s=30.0, wait_s=0.5)
    async with ConsulRegistry(options) as registry:
        real_put = registry._put_register
        sent, land = asyncio.Event(), asyncio.Event()

        async def on_the_wire(payload: dict[str, Any]) -> None:
            await land.wait()  # the agent is slow to take it
            await real_put(payload)

        async def slow_put(payload: dict[str, Any]) -> None:
            request = asyncio.ensure_future(on_the_wire(payload))
            sent.set()
            # sent: a cancel of the caller no longer stops the agent from taking it
            await asyncio.shield(request)

        monkeypatch.setattr(registry, "_put_register", slow_put)
        start = asyncio.create_task(registry.register(instance))
        await asyncio.wait_for(sent.wait(), 5)
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        land.set()  # the agent takes the PUT all the same
        await until(lambda: len(double.registrations) == 1, timeout_s=5,
                    what="the PUT at the agent")
        await until(lambda: instance.instance_id not in double.services, timeout_s=5,
                    what="the instance withdrawn")
        assert instance.instance_id not in registry._keepers
        monkeypatch.setattr(registry, "_put_register", real_put)
        await registry.register(instance)
        assert instance.instance_id in double.services
        assert (await registry.snapshot(service)).live == {instance}
