"""ConsulRegistry: a deregister() that runs while a register() of the same instance is
under way leaves it deregistered, with no keep-alive (as the local registry does), against
the Consul agent double."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.errors import RegistryError
from tests.discovery.conformance import make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


@pytest.mark.parametrize("first", [True, False], ids=["first-registration", "again"])
async def test_a_deregister_during_a_register_leaves_the_instance_deregistered(
        double: ConsulDouble, monkeypatch: pytest.MonkeyPatch, first: bool) -> None:
    """A drain racing a start: deregister() ran, and returned, while register()'s PUT was
    on its way to the agent (its 404 ignored, no keep-alive to stop yet); the PUT then
    landed and register() started a keep-alive that passed the TTL check for good: the
    instance of a server that had drained stayed listed, passing, for as long as the
    process lived. register() now sees the deregister, removes the instance again and
    raises RegistryError ('deregistered while register() ran'); no keep-alive runs. Also
    when the id was registered and kept alive before (its keeper is stopped for good)."""
    service = unique_service()
    instance = make_instance(service, 1)
    async with ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=0.6, wait_s=0.5)
                              ) as registry:
        if not first:
            await registry.register(instance)
        real_put = registry._put_register
        sent, land = asyncio.Event(), asyncio.Event()

        async def slow_put(payload: dict[str, Any]) -> None:
            sent.set()
            await land.wait()  # on its way to the agent
            await real_put(payload)

        monkeypatch.setattr(registry, "_put_register", slow_put)
        start = asyncio.create_task(registry.register(instance))
        await asyncio.wait_for(sent.wait(), 5)
        await registry.deregister(instance)
        assert instance.instance_id not in double.services
        land.set()
        with pytest.raises(RegistryError, match="deregistered while register"):
            await start
        assert instance.instance_id not in double.services
        assert instance.instance_id not in registry._keepers
        passes = double.service_passes[instance.instance_id]
        # a later register() of it works as ever
        await registry.register(instance)
        await until(lambda: double.service_passes[instance.instance_id] > passes,
                    timeout_s=5, what="the new registration kept alive")
