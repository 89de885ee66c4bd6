"""``RpcMetrics(registry, buckets_s=...)`` (its documented way to choose the latency
buckets) is the registry's RPC metrics from then on: ``rpc_metrics(registry)``, which
the telemetry interceptors and the admin server call, returns it. It made a second set
and raised ``DuplicateTimeseries`` (a ``serve()`` with
``TelemetryOptions(registry=registry)`` or an ``AdminServer`` of that registry failed),
so custom buckets could not be used at all."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from meshkit.observability import AdminOptions, AdminServer, RpcMetrics, rpc_metrics
from meshkit.observability._semconv import MethodNames


async def test_rpc_metrics_returns_the_one_made_with_custom_buckets() -> None:
    registry = CollectorRegistry()
    made = RpcMetrics(registry, buckets_s=(0.002, 0.02, 0.2))
    assert rpc_metrics(registry) is made
    record = rpc_metrics(registry).bind_server(MethodNames("/s.S/M", "unary"))
    record.start()
    record.finished(grpc.StatusCode.OK, 0.01)
    admin = AdminServer(AdminOptions(registry=registry, require_server=False))
    await admin.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(admin.url + "/metrics") as resp:
            text = await resp.text()
    finally:
        await admin.stop()
    bounds = [s.labels["le"] for f in text_string_to_metric_families(text)
              for s in f.samples if s.name == "grpc_server_handling_seconds_bucket"]
    assert bounds == ["0.002", "0.02", "0.2", "+Inf"]


def test_a_second_set_on_one_registry_is_still_refused() -> None:
    registry = CollectorRegistry()
    first = rpc_metrics(registry)
    with pytest.raises(ValueError):
        RpcMetrics(registry, buckets_s=(0.1,))
    assert rpc_metrics(registry) is first
