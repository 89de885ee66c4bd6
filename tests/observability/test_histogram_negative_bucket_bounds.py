"""``RpcMetrics(registry, buckets_s=...)`` refuses a negative bound, quoting the value.

OpenMetrics 1.0 (Histogram): "Negative threshold buckets MAY be used, but then the
Histogram MetricPoint MUST NOT contain a sum value as it would no longer be a counter
semantically." So prometheus-client's ``HistogramMetricFamily`` silently leaves out
``_sum`` and ``_count`` of a histogram whose first bound is negative: with
``buckets_s=(-1, 0.1)`` every ``grpc_*_handling_seconds_count`` and ``_sum`` series
vanished from ``/metrics`` (call rates and mean latency gone from dashboards and alerts,
without a word). A call never lasts less than 0 s, so such a bound is a mistake (a sign
typo, an offset) and is refused like NaN."""

from __future__ import annotations

import math

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshkit.errors import ConfigError
from meshkit.observability import RpcMetrics
from meshkit.observability._semconv import MethodNames


def _scrape_parses(buckets_s: tuple[float, ...]) -> list[str]:
    """The server histogram's sample names (``le`` values for the buckets) after one
    50 ms call, the OpenMetrics exposition parsed as Prometheus would."""
    reg = CollectorRegistry()
    rpc = RpcMetrics(reg, buckets_s=buckets_s)
    rec = rpc.bind_server(MethodNames("/a.B/C", "unary"))
    rec.start()
    rec.finished(grpc.StatusCode.OK, 0.05, False)
    families = list(text_string_to_metric_families(generate_latest(reg).decode()))
    hist = next(f for f in families if f.name == "grpc_server_handling_seconds")
    return [s.labels["le"] if s.name.endswith("_bucket") else s.name.rsplit("_", 1)[1]
            for s in hist.samples if not s.name.endswith("_created")]


@pytest.mark.parametrize("buckets_s", [(-1.0, 0.1), (0.1, -0.001), (-5,)],
                         ids=["minus-one", "tiny-negative", "only-negative-int"])
def test_a_negative_bound_is_refused_quoting_it(buckets_s: tuple[float, ...]) -> None:
    """A ConfigError naming ``buckets_s`` and quoting the value; nothing registered (the
    default bounds work on the same registry after)."""
    reg = CollectorRegistry()
    with pytest.raises(ConfigError, match=r"buckets_s.*got .*-"):
        RpcMetrics(reg, buckets_s=buckets_s)
    RpcMetrics(reg)


def test_zero_and_positive_bounds_still_scrape() -> None:
    """A zero bound (calls that took no measurable time) and a trailing +inf stay fine,
    ``_count`` and ``_sum`` written."""
    assert _scrape_parses((0, 0.1, math.inf)) == ["0.0", "0.1", "+Inf", "count", "sum"]
    assert _scrape_parses((0.0,)) == ["0.0", "+Inf", "count", "sum"]
