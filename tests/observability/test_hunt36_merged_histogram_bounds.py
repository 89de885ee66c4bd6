"""Two registries served by one admin server that count one histogram series with
different bucket bounds (one with ``RpcMetrics(registry, buckets_s=...)``, the other the
default) are not merged bucket by bucket: the exposition had the second's ``le`` buckets
after the first's ``_created``, ``+Inf`` above ``le="10.0"`` although every call took
10 ms (not cumulative), and the OpenMetrics parser refused it ("Buckets out of order").
The first registry's series is served as it is, the other's left out; nor is a leaving
registry's histogram added to such a series."""

from __future__ import annotations

import aiohttp
import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshkit.observability import AdminOptions, AdminServer, RpcMetrics, rpc_metrics
from meshkit.observability._semconv import MethodNames

_OM = "application/openmetrics-text; version=1.0.0"


def _count(registry: CollectorRegistry, calls: int) -> None:
    record = rpc_metrics(registry).bind_server(MethodNames("/s.S/M", "unary"))
    for _ in range(calls):
        record.start()
        record.finished(grpc.StatusCode.OK, 0.01)


async def _handling(admin: AdminServer) -> list[tuple[str, str | None, float]]:
    async with aiohttp.ClientSession() as http, \
            http.get(admin.url + "/metrics", headers={"Accept": _OM}) as resp:
        text = await resp.text()
    families: list[Metric] = list(text_string_to_metric_families(text))  # parses
    return [(s.name, s.labels.get("le"), s.value) for f in families
            if f.name == "grpc_server_handling_seconds" for s in f.samples
            if not s.name.endswith("_created")]


def _cumulative(samples: list[tuple[str, str | None, float]]) -> None:
    buckets = [(float(le), v) for name, le, v in samples if name.endswith("_bucket") and le]
    assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    count = [v for name, _, v in samples if name.endswith("_count")]
    assert count == [buckets[-1][1]]


async def test_series_of_other_bounds_are_not_merged() -> None:
    default, custom = CollectorRegistry(), CollectorRegistry()
    RpcMetrics(custom, buckets_s=(0.002, 0.02, 0.2))
    _count(default, 1)
    _count(custom, 2)
    admin = AdminServer(AdminOptions(registry=CollectorRegistry(), require_server=False))
    admin.add_registry(default)
    admin.add_registry(custom)
    await admin.start()
    try:
        samples = await _handling(admin)
        _cumulative(samples)
        assert ("grpc_server_handling_seconds_count", None, 1.0) in samples
        assert ("grpc_server_handling_seconds_bucket", "0.02", 2.0) not in samples

        admin.remove_registry(default)  # the custom one's stay, nothing of default's added
        samples = await _handling(admin)
        _cumulative(samples)
        assert ("grpc_server_handling_seconds_count", None, 2.0) in samples
        assert ("grpc_server_handling_seconds_bucket", "0.02", 2.0) in samples
    finally:
        await admin.stop()
