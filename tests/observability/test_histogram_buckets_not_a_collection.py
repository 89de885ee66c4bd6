"""``RpcMetrics(registry, buckets_s=...)`` given one number or ``None`` (not a collection
of bounds) is a ConfigError quoting it, not the ``TypeError`` of ``tuple(0.5)``; a lone
``+inf`` is the ``+Inf`` bucket alone."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshkit.errors import ConfigError
from meshkit.observability import RpcMetrics


@pytest.mark.parametrize("buckets_s", [0.5, 3, None], ids=["a-float", "an-int", "none"])
def test_one_number_or_none_is_refused_quoting_it(buckets_s: Any) -> None:
    reg = CollectorRegistry()
    with pytest.raises(ConfigError, match=rf"buckets_s.*got {buckets_s!r}"):
        RpcMetrics(reg, buckets_s=buckets_s)
    RpcMetrics(reg)  # nothing was registered


def test_a_lone_inf_is_the_inf_bucket_alone() -> None:
    rpc = RpcMetrics(CollectorRegistry(), buckets_s=(math.inf,))
    assert rpc.buckets_s == () and rpc.le == ("+Inf",)
