"""ConsulRegistry's "readable" was registry-wide: one service's watch whose queries the
agent (or a proxy in front of it) kept failing (an answer too large for the timeout, a
500 for that path) flipped ``status().readable`` to False for every service, so the
channels of the services it could read took their registry for unreadable. As in the
etcd registry, ``status(service)`` now says how that service's watches read, and
``status()`` is False only while every watched service fails. The Consul double."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

_GOOD = unique_service()
_BROKEN = unique_service()
FAST: dict[str, Any] = {"ttl_s": 3.0, "check_interval_s": 1.0,
                        "deregister_critical_after_s": 60.0, "wait_s": 1.0,
                        "request_timeout_s": 2.0, "backoff_base_s": 0.05,
                        "backoff_max_s": 0.3, "watch_query_interval_s": 0.05}


class _OneBrokenPath(ConsulDouble):
    """The double, but ``/v1/health/service/<_BROKEN>`` answers 500."""

    async def _health_service(self, request: web.Request) -> web.Response:
        if request.match_info["name"] == _BROKEN:
            return web.Response(status=500, text="rpc error: too large")
        return await super()._health_service(request)


async def test_one_failing_watch_leaves_other_services_readable() -> None:
    a = make_instance(_GOOD, 1)
    async with _OneBrokenPath() as double:
        registry = ConsulRegistry(ConsulOptions(addr=double.addr, **FAST))
        try:
            await registry.register(a)
            good = Collector(registry, _GOOD)
            assert await good.next(timeout_s=15) == {a}
            broken = Collector(registry, _BROKEN)
            await until(lambda: registry.status(_BROKEN).readable is False, timeout_s=15,
                        what="the failing watch to be unreadable")
            errors = registry.status().read_errors
            await until(lambda: registry.status().read_errors >= errors + 3, timeout_s=15,
                        what="the failing watch to retry")
            assert registry.status(_GOOD).readable is True
            assert registry.status().readable is not False, registry.status()
            assert registry.status(_BROKEN).failing_since_s is not None
            assert registry.status(unique_service()).readable is None
            await good.stop()
            await until(lambda: registry.status().readable is False, timeout_s=15,
                        what="the registry to be unreadable with only the failing watch")
            await broken.stop()
            assert registry.status(_BROKEN).readable is None
        finally:
            await registry.close()
