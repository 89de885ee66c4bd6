"""A registry whose histograms have only the ``+Inf`` bucket
(``RpcMetrics(registry, buckets_s=())``, which Prometheus allows: count and sum only)
made ``histogram_quantile`` raise ``IndexError`` once a call was counted, so
``/debug/dashboard.json`` answered 500 and the dashboard stayed "stale"; the quantile
of such a histogram is unknown (``None``, Prometheus' NaN), the rest of the row is
served."""

from __future__ import annotations

import aiohttp
import grpc
from prometheus_client import CollectorRegistry

from meshkit.observability import AdminOptions, AdminServer, RpcMetrics
from meshkit.observability._dashboard import histogram_quantile
from meshkit.observability._semconv import MethodNames


def test_no_finite_bound_has_no_quantile() -> None:
    assert histogram_quantile(0.5, [], [3]) is None
    assert histogram_quantile(0.99, (), (0,)) is None


async def test_the_dashboard_serves_a_registry_without_finite_buckets() -> None:
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry, buckets_s=())
    record = rpc.bind_server(MethodNames("/s.S/M", "unary"))
    record.start()
    record.finished(grpc.StatusCode.OK, 0.01)
    admin = AdminServer(AdminOptions(registry=registry, require_server=False))
    await admin.start()
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(admin.url + "/debug/dashboard.json") as resp:
            assert resp.status == 200
            rows = (await resp.json())["methods"]
    finally:
        await admin.stop()
    assert [(r["path"], r["finished"], r["p50_ms"]) for r in rows] == [("/s.S/M", 1, None)]
