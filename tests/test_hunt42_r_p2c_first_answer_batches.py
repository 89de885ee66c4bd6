"""A first discovery answer larger than the pool's ``BUILD_BATCH`` (64) reaches the
balancer in several updates: the first batch at once, the rest a batch per turn of the
event loop (``EndpointPool.apply`` / ``_add_rest``). P2C took only the first update for
"the first answer" (not slow-started) and slow-started every later batch's endpoints as
newcomers, although none of them, nor any of the first batch, had taken a call: at a
client's start against 200 instances, the first 64 (the same 64 for every client: the
pool sorts by instance id) took about 73 % of the calls for the first second instead of
32 %, more than twice their share, the cold-start overload slow start exists to avoid.

An endpoint added while none of the balancer's endpoints has been READY belongs to the
cold start and is not slow-started; once one has been READY, newcomers ramp as before."""

from __future__ import annotations

import random

import grpc

from meshkit._pool import BUILD_BATCH
from meshkit.balancer import P2C, Done, Endpoint, EndpointState, P2COptions
from meshkit.discovery import Instance

_OK = grpc.StatusCode.OK


def _ep(i: int) -> Endpoint:
    return Endpoint(Instance(service="svc", instance_id=f"i{i:04d}", host="127.0.0.1",
                             port=40000 + i))


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _share(p2c: P2C, clock: _Clock, group: set[int], picks: int) -> float:
    """Picks 0.5 ms apart under load (a call answers 20 picks later, in 10 ms): the
    share ``group`` (endpoint ids) took."""
    got = 0
    inflight: list[Done] = []
    for _ in range(picks):
        clock.t += 0.0005
        picked = p2c.pick()
        assert picked is not None
        ep, done = picked
        got += id(ep) in group
        inflight.append(done)
        if len(inflight) > 20:
            inflight.pop(0)(_OK, 0.010)
    for done in inflight:
        done(_OK, 0.010)
    return got / picks


def test_the_first_answer_in_batches_is_not_slow_started() -> None:
    for seed in (1, 2):
        clock = _Clock()
        p2c = P2C(P2COptions(slow_start_s=5.0), rng=random.Random(seed), clock=clock)
        eps = [_ep(i) for i in range(200)]
        for n in range(BUILD_BATCH, 200 + BUILD_BATCH, BUILD_BATCH):
            p2c.update(eps[:n])  # as the pool: a batch per turn of the loop
            clock.t += 0.02
        clock.t += 0.05
        for ep in eps:  # connected
            ep.state = EndpointState.READY
        first = BUILD_BATCH / len(eps)  # their fair share: 32 %
        share = _share(p2c, clock, {id(e) for e in eps[:BUILD_BATCH]}, 2000)
        assert share < first + 0.08, f"the first batch took {share:.0%}, fair {first:.0%}"
        assert all(p2c.weight(ep) == 1.0 for ep in eps)


def test_a_newcomer_after_a_ready_endpoint_still_ramps() -> None:
    clock = _Clock()
    p2c = P2C(P2COptions(slow_start_s=5.0), rng=random.Random(3), clock=clock)
    eps = [_ep(i) for i in range(4)]
    p2c.update(eps)  # the first answer, connecting
    clock.t += 0.1
    eps[0].state = EndpointState.READY  # one takes calls: the cold start is over
    clock.t += 0.1
    late = _ep(9)
    p2c.update([*eps, late])
    clock.t += 1.0
    late.state = EndpointState.READY
    clock.t += 1.0
    assert abs(p2c.weight(late) - 0.2) < 1e-9  # its ramp, from its first READY
    # and a later answer adds one while every endpoint is down: still a newcomer
    for ep in (*eps, late):
        ep.state = EndpointState.FAILING
    other = _ep(10)
    p2c.update([*eps, late, other])
    other.state = EndpointState.READY
    assert p2c.weight(other) == 0.1
