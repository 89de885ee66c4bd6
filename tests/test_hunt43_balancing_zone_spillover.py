"""ZoneAwareBalancer was all-or-nothing: every call to the local zone while one local
endpoint could take it, so a zone with 1 of 10 endpoints left took the whole local
share of traffic on that one endpoint. Envoy's priority levels spill over in
proportion: the local zone keeps ``min(1, overprovisioning_factor * healthy / total)``
of the calls (factor 1.4, Envoy's default), the rest goes to the other zones. Here an
endpoint is healthy unless its connection is ``FAILING`` (an IDLE one, whose unused
connection a server closed, is healthy; ejected ones are not in the balancer's list)."""

from __future__ import annotations

import random

import grpc
import pytest

from meshkit.balancer import Endpoint, EndpointState, RoundRobin, ZoneAwareBalancer
from meshkit.discovery import Instance
from meshkit.errors import ConfigError


def _ep(i: int, zone: str) -> Endpoint:
    ep = Endpoint(Instance(service="svc", instance_id=f"{zone}{i:02d}", host="127.0.0.1",
                           port=40000 + i, meta={"zone": zone}))
    ep.state = EndpointState.READY
    return ep


def _local_share(zb: ZoneAwareBalancer, picks: int) -> float:
    got = 0
    for _ in range(picks):
        picked = zb.pick()
        assert picked is not None
        got += picked[0].instance.meta["zone"] == "a"
        picked[1](grpc.StatusCode.OK, 0.01)
    return got / picks


def _zones(failing: int) -> ZoneAwareBalancer:
    zb = ZoneAwareBalancer("a", RoundRobin, rng=random.Random(5))
    local = [_ep(i, "a") for i in range(10)]
    other = [_ep(i, "b") for i in range(10)]
    zb.update(local + other)
    for ep in local[:failing]:
        ep.state = EndpointState.FAILING
    return zb


@pytest.mark.parametrize(("failing", "low", "high"),
                         [(0, 1.0, 1.0), (2, 1.0, 1.0), (4, 0.78, 0.90),
                          (7, 0.36, 0.48), (9, 0.08, 0.20)],
                         ids=["none", "two", "four", "seven", "nine"])
def test_the_local_zone_keeps_its_share_by_health(failing: int, low: float,
                                                   high: float) -> None:
    share = _local_share(_zones(failing), 4000)
    assert low <= share <= high, f"{failing} of 10 local failing: {share:.0%} local"


def test_every_local_endpoint_failing_goes_elsewhere() -> None:
    assert _local_share(_zones(10), 500) == 0.0


def test_idle_local_endpoints_are_healthy() -> None:
    zb = _zones(0)
    for ep in zb._local_eps[:8]:
        ep.state = EndpointState.IDLE  # unused connections a server closed
    assert _local_share(zb, 1000) == 1.0


def test_the_factor_is_checked() -> None:
    for bad in (0.5, float("nan"), -1.0):
        with pytest.raises(ConfigError, match="overprovisioning_factor"):
            ZoneAwareBalancer("a", overprovisioning_factor=bad)
