"""A RingHash pick without a key (a call without the hash key: a method needing no
affinity, the metadata absent) built two lists of every endpoint to choose a random
READY one: O(n) per call on the channel's call path, 71 us a pick over 1,000 endpoints
and 490 us over 5,000, against 3-11 us for a keyed pick (a ring walk). It now draws a
few endpoints at random first (uniform among the READY, untried ones, as before) and
scans only when none of those draws can take the call."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from meshkit.balancer import Endpoint, EndpointState, RingHash
from meshkit.discovery import Instance

READY, IDLE, FAILING = EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING


def _ring(n: int, seed: int = 1) -> tuple[RingHash, list[Endpoint]]:
    eps = []
    for i in range(n):
        ep = Endpoint(Instance(service="s", instance_id=f"i{i:05d}", host="127.0.0.1",
                               port=1 + i))
        ep.state = READY
        eps.append(ep)
    ring = RingHash(rng=random.Random(seed))
    ring.update(eps)
    return ring, eps


def _pick_cost(ring: RingHash) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(1000):
            ring.pick(None)
        best = min(best, time.perf_counter() - t0)
    return best / 1000


@pytest.mark.timeout(120)
def test_ring_hash_keyless_pick_cost_does_not_grow_with_endpoints() -> None:
    small = _pick_cost(_ring(50)[0])
    large = _pick_cost(_ring(3000)[0])
    assert large / small < 5.0, (
        f"a keyless RingHash pick costs {large * 1e6:.1f} us over 3000 endpoints vs"
        f" {small * 1e6:.1f} us over 50: O(n) per call")


def test_ring_hash_keyless_picks_stay_uniform_among_ready_untried_endpoints() -> None:
    ring, eps = _ring(6, seed=4)
    eps[0].state = FAILING
    eps[1].state = IDLE
    tried = {eps[2]}
    got = Counter()
    for _ in range(4000):
        picked = ring.pick(None, tried)
        assert picked is not None
        got[picked[0].key] += 1
    assert set(got) == {"i00003", "i00004", "i00005"}  # READY, untried
    assert all(900 < c < 1770 for c in got.values()), got


def test_ring_hash_keyless_pick_falls_back_as_before() -> None:
    ring, eps = _ring(4, seed=2)
    for ep in eps:
        ep.state = FAILING
    assert ring.pick(None) is None
    eps[3].state = IDLE  # no READY one: a connecting one
    picked = ring.pick(None)
    assert picked is not None and picked[0] is eps[3]
    eps[2].state = READY  # the only READY one is excluded: still before the IDLE one
    picked = ring.pick(None, {eps[2]})
    assert picked is not None and picked[0] is eps[3]  # untried first, READY or not
    eps[3].state = FAILING
    picked = ring.pick(None, {eps[2]})
    assert picked is not None and picked[0] is eps[2]  # an excluded one when alone
