"""``RpcMetrics(registry, buckets_s=...)`` (public) refuses bucket bounds that make an
exposition Prometheus cannot ingest, quoting them, instead of serving it at every scrape:
a bound given twice wrote two ``_bucket`` samples of one series (``le="0.1"`` twice: a
duplicate series, which Prometheus refuses as a duplicate sample), an explicit ``+Inf``
a second ``le="+Inf"`` bucket, and ``NaN`` an ``le="NaN"`` bucket (the OpenMetrics parser:
"Invalid le label"). A trailing ``+Inf`` is taken as prometheus-client's ``Histogram``
takes it: the ``+Inf`` bucket it adds anyway."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshkit.errors import ConfigError
from meshkit.observability import RpcMetrics
from meshkit.observability._semconv import MethodNames


def _buckets_of_one_call(buckets_s: Any) -> list[str]:
    """The ``le`` values of the server histogram's bucket lines after one 50 ms call (the
    exposition must parse as OpenMetrics)."""
    reg = CollectorRegistry()
    rpc = RpcMetrics(reg, buckets_s=buckets_s)
    rec = rpc.bind_server(MethodNames("/a.B/C", "unary"))
    rec.start()
    rec.finished(grpc.StatusCode.OK, 0.05, False)
    text = generate_latest(reg).decode()
    list(text_string_to_metric_families(text))  # parses
    # read from the lines themselves: the parser keeps one sample of a series given twice
    return [line.split('le="', 1)[1].split('"', 1)[0] for line in text.splitlines()
            if line.startswith("grpc_server_handling_seconds_bucket{")]


@pytest.mark.parametrize("buckets_s", [
    (0.1, 0.1), (0.5, 0.1, 0.5), (math.nan, 0.1), (0.1, -math.inf), ("0.1", 0.5),
    (True, 0.5), "0.1", (0.1, math.inf, math.inf),
], ids=["twice", "twice-unsorted", "nan", "minus-inf", "a-string", "a-bool",
        "one-string", "inf-twice"])
def test_bucket_bounds_that_break_the_exposition_are_refused(buckets_s: Any) -> None:
    """Each is a ConfigError naming ``buckets_s`` and quoting the value, and nothing is
    registered on the registry (a corrected retry on it works)."""
    reg = CollectorRegistry()
    with pytest.raises(ConfigError, match=r"buckets_s.*got"):
        RpcMetrics(reg, buckets_s=buckets_s)
    RpcMetrics(reg)  # the families were not left registered


def test_a_trailing_inf_bound_is_the_inf_bucket_once() -> None:
    """``(0.1, inf)`` (as prometheus-client's own Histogram takes it) has one ``+Inf``
    bucket per series; the default and unsorted bounds keep working."""
    assert _buckets_of_one_call((0.1, math.inf)) == ["0.1", "+Inf"]
    assert _buckets_of_one_call((1, 0.5)) == ["0.5", "1.0", "+Inf"]
    assert _buckets_of_one_call(()) == ["+Inf"]
    assert len(_buckets_of_one_call(RpcMetrics.__init__.__defaults__[0])) == 17
