"""RoundRobin's slow-start walk (review of 03831db6) with many newcomers that never
connect.

03831db6 bounded the walk of a pick while newcomers ramp to ``_WALK`` plus the number of
newcomers ramping: a scale-out of hundreds whose endpoints never connect (a new
deployment's pods crash-looping, a firewall not opened yet: their ramp never starts,
so it never ends) beside few READY endpoints among many still walked hundreds of
endpoints a pick. Only a READY newcomer passes its turn on, so the walk needs a step
more per READY newcomer at most: the bound is now ``_WALK`` plus the fewer of the
newcomers ramping and the endpoints READY.
"""

from __future__ import annotations

import random

from meshkit.balancer import EndpointState, RoundRobin
from meshkit.discovery import Instance
from tests.test_hunt43_balancing_rr_slow_start import _Clock, _Reads


def _eps(n: int, base: int, prefix: str) -> list[_Reads]:
    return [_Reads(Instance(service="svc", instance_id=f"{prefix}{i:04d}", host="127.0.0.1",
                            port=base + i)) for i in range(n)]


def test_many_newcomers_that_never_connect_keep_a_pick_cheap() -> None:
    """2,000 endpoints, 2 READY, then 600 newcomers that never connect: a pick reads a
    few states, not one per newcomer (about 600 before)."""
    clock = _Clock()
    rr = RoundRobin(random.Random(2), slow_start_s=5.0, clock=clock)
    old = _eps(2000, 20000, "i")
    for ep in old[500], old[1500]:
        ep.state = EndpointState.READY
    rr.update(old)
    new = _eps(600, 30000, "n")
    for ep in new:
        ep.state = EndpointState.FAILING
    rr.update([*old, *new])
    _Reads.reads = 0
    for _ in range(100):
        got = rr.pick()
        assert got is not None and got[0] in (old[500], old[1500])
    assert _Reads.reads / 100 < 100, f"{_Reads.reads / 100:.0f} states read a pick"


def test_ready_newcomers_still_pass_their_turn_with_few_ready() -> None:
    """The bound still lets READY newcomers pass their turn on: 4 old READY and 4
    newcomers READY, at the start of their ramp (weight 0.1), among 200 endpoints
    mostly failing: the newcomers take far fewer picks than the old ones."""
    clock = _Clock()
    rr = RoundRobin(random.Random(3), slow_start_s=60.0, clock=clock)
    old = _eps(200, 20000, "i")
    for ep in old:
        ep.state = EndpointState.FAILING
    for ep in old[::50]:
        ep.state = EndpointState.READY
    rr.update(old)
    new = _eps(4, 30000, "n")
    for ep in new:
        ep.state = EndpointState.READY
    rr.update([*old, *new])
    picks = [rr.pick() for _ in range(4000)]
    to_new = sum(1 for p in picks if p is not None and p[0] in new)
    assert to_new < 0.3 * 4000, to_new  # an even share would be half
