"""An instance id holding ``/`` (Consul takes the rest of the path after
``/v1/agent/service/``, ``/v1/agent/service/deregister/`` or ``/v1/agent/check/pass/``
for the ID, ``strings.TrimPrefix`` in its agent endpoints, so such IDs work there)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.discovery._types import Instance
from tests.discovery.conformance import unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


async def test_an_instance_id_with_slashes_is_kept_alive_and_deregistered(
        double: ConsulDouble) -> None:
    """``orderd/eu-west/1`` registers, its TTL check is passed (never taken for an
    instance the agent forgot), and deregister removes it: the double matched one path
    segment only, so every heartbeat of such an id got 404 and the keeper registered it
    again each round, where Consul's agent takes the whole rest of the path."""
    service = unique_service()
    instance = Instance(service=service, instance_id=f"{service}/eu-west/1",
                        host="127.0.0.1", port=50051)
    options = ConsulOptions(addr=double.addr, ttl_s=0.6, wait_s=0.5)
    with capture_logs() as logs:
        async with ConsulRegistry(options) as registry:
            await registry.register(instance)
            assert instance.instance_id in double.services
            await until(lambda: double.service_passes[instance.instance_id] >= 3,
                        timeout_s=10, what="three TTL passes")
            assert (await registry.snapshot(service)).live == {instance}
            await registry.deregister(instance)
            assert instance.instance_id not in double.services
    assert not [e for e in logs if "forgot" in e["event"]], logs
    assert len(double.registrations) == 1
