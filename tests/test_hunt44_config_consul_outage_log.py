"""A Consul agent outage that fails every watched service's watch is logged once, the
line naming the services, not once per watched service (it was N lines for N services:
each watch's first failure started its service's own outage before the last one started
the registry's). A fault of one service's reads alone is still logged, once, at its
second failed query in a row."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
from tests.discovery.conformance import Collector, make_instance, unique_service
from tests.discovery.consul_double import ConsulDouble
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


def _options(double: ConsulDouble) -> ConsulOptions:
    return ConsulOptions(addr=double.addr, ttl_s=3.0, check_interval_s=2.0,
                         deregister_critical_after_s=60.0, wait_s=2.0,
                         backoff_base_s=0.05, backoff_max_s=0.2, request_timeout_s=1.0)


def _started(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"].startswith("consul watch failed")]


async def test_a_full_outage_of_three_watched_services_is_logged_once() -> None:
    """The agent answering 500 to every watch gives one start line naming all three."""
    names = sorted(unique_service() for _ in range(3))
    async with ConsulDouble() as double:
        owner, reader = ConsulRegistry(_options(double)), ConsulRegistry(_options(double))
        watchers = [Collector(reader, n) for n in names]
        try:
            for i, n in enumerate(names):
                inst = make_instance(n, 1)
                await owner.register(inst)
                await watchers[i].until_set({inst})
            with capture_logs() as logs:
                double.set_down(True)
                await until(lambda: reader.status().readable is False
                            and reader.status().read_errors >= 9, timeout_s=15.0,
                            what="every watch failing a few times")
                double.set_down(False)
                await until(lambda: reader.status().readable is True, timeout_s=15.0,
                            what="the watches reading again")
            started = _started(logs)
            assert len(started) == 1, [(e["event"], e.get("service")) for e in started]
            assert started[0]["services"] == names and started[0]["service_count"] == 3
            back = [e for e in logs if e["event"].startswith("consul readable again")]
            assert [e["event"] for e in back] == ["consul readable again"], back
        finally:
            for w in watchers:
                await w.stop()
            await owner.close()
            await reader.close()


async def test_one_service_failing_alone_is_logged_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only one service's health path fails (500): one start line, for that service,
    and the registry stays readable (the other watch reads)."""
    good, bad = unique_service(), unique_service()
    failing = {"on": False}
    original = ConsulDouble._health_service

    async def health_service(self: ConsulDouble, request: web.Request) -> web.Response:
        if failing["on"] and request.match_info["name"] == bad:
            return web.Response(status=500, text="rpc error: too large")
        return await original(self, request)

    monkeypatch.setattr(ConsulDouble, "_health_service", health_service)
    async with ConsulDouble() as double:
        owner, reader = ConsulRegistry(_options(double)), ConsulRegistry(_options(double))
        a, b = make_instance(good, 1), make_instance(bad, 1)
        watchers = [Collector(reader, good), Collector(reader, bad)]
        try:
            await owner.register(a)
            await owner.register(b)
            await watchers[0].until_set({a})
            await watchers[1].until_set({b})
            with capture_logs() as logs:
                failing["on"] = True
                double.touch(bad)  # the blocked query of bad answers: asked again, fails
                await until(lambda: reader.status(bad).readable is False
                            and reader.status().read_errors >= 3, timeout_s=15.0,
                            what="the bad service's watch failing a few times")
                assert reader.status().readable is not False
                assert reader.status(good).readable is True
            started = _started(logs)
            assert len(started) == 1, started
            assert started[0]["service"] == bad and "services" not in started[0]
        finally:
            for w in watchers:
                await w.stop()
            await owner.close()
            await reader.close()
