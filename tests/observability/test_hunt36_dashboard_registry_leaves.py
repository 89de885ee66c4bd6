"""The shared admin server's dashboard shows the RPC records of its first user's registry
(``dashboard_registry``). When that registry left ``/metrics`` (its server stopped, the
others serving on), the dashboard went on showing its frozen records for ever (rate 0,
the calls of the servers still running never shown). It now follows the first registry
still served (the admin server's own when none is added), its windows started anew."""

from __future__ import annotations

import aiohttp
import grpc
from prometheus_client import CollectorRegistry

from meshkit.observability import AdminOptions, AdminServer, rpc_metrics
from meshkit.observability._semconv import MethodNames


def _count(registry: CollectorRegistry, method: str) -> None:
    record = rpc_metrics(registry).bind_server(MethodNames(method, "unary"))
    record.start()
    record.finished(grpc.StatusCode.OK, 0.01)


async def _paths(admin: AdminServer) -> list[str]:
    async with aiohttp.ClientSession() as http, \
            http.get(admin.url + "/debug/dashboard.json") as resp:
        assert resp.status == 200
        return [row["path"] for row in (await resp.json())["methods"]]


async def test_the_dashboard_follows_a_served_registry_when_its_own_leaves() -> None:
    own, first, second = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    _count(own, "/own.S/M")
    _count(first, "/first.S/M")
    _count(second, "/second.S/M")
    admin = AdminServer(AdminOptions(registry=own, require_server=False),
                        dashboard_registry=first)
    admin.add_registry(first)
    admin.add_registry(second)
    await admin.start()
    try:
        assert await _paths(admin) == ["/first.S/M"]
        admin.remove_registry(first)  # its server stopped; the others serve on
        assert await _paths(admin) == ["/second.S/M"]
        admin.remove_registry(second)
        assert await _paths(admin) == ["/own.S/M"]
    finally:
        await admin.stop()
