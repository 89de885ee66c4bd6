"""An instance id whose ``/``-separated parts include ``.``, ``..`` or an empty one: in
the agent endpoints' paths (``/v1/agent/service/deregister/<id>``, ``.../check/pass/
<check_id>``) the HTTP client (yarl) and Consul's Go HTTP mux (path cleaning) resolve
those, so the request addresses another id; the Consul registry refuses such an id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from meshkit.discovery._types import Instance
from meshkit.errors import ConfigError
from tests.discovery.conformance import unique_service
from tests.discovery.consul_double import ConsulDouble


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    """A running Consul agent double."""
    async with ConsulDouble() as d:
        yield d


@pytest.mark.parametrize("template", ["x/../{b}", "./{b}", "x//{b}", "/{b}", "x/./{b}"])
async def test_an_id_with_dot_or_empty_segments_is_refused(
        double: ConsulDouble, template: str) -> None:
    """``register()`` and ``deregister()`` of ``x/../<b>`` fail with ConfigError quoting
    the id, and the instance ``<b>`` of the same service stays registered: the
    deregister's path resolved to ``/v1/agent/service/deregister/<b>`` and removed it."""
    service = unique_service()
    b = Instance(service=service, instance_id=f"{service}-b", host="127.0.0.1", port=1)
    odd = Instance(service=service, instance_id=template.format(b=b.instance_id),
                   host="127.0.0.1", port=2)
    async with ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=5.0)) as registry:
        await registry.register(b)
        with pytest.raises(ConfigError, match="instance_id") as info:
            await registry.register(odd)
        assert repr(odd.instance_id) in str(info.value)
        with pytest.raises(ConfigError, match="instance_id"):
            await registry.deregister(odd)
        assert b.instance_id in double.services
        assert odd.instance_id not in double.services
        await registry.deregister(b)


async def test_ids_with_dots_inside_a_part_and_a_trailing_slash_work(
        double: ConsulDouble) -> None:
    """Dots inside a part (``orderd/v1.2/..x``) and a trailing ``/`` address the id as
    written: registered and deregistered."""
    service = unique_service()
    async with ConsulRegistry(ConsulOptions(addr=double.addr, ttl_s=5.0)) as registry:
        for instance_id in (f"{service}/v1.2/..x", f"{service}/.a/", f"{service}..."):
            instance = Instance(service=service, instance_id=instance_id,
                                host="127.0.0.1", port=1)
            await registry.register(instance)
            assert instance_id in double.services
            await registry.deregister(instance)
            assert instance_id not in double.services
