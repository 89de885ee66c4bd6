"""Review of 3f59530d: with fewer than sqrt(n) usable endpoints a keyed RingHash pick
looks up each usable endpoint's own points (``_nearest``) instead of walking the ring.
It must give exactly the owner the clockwise walk gives. The oracle here builds the ring
from the documented rule alone (``replicas_per_weight * weight`` points, each an
endpoint's prefix of ``blake2b(f"{key}#{i}")``; above ``max_ring_size`` each endpoint's
share, one at least), not from the balancer's own ring, and walks it: the first
non-FAILING untried owner clockwise from the key's hash (ties by key, wrapping at the
ring's end), else the first non-FAILING one. Endpoints listed twice under one key (the
ring's owner of those points is the last one listed), weights, tiny rings, states
changed after the update and tried sets are all drawn."""

from __future__ import annotations

import bisect
import hashlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.balancer import Endpoint, EndpointState, RingHash
from meshkit.discovery import Instance

READY, IDLE, FAILING = EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING


def _h(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


def _oracle(eps: list[Endpoint], replicas: int, max_ring: int, key: str,
            exclude: set[Endpoint]) -> Endpoint | None:
    """The walk's owner, from the documented ring rule (module docstring)."""
    counts = [replicas * ep.instance.weight for ep in eps]
    total = sum(counts)
    if total > max_ring:
        counts = [max(1, c * max_ring // total) for c in counts]
    owner = {ep.key: ep for ep in eps}  # the last one listed under a key
    ring = sorted((_h(f"{ep.key}#{i}"), ep.key) for ep, c in zip(eps, counts, strict=True)
                  for i in range(c))
    if not ring:
        return None
    start = bisect.bisect([p for p, _ in ring], _h(key))
    fallback = None
    for i in range(len(ring)):
        ep = owner[ring[(start + i) % len(ring)][1]]
        if ep.state is not FAILING:
            if ep not in exclude:
                return ep
            fallback = fallback or ep
    return fallback


_STATES = st.sampled_from([FAILING, FAILING, FAILING, FAILING, READY, IDLE])


@st.composite
def _cases(draw: st.DrawFn) -> tuple[list[Endpoint], int, int, list[EndpointState], int]:
    n = draw(st.integers(1, 40))
    keys = draw(st.lists(st.integers(0, max(0, n - 1)), min_size=n, max_size=n))
    weights = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    eps = [Endpoint(Instance(service="s", instance_id=f"k{k}", host="127.0.0.1",
                             port=2000 + i, weight=w))
           for i, (k, w) in enumerate(zip(keys, weights, strict=True))]
    for ep in eps:
        ep.state = draw(_STATES)
    later = draw(st.lists(_STATES, min_size=n, max_size=n))  # states after the update
    replicas = draw(st.sampled_from([1, 2, 3, 10, 100]))
    max_ring = draw(st.sampled_from([1, 2, 7, 64, 4096]))
    return eps, replicas, max_ring, later, draw(st.integers(0, 2**32))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_a_keyed_pick_is_the_walks_owner(
    case: tuple[list[Endpoint], int, int, list[EndpointState], int],
) -> None:
    """Every keyed pick, before and after the endpoints' states change, and with tried
    endpoints, is the owner the clockwise walk over the documented ring finds."""
    eps, replicas, max_ring, later, seed = case
    rh = RingHash(replicas_per_weight=replicas, rng=random.Random(0), max_ring_size=max_ring)
    rh.update(eps)
    rnd = random.Random(seed)
    for phase in range(2):
        if phase:
            for ep, state in zip(eps, later, strict=True):
                ep.state = state
        usable = [ep for ep in eps if ep.state is not FAILING]
        for k in range(12):
            key = f"key{rnd.getrandbits(32)}"
            exclude = set(rnd.sample(usable, min(len(usable), rnd.choice((0, 0, 1, 2)))))
            got = rh.pick(key, exclude)
            want = _oracle(eps, replicas, max_ring, key, exclude)
            assert (got[0] if got else None) is want, (phase, k, key)


def test_a_key_listed_twice_with_a_smaller_weight_last_keeps_its_points() -> None:
    """Listed twice under one key, the first with weight 5 and the last with 1: the
    ring holds the first's 5 points, all owned by the last one listed; while it is
    the one usable endpoint beside many FAILING ones, a key whose hash falls right
    before one of the 4 extra points still goes to it, as the walk (the lookup knew
    only the last's one point)."""
    eps = [Endpoint(Instance(service="s", instance_id=f"f{i}", host="127.0.0.1",
                             port=3000 + i)) for i in range(30)]
    first = Endpoint(Instance(service="s", instance_id="dup", host="127.0.0.1", port=4000,
                              weight=5))
    last = Endpoint(Instance(service="s", instance_id="dup", host="127.0.0.1", port=4001,
                             weight=1))
    other = Endpoint(Instance(service="s", instance_id="other", host="127.0.0.1", port=4002))
    for ep in eps:
        ep.state = FAILING
    first.state = FAILING
    last.state = READY
    other.state = READY
    listed = [first, *eps, last, other]
    rh = RingHash(replicas_per_weight=1, rng=random.Random(0))
    rh.update(listed)
    rnd = random.Random(5)
    for _ in range(300):
        key = f"q{rnd.getrandbits(32)}"
        got = rh.pick(key)
        assert (got[0] if got else None) is _oracle(listed, 1, 4096, key, set()), key
