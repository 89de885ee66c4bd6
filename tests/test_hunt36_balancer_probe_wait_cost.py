"""While ejected endpoints whose time is up wait for their connection (FAILING: a dead
instance still registered, its ejection run out), every pick walked every ejected
endpoint looking for a probe: O(ejected) per call for as long as they stay dead (77 us a
pick instead of 5 with 500 of 1,000 endpoints ejected and dead). A pick now looks at one
waiting endpoint (in turn), so a recovered one is still probed within as many picks as
endpoints wait, and a new ejection's end or a stream probe's bound still brings a full
look at once."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import (
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    RoundRobin,
)
from meshkit.discovery import Instance
from tests.support.counting import OwnCountedEndpoint, take_reads

READY, IDLE, FAILING = EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


def _inst(i: int) -> Instance:
    return Instance(service="s", instance_id=f"i{i:03d}", host="127.0.0.1", port=2000 + i)


def test_a_pick_does_not_walk_every_ejected_endpoint_waiting_for_its_connection() -> None:
    t = [0.0]
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(
        consecutive_failures=1, base_ejection_s=10.0, max_ejection_percent=100),
        clock=lambda: t[0])
    healthy = Endpoint(_inst(0))
    healthy.state = READY
    dead = [OwnCountedEndpoint(_inst(i)) for i in range(1, 41)]
    for ep in dead:
        ep.state = READY
    eb.update([healthy, *dead])
    for _ in range(400):
        if len(eb.ejected()) == len(dead):
            break  # each dead endpoint fails its call: ejected
        got = eb.pick()
        assert got is not None
        got[1](OK if got[0] is healthy else UNAVAILABLE, 0.001)
    for ep in dead:
        ep.state = FAILING
    t[0] += 11.0  # every ejection is up; every connection still fails
    take_reads(dead)
    for _ in range(200):
        got = eb.pick()
        assert got is not None and got[0] is healthy
        got[1](OK, 0.001)
    reads = take_reads(dead)
    assert reads <= 200 * 2 + 2 * len(dead), f"{reads} state reads of ejected endpoints"
    # one comes back: it is probed within as many picks as endpoints wait
    back = dead[17]
    back.state = IDLE
    for _ in range(len(dead) + 1):
        got = eb.pick()
        assert got is not None
        got[1](OK, 0.001)
        if got[0] is back:
            break
    else:
        raise AssertionError("the recovered endpoint was never probed")
    assert back.key not in eb.ejected()
    assert len(eb.ejected()) == len(dead) - 1


def test_a_new_ejection_running_out_is_probed_at_once_while_others_wait() -> None:
    t = [0.0]
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(
        consecutive_failures=1, base_ejection_s=10.0, max_ejection_percent=100),
        clock=lambda: t[0])
    a, b, c = (Endpoint(_inst(i)) for i in range(3))
    for ep in (a, b, c):
        ep.state = READY
    eb.update([a, b, c])
    for target in (a, b):
        while target.key not in eb.ejected():
            got = eb.pick()
            assert got is not None
            got[1](UNAVAILABLE if got[0] is target else OK, 0.001)
        t[0] += 5.0
    a.state = FAILING  # a's time is up at 10, b's at 15
    t[0] = 12.0
    for _ in range(3):
        got = eb.pick()
        assert got is not None and got[0] is c
        got[1](OK, 0.001)
    t[0] = 15.0
    got = eb.pick()
    assert got is not None and got[0] is b  # b's probe, at the first pick after its time
    got[1](OK, 0.001)
    assert eb.ejected() == [a.key]
