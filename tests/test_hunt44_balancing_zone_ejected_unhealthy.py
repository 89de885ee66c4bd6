"""ZoneAwareBalancer's proportional spillover counted only FAILING connections as
unhealthy: under outlier ejection it sees the endpoints in rotation only, so a local
zone with 7 of its 10 endpoints ejected kept every call on the 3 left. Envoy counts an
ejected host as unhealthy for its locality's health: the zone keeps
``min(1, 1.4 * healthy / total)`` of the calls, ``total`` counting the ejected ones."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import (
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    RoundRobin,
    ZoneAwareBalancer,
)
from meshkit.discovery import Instance

_OPTS = OutlierOptions(consecutive_failures=1, max_ejection_percent=100.0,
                       base_ejection_s=1000.0, max_ejection_s=1000.0)


def _ep(i: int, zone: str) -> Endpoint:
    ep = Endpoint(Instance(service="svc", instance_id=f"{zone}{i:02d}", host="127.0.0.1",
                           port=40000 + i, meta={"zone": zone}))
    ep.state = EndpointState.READY
    return ep


def _balancer(ejected: int) -> tuple[EjectingBalancer, list[Endpoint]]:
    now = [0.0]
    zb = ZoneAwareBalancer("a", RoundRobin, rng=random.Random(7))
    eb = EjectingBalancer(zb, _OPTS, clock=lambda: now[0])
    local = [_ep(i, "a") for i in range(10)]
    eb.update(local + [_ep(i, "b") for i in range(10)])
    bad = {ep.key for ep in local[:ejected]}
    for _ in range(200):
        if len(eb.ejected()) == ejected:
            break
        got = eb.pick()
        assert got is not None
        ep, done = got
        done(grpc.StatusCode.UNAVAILABLE if ep.key in bad else grpc.StatusCode.OK, 0.01)
    assert sorted(eb.ejected()) == sorted(bad)
    return eb, local


def _local_share(eb: EjectingBalancer, picks: int) -> float:
    got = 0
    for _ in range(picks):
        picked = eb.pick()
        assert picked is not None
        got += picked[0].instance.meta["zone"] == "a"
        picked[1](grpc.StatusCode.OK, 0.01)
    return got / picks


def test_ejected_local_endpoints_count_as_unhealthy() -> None:
    """7 of 10 local endpoints ejected: about 1.4 * 3 / 10 = 42 % of calls stay local."""
    eb, _ = _balancer(7)
    share = _local_share(eb, 4000)
    assert 0.36 <= share <= 0.48, f"7 of 10 local ejected: {share:.0%} local"


def test_ejected_and_failing_add_up() -> None:
    """4 ejected and 3 FAILING of 10: the same 42 % as 7 unhealthy of either kind."""
    eb, local = _balancer(4)
    for ep in local[4:7]:
        ep.state = EndpointState.FAILING
    share = _local_share(eb, 4000)
    assert 0.36 <= share <= 0.48, f"7 of 10 local unhealthy: {share:.0%} local"


def test_few_ejected_keep_every_call_local() -> None:
    """2 of 10 ejected: 1.4 * 8 / 10 >= 1, every call stays local."""
    eb, _ = _balancer(2)
    assert _local_share(eb, 1000) == 1.0


def test_without_ejection_the_zone_counts_what_it_is_given() -> None:
    """A ZoneAwareBalancer used alone (no census of ejected endpoints) keeps every call
    local while its endpoints are healthy."""
    zb = ZoneAwareBalancer("a", RoundRobin, rng=random.Random(7))
    zb.update([_ep(i, "a") for i in range(3)] + [_ep(i, "b") for i in range(10)])
    for _ in range(200):
        got = zb.pick()
        assert got is not None
        assert got[0].instance.meta["zone"] == "a"
        got[1](grpc.StatusCode.OK, 0.01)
