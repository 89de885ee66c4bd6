"""A hedged call's ``exclude`` (HedgedAttempts) holds, besides the endpoints tried, those
a sibling attempt is waiting on while they connect: ``in`` sees them, iteration gives the
tried ones only (the Balancer protocol says so). P2C's slow-start redraw, the choice of
who takes a pick a newcomer yields, built its exclusion by iterating ``exclude``: it lost
the waited-on endpoints and sent the hedge to the very endpoint its sibling was about to
be sent on (most picks a newcomer won while another endpoint was the only one left)."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import P2C, Endpoint, EndpointState, P2COptions
from meshkit.discovery import Instance
from meshkit.resilience._retry import HedgedAttempts


def _ep(name: str) -> Endpoint:
    ep = Endpoint(Instance(service="s", instance_id=name, host="127.0.0.1",
                           port=1000 + ord(name[-1])))
    ep.state = EndpointState.READY
    return ep


def test_a_yielded_pick_never_goes_to_an_endpoint_a_sibling_attempt_waits_on() -> None:
    t = [100.0]
    p2c = P2C(P2COptions(slow_start_s=10.0), rng=random.Random(7), clock=lambda: t[0])
    waited, slow = _ep("s1"), _ep("s2")
    p2c.update([waited, slow])  # the first answer: both past their ramp
    for ep, latency in ((waited, 0.001), (slow, 1.0)):  # s2 slow, s1 fast
        p2c._stats[ep.key].take()
        p2c._stats[ep.key].done(grpc.StatusCode.OK, latency)
    newcomer = _ep("n3")
    p2c.update([waited, slow, newcomer])  # n3 ramps: it yields most picks it wins
    exclude = HedgedAttempts()
    exclude.wait_on(waited)  # a sibling attempt is about to be sent on s1
    assert waited in exclude and list(exclude) == []
    got = []
    for _ in range(60):
        picked = p2c.pick(None, exclude)
        assert picked is not None
        got.append(picked[0].key)
        picked[1](grpc.StatusCode.CANCELLED, 0.0)  # settled without an outcome
    assert "s1" not in got, got
    assert {"n3", "s2"} <= set(got)  # the newcomer kept some picks, yielded others to s2
