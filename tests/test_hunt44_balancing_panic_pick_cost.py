"""Panic routing (nothing usable left in rotation: every endpoint ejected under
``max_ejection_percent=100``, or those in rotation all FAILING) built a list of every
ejected endpoint's state at every pick: O(ejected) a call, 212 us a pick with 4,000
ejected, and the same walk for the calls that then fail fast while every ejected
connection is FAILING too. The ejected endpoints are now kept by state, and a panic pick
reads a few of them: O(1) while few are excluded."""

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

_N = 400


def _all_ejected() -> tuple[EjectingBalancer, list[OwnCountedEndpoint]]:
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(
        consecutive_failures=1, max_ejection_percent=100, base_ejection_s=1000.0,
        max_ejection_s=1000.0), clock=lambda: 0.0)
    eps = [OwnCountedEndpoint(Instance(service="s", instance_id=f"i{i:04d}",
                                       host="127.0.0.1", port=2000 + i))
           for i in range(_N)]
    for ep in eps:
        ep.state = READY
    eb.update(eps)
    for _ in range(2 * _N):
        if len(eb.ejected()) == _N:
            break
        got = eb.pick()
        assert got is not None
        got[1](grpc.StatusCode.UNAVAILABLE, 0.01)
    assert len(eb.ejected()) == _N
    return eb, eps


def test_a_panic_pick_reads_a_few_ejected_endpoints() -> None:
    """Every endpoint ejected: each pick still gets one, reading a few states, and the
    picks go round the ejected endpoints."""
    eb, eps = _all_ejected()
    take_reads(eps)
    seen = set()
    for _ in range(_N):
        got = eb.pick()
        assert got is not None
        seen.add(got[0].key)
        got[1](grpc.StatusCode.OK, 0.01)
    assert take_reads(eps) <= 4 * _N, "a panic pick walked the ejected endpoints"
    assert len(seen) >= _N // 2
    assert eb.panic_picks == _N


def test_a_panic_pick_avoids_the_tried_ones() -> None:
    """A retry's panic pick takes an ejected endpoint it has not tried while one is
    usable, a tried one when none is."""
    eb, eps = _all_ejected()
    tried = set(eps[:_N - 1])
    got = eb.pick(None, tried)
    assert got is not None and got[0] is eps[-1]
    got = eb.pick(None, set(eps))
    assert got is not None and got[0] in tried | {eps[-1]}


def test_a_panic_pick_skips_failing_ones_cheaply() -> None:
    """Every ejected connection FAILING: ``None`` without a walk of them; one recovering
    (IDLE) is found at once."""
    eb, eps = _all_ejected()
    for ep in eps:
        ep.state = FAILING
    take_reads(eps)
    for _ in range(100):
        assert eb.pick() is None
    assert take_reads(eps) <= 400, "a failing panic pick walked the ejected endpoints"
    eps[7].state = IDLE
    got = eb.pick()
    assert got is not None and got[0] is eps[7]


class _CountingSet(set[Endpoint]):
    """A set that counts its membership tests."""

    tests = 0

    def __contains__(self, ep: object) -> bool:
        _CountingSet.tests += 1
        return super().__contains__(ep)


def test_a_retrys_panic_pick_tests_a_few_for_exclusion() -> None:
    """A retry (one endpoint tried) among many ejected: a few membership tests a pick,
    not one per ejected endpoint."""
    eb, eps = _all_ejected()
    tried = _CountingSet({eps[0]})
    _CountingSet.tests = 0
    for _ in range(100):
        got = eb.pick(None, tried)
        assert got is not None and got[0] is not eps[0]
    assert _CountingSet.tests <= 400, f"{_CountingSet.tests} exclusion tests for 100 picks"
