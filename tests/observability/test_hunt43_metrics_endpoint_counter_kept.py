"""A per-endpoint counter a live channel stops reporting never goes backwards.

``meshkit_client_endpoint_calls_total{target, instance_id}`` is the sum of what the
live channels report for the endpoint and what the channels that ended counted on it
(the retired tally). A live channel stops reporting an endpoint when its pool forgets
it (past the 256 endpoints that left it keeps): the series, still listed by the
tally (or by another live channel), dropped by that channel's count, a counter going
backwards (Prometheus reads a reset; ``rate()``/``increase()`` count the rest again as
new attempts). Now what a live channel counted on a series it stops reporting while the
series stays listed is kept in the tally, as a channel that ends leaves its counts.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshkit._stats import ChannelStats, EndpointStats
from meshkit.observability import track
from meshkit.observability._metrics import MeshCollector

pytestmark = pytest.mark.timeout(60)


class _Channel:
    """Stands for a live MeshChannel: the endpoints and counts the test sets."""

    def __init__(self, target: str, endpoints: dict[str, int]) -> None:
        self.live = True
        self.target = target
        self.endpoints = dict(endpoints)

    def stats(self) -> Any:
        return ChannelStats(
            service=self.target, state="READY", balancer="P2C", ejections=0,
            watch_errors=0, retry=None, endpoints=tuple(EndpointStats(
                instance_id=iid, address="10.0.0.1:50051", state="READY", present=True,
                ejected=False, calls=calls, failures=0, in_flight=0)
                for iid, calls in self.endpoints.items()))


def _calls(collector: MeshCollector, target: str) -> dict[str, float]:
    return {s.labels["instance_id"]: s.value for m in collector.collect()
            for s in m.samples if s.name == "meshkit_client_endpoint_calls_total"
            and s.labels.get("target") == target}


def test_endpoint_a_live_channel_forgets_keeps_its_count_beside_a_retired_one() -> None:
    target = "hunt43-endpoint-forgotten"
    collector = MeshCollector()
    closed = _Channel(target, {"pod-x": 5})
    live = _Channel(target, {"pod-x": 1, "pod-y": 2})
    track(closed, kind="channel")
    track(live, kind="channel")
    assert _calls(collector, target) == {"pod-x": 6, "pod-y": 2}
    closed.live = False  # ended: its 5 retired
    assert _calls(collector, target) == {"pod-x": 6, "pod-y": 2}
    live.endpoints = {"pod-y": 3}  # its pool forgot pod-x (past the 256 kept)
    got = _calls(collector, target)
    assert got == {"pod-x": 6, "pod-y": 3}, got  # not 5: no counter goes backwards
    live.live = False
    assert _calls(collector, target) == {"pod-x": 6, "pod-y": 3}


def test_endpoint_one_of_two_live_channels_forgets_keeps_its_count() -> None:
    target = "hunt43-endpoint-forgotten-two"
    collector = MeshCollector()
    a = _Channel(target, {"pod-x": 4})
    b = _Channel(target, {"pod-x": 2})
    track(a, kind="channel")
    track(b, kind="channel")
    assert _calls(collector, target) == {"pod-x": 6}
    b.endpoints = {}  # b's pool forgot pod-x; a still reports it
    got = _calls(collector, target)
    assert got == {"pod-x": 6}, got
    a.endpoints = {"pod-x": 7}
    assert _calls(collector, target) == {"pod-x": 9}
    a.live = b.live = False


def test_endpoint_its_only_channel_forgets_leaves() -> None:
    """A series no one else lists still leaves with the endpoint (a series may
    disappear; the pool's own bound is the cardinality bound)."""
    target = "hunt43-endpoint-forgotten-alone"
    collector = MeshCollector()
    only = _Channel(target, {"pod-x": 4, "pod-y": 1})
    track(only, kind="channel")
    assert _calls(collector, target) == {"pod-x": 4, "pod-y": 1}
    only.endpoints = {"pod-y": 2}
    assert _calls(collector, target) == {"pod-y": 2}
    only.live = False
