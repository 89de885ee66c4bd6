"""A round-robin pick among many endpoints of which few or none are READY costs O(1)
(O(READY) at most), not a walk of every endpoint.

``RoundRobin.pick`` walked the endpoints in turn from its position to the next READY
one: with 2,000 endpoints connecting (a dial), or one READY among them, a walk of the
whole list per pick (2,000-4,000 endpoint states read). Now it walks a few in turn,
then finds the next READY (or connecting) one in turn among the endpoints kept by state
(``StateIndex``). The choices are those of the walk: compared here with a reference
walk after random state changes. Counted: endpoint states read per pick.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.balancer import Endpoint, EndpointState, RoundRobin
from meshkit.discovery import Instance
from tests.support.counting import CountedEndpoint as _Counted
from tests.support.counting import counted_endpoints as _endpoints

pytestmark = pytest.mark.timeout(120)

_N = 2000


@pytest.mark.parametrize("ready", [0, 1, 20], ids=["none", "one", "twenty"])
def test_pick_examines_few_endpoints(ready: int) -> None:
    eps = _endpoints(_N)
    for ep in random.Random(1).sample(eps, ready):
        ep.state = EndpointState.READY
    rr = RoundRobin(rng=random.Random(3))
    rr.update(eps)
    _Counted.reads = 0
    for i in range(100):
        got = rr.pick(exclude=(eps[i],) if i % 2 else ())
        assert got is not None
        assert got[0].state is (EndpointState.READY if ready else EndpointState.IDLE)
    assert _Counted.reads / 100 <= 60, f"{_Counted.reads / 100:.0f} states read per pick"


def _walk(eps: list[Endpoint], start: int, exclude: tuple[Endpoint, ...]
          ) -> tuple[Endpoint | None, int]:
    """The reference: the round robin's walk (the pick and the next position)."""
    n = len(eps)
    fallback = excluded = excluded_idle = None
    for i in range(n):
        ep = eps[(start + i) % n]
        if ep.state is EndpointState.READY:
            if ep in exclude:
                excluded = excluded or ep
                continue
            return ep, (start + i + 1) % n
        if ep.state is EndpointState.IDLE:
            if ep in exclude:
                excluded_idle = excluded_idle or ep
            else:
                fallback = fallback or ep
    return fallback or excluded or excluded_idle, start + 1


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.lists(st.tuples(st.integers(0, 39),
                                              st.sampled_from(list(EndpointState)),
                                              st.sets(st.integers(0, 39), max_size=4)),
                                    max_size=40))
def test_picks_are_the_walks(n: int, steps: list[tuple[int, EndpointState, set[int]]]
                             ) -> None:
    eps = [Endpoint(Instance(service="s", instance_id=f"e{i}", host="h", port=1 + i))
           for i in range(n)]
    rr = RoundRobin(rng=random.Random(0))
    rr.update(eps)
    for i, state, tried in steps:
        eps[i % n].state = state
        exclude = tuple(eps[j % n] for j in sorted(tried))
        want, at = _walk(eps, rr._next, exclude)
        got = rr.pick(exclude=exclude)
        assert (got[0] if got is not None else None) is want
        assert rr._next == at
