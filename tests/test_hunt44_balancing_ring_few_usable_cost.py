"""A keyed RingHash pick walked the ring clockwise until a usable endpoint, reading each
owner's state: with most endpoints FAILING (an outage) that is most of the ring a call,
3.1 ms a pick with 2,000 endpoints all FAILING and 1.1 ms with one READY. With few
usable endpoints a keyed pick now looks up the nearest point clockwise of each usable
one (kept by state): O(usable x log points), the same owner as the walk finds."""

from __future__ import annotations

import random

from meshkit.balancer import Endpoint, EndpointState, RingHash
from meshkit.discovery import Instance
from tests.support.counting import OwnCountedEndpoint, take_reads

READY, IDLE, FAILING = EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING


def _eps(n: int, weight: int = 1) -> list[OwnCountedEndpoint]:
    return [OwnCountedEndpoint(Instance(service="s", instance_id=f"i{i:04d}",
                                        host="127.0.0.1", port=2000 + i, weight=weight))
            for i in range(n)]


def _all_failing_ring(n: int) -> tuple[list[OwnCountedEndpoint], RingHash]:
    """``n`` counting endpoints, all FAILING, and a RingHash of them."""
    eps = _eps(n)
    for ep in eps:
        ep.state = FAILING
    rh = RingHash(rng=random.Random(0))
    rh.update(eps)
    return eps, rh


def _walk(rh: RingHash, key: str, exclude: set[Endpoint]) -> Endpoint | None:
    """The owner by the rule: the first non-FAILING untried endpoint clockwise, else the
    first non-FAILING one."""
    import bisect

    from meshkit.balancer._weighted import _hash64

    points, owners = rh._points, rh._owners
    start = bisect.bisect(points, _hash64(key))
    fallback = None
    for i in range(len(points)):
        ep = owners[(start + i) % len(points)]
        if ep._state is not FAILING:
            if ep not in exclude:
                return ep
            fallback = fallback or ep
    return fallback


def test_a_keyed_pick_with_every_endpoint_failing_reads_no_ring() -> None:
    """2,000 endpoints all FAILING: ``None`` without reading the owners' states."""
    eps, rh = _all_failing_ring(2000)
    take_reads(eps)
    for k in range(50):
        assert rh.pick(f"k{k}") is None
    assert take_reads(eps) <= 50, "a keyed pick walked the ring"


def test_a_keyed_pick_with_one_usable_endpoint_reads_a_few() -> None:
    """One READY of 2,000: every key goes to it, reading a few states a pick."""
    eps, rh = _all_failing_ring(2000)
    eps[17].state = READY
    take_reads(eps)
    for k in range(50):
        got = rh.pick(f"k{k}")
        assert got is not None and got[0] is eps[17]
    assert take_reads(eps) <= 50 * 8, "a keyed pick walked the ring"


def test_the_owner_is_the_walks_owner() -> None:
    """With any mix of states, weights and tried endpoints, a keyed pick gives the
    endpoint the clockwise walk gives."""
    rnd = random.Random(11)
    for trial in range(40):
        eps = [OwnCountedEndpoint(Instance(service="s", instance_id=f"t{trial}-{i:03d}",
                                           host="127.0.0.1", port=3000 + i,
                                           weight=rnd.randint(1, 4)))
               for i in range(rnd.choice((3, 40, 300)))]
        usable_share = rnd.choice((0.0, 0.01, 0.05, 0.3, 1.0))
        for ep in eps:
            ep.state = (rnd.choice((READY, IDLE)) if rnd.random() < usable_share
                        else FAILING)
        rh = RingHash(replicas_per_weight=rnd.choice((1, 10, 100)),
                      rng=random.Random(trial), max_ring_size=rnd.choice((64, 4096)))
        rh.update(eps)
        usable = [ep for ep in eps if ep._state is not FAILING]
        for k in range(30):
            exclude = set(rnd.sample(usable, min(len(usable), rnd.choice((0, 1, 3)))))
            got = rh.pick(f"key{k}", exclude)
            want = _walk(rh, f"key{k}", exclude)
            assert (got[0] if got else None) is want, (trial, k)
