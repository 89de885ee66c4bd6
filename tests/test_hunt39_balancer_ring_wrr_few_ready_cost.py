"""RingHash's keyless pick and WeightedRoundRobin's pick among many endpoints of which
few or none are READY cost O(1), not O(n) (O(n log n) for the WRR's heap).

A keyless ring-hash pick made four random draws, then lists of every usable endpoint
(2,000 endpoints connecting: about 4,000 endpoint states read a pick). A weighted round
robin with no endpoint READY popped its whole heap to find none, and pushed it back,
at every pick (the calls of a dial picking again while its sub-channels connect). Now
both keep their endpoints by state (``StateIndex``). Counted here: endpoint states
read per pick (an endpoint examined). Choices are those of before: uniform over the
untried READY ones, then the untried connecting ones, then the tried ones (ring hash);
the first one due, READY first (WRR).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshkit.balancer import EndpointState, RingHash, WeightedRoundRobin
from tests.support.counting import CountedEndpoint as _Counted
from tests.support.counting import counted_endpoints as _endpoints

pytestmark = pytest.mark.timeout(60)

_N = 2000


@pytest.mark.parametrize("ready", [0, 1, 20], ids=["none", "one", "twenty"])
def test_ring_keyless_pick_examines_few_endpoints(ready: int) -> None:
    eps = _endpoints(_N, ready)
    ring = RingHash(replicas_per_weight=1, rng=random.Random(5), max_ring_size=_N)
    ring.update(eps)
    _Counted.reads = 0
    states = Counter()
    for _ in range(100):
        got = ring.pick()
        assert got is not None
        states[got[0].state] += 1
    assert _Counted.reads / 100 <= 120, f"{_Counted.reads / 100:.0f} states read per pick"
    assert set(states) == {EndpointState.READY if ready else EndpointState.IDLE}


def test_ring_keyless_choices_are_as_before() -> None:
    """Untried READY first, uniformly; then untried connecting; then tried READY."""
    eps = _endpoints(30, 0)
    for i in (3, 9, 21):
        eps[i].state = EndpointState.READY
    for i in range(25, 30):
        eps[i].state = EndpointState.FAILING
    ring = RingHash(rng=random.Random(9))
    ring.update(eps)
    counts = Counter(ring.pick(exclude=(eps[3],))[0].key  # type: ignore[index]
                     for _ in range(2000))
    assert set(counts) == {"e0009", "e0021"}
    assert all(800 <= c <= 1200 for c in counts.values()), counts
    tried_ready = (eps[3], eps[9], eps[21])
    picked = {ring.pick(exclude=tried_ready)[0] for _ in range(300)}  # type: ignore[index]
    assert picked == {ep for ep in eps if ep.state is EndpointState.IDLE}
    every_usable = tuple(ep for ep in eps if ep.state is not EndpointState.FAILING)
    picked = {ring.pick(exclude=every_usable)[0] for _ in range(200)}  # type: ignore[index]
    assert picked == set(tried_ready)
    for ep in eps:
        ep.state = EndpointState.FAILING
    assert ring.pick() is None


def test_wrr_pick_with_none_ready_examines_few_endpoints() -> None:
    """2,000 endpoints connecting: each pick takes the first one due, reading a few
    states, not the whole heap's."""
    eps = _endpoints(_N, 0)
    wrr = WeightedRoundRobin(rng=random.Random(2))
    wrr.update(eps)
    _Counted.reads = 0
    got = [wrr.pick() for _ in range(100)]
    assert _Counted.reads / 100 <= 20, f"{_Counted.reads / 100:.0f} states read per pick"
    assert all(g is not None and g[0].state is EndpointState.IDLE for g in got)
    # a turn each: 100 different endpoints, none twice
    assert len({g[0] for g in got if g is not None}) == 100


def test_wrr_picks_are_as_before_when_one_connects() -> None:
    """The READY one takes every call once it is; FAILING ones are never taken."""
    eps = _endpoints(50, 0)
    for ep in eps[40:]:
        ep.state = EndpointState.FAILING
    wrr = WeightedRoundRobin(rng=random.Random(4))
    wrr.update(eps)
    first = [wrr.pick() for _ in range(60)]
    assert all(g is not None and g[0] in eps[:40] for g in first)
    eps[17].state = EndpointState.READY
    assert all(wrr.pick()[0] is eps[17] for _ in range(30))  # type: ignore[index]
    for ep in eps[:40]:
        ep.state = EndpointState.FAILING
    assert wrr.pick() is None
