"""A CollectorRegistry given to meshkit (TelemetryOptions(registry=...), rpc_metrics) is
freed once the application drops it.

rpc_metrics() keeps each registry's RpcMetrics in a WeakKeyDictionary, but the RpcMetrics
held its registry strongly, so the entry's value kept its own key alive: every registry
ever used, with all its method records, stayed in memory for the life of the process (a
registry per server started and drained, per tenant, per test).
"""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry, generate_latest

from meshkit.observability._metrics import rpc_metrics
from meshkit.observability._semconv import MethodNames


def test_a_registry_dropped_by_the_application_is_freed() -> None:
    """Fifty registries each counting a call, then dropped: none is left alive."""
    refs = []
    for i in range(50):
        registry = CollectorRegistry()
        record = rpc_metrics(registry).bind_server(MethodNames(f"/s.S/M{i}", "unary"))
        record.start()
        refs.append(weakref.ref(registry))
    del registry, record
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0


def test_a_registry_in_use_keeps_its_metrics() -> None:
    """While the application holds it, the registry's RpcMetrics is the same object and
    its counts are on its exposition."""
    registry = CollectorRegistry()
    metrics = rpc_metrics(registry)
    metrics.bind_server(MethodNames("/s.S/Kept", "unary")).start()
    gc.collect()
    assert rpc_metrics(registry) is metrics and metrics.registry is registry
    text = generate_latest(registry).decode()
    assert ('grpc_server_started_total{grpc_method="Kept",grpc_service="s.S",'
            'grpc_type="unary"} 1.0') in text
