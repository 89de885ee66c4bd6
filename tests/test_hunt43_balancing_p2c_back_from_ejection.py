"""An endpoint P2C saw ejected (taken out of its list by EjectingBalancer) and back
after a successful probe. Decided (Envoy, Finagle, Linkerd compared): it comes back as
a newcomer, its statistics dropped at the ejection: no stale estimate (its failures'
overload penalty decayed, or a fast EWMA from before it broke that draws a burst), its
estimate its probe's latency (its first sample, hunt44; without one, its peers' mean:
not zero, it does not look ideal), nothing pending, and slow
start from its return (Envoy's slow start begins when a host rejoins the healthy set).
This pins that rule through a real ejection and probe, and the share it takes at once.
"""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import (
    P2C,
    Done,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    P2COptions,
)
from meshkit.discovery import Instance

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _ep(i: int) -> Endpoint:
    ep = Endpoint(Instance(service="svc", instance_id=f"i{i:02d}", host="127.0.0.1",
                           port=40000 + i))
    ep.state = EndpointState.READY
    return ep


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _run(eb: EjectingBalancer, clock: _Clock, picks: int, bad: Endpoint | None,
         target: Endpoint) -> float:
    """Picks 1 ms apart, each answered 4 picks later in 10 ms (``bad``: UNAVAILABLE at
    once): the share ``target`` took."""
    got = 0
    inflight: list[tuple[Endpoint, Done]] = []
    for _ in range(picks):
        clock.t += 0.001
        picked = eb.pick()
        assert picked is not None
        got += picked[0] is target
        inflight.append(picked)
        if len(inflight) > 4:
            ep, done = inflight.pop(0)
            done(_UNAVAILABLE if ep is bad else _OK, 0.001 if ep is bad else 0.010)
    for ep, done in inflight:
        done(_UNAVAILABLE if ep is bad else _OK, 0.001 if ep is bad else 0.010)
    return got / picks


def test_an_endpoint_back_from_ejection_is_a_slow_started_newcomer() -> None:
    clock = _Clock()
    p2c = P2C(P2COptions(slow_start_s=5.0), rng=random.Random(7), clock=clock)
    eb = EjectingBalancer(p2c, OutlierOptions(consecutive_failures=1, base_ejection_s=10.0),
                          clock=clock)
    eps = [_ep(i) for i in range(10)]
    eb.update(eps)
    clock.t += 60
    _run(eb, clock, 1000, None, eps[0])  # warm: every estimate about 10 ms
    # i00 answers UNAVAILABLE until it is ejected
    for _ in range(200):
        if eb.ejected():
            break
        _run(eb, clock, 20, eps[0], eps[0])
    assert eb.ejected() == ["i00"]
    clock.t += 11.0  # its ejection time is up: the next pick probes it
    picked = eb.pick()
    assert picked is not None and picked[0] is eps[0]
    picked[1](_OK, 0.010)
    assert not eb.ejected()
    assert p2c.weight(eps[0]) < 0.2  # ramping from its return
    back = p2c.load(eps[0])
    assert abs(back - 0.010) < 1e-6, back  # its probe's 10 ms (hunt44), not the past
    share = _run(eb, clock, 1000, None, eps[0])  # fair: 10 %
    assert share < 0.06, f"back from ejection, it took {share:.0%} in its first second"
    clock.t += 6.0
    share = _run(eb, clock, 2000, None, eps[0])
    assert 0.05 < share < 0.16, f"past its ramp it took {share:.0%}"


def test_calls_still_out_count_when_it_comes_back() -> None:
    """Calls sent to it before its ejection and still running when it comes back load
    it (Envoy's active-request count and Finagle's/Linkerd's pending count are the
    host's, across an ejection): it came back with ``pending`` 0, read as idle beside
    peers with calls out, and their outcomes went to statistics nobody read."""
    clock = _Clock()
    p2c = P2C(P2COptions(slow_start_s=5.0), rng=random.Random(3), clock=clock)
    eps = [_ep(i) for i in range(4)]
    p2c.update(eps)
    clock.t += 60
    out: list[Done] = []
    for _ in range(3):  # three calls out on i00 (the others excluded), none answered
        picked = p2c.pick(None, eps[1:])
        assert picked is not None and picked[0] is eps[0]
        out.append(picked[1])
    p2c.update(eps[1:])  # ejected
    clock.t += 11.0
    p2c.update(eps)  # back, its calls still out
    row = {r["instance_id"]: r for r in p2c.snapshot()}["i00"]
    assert row["pending"] == 3, row
    assert p2c.weight(eps[0]) < 0.2  # still a newcomer's ramp
    for done in out:  # they end: its count goes back to 0, never below
        done(_OK, 0.012)
    row = {r["instance_id"]: r for r in p2c.snapshot()}["i00"]
    assert row["pending"] == 0, row
    assert row["rtt_ms"] >= 11.0, row  # their latency is its sample now
