"""Outlier ejection beyond ``max_ejection_percent`` (an endpoint failing every call while its
peers in rotation succeed) needs enough calls of those peers to tell: as gRFC A50's
success-rate and failure-percentage ejection only judge with a minimum request volume, a
peer's single successful call is no evidence that the failures are the endpoint's own."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import EjectingBalancer, Endpoint, EndpointState, OutlierOptions, RoundRobin
from meshkit.discovery import Instance

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _ep(key: str) -> Endpoint:
    e = Endpoint(Instance(service="svc", instance_id=key, host="127.0.0.1",
                          port=1000 + ord(key[0])))
    e.state = EndpointState.READY
    return e


def _setup(peer_successes: int) -> tuple[EjectingBalancer, dict[str, Endpoint]]:
    """a, b, c with the default rules (5 in a row, a 20-call window, 50 %: one ejection
    at a time); c is ejected, then b answers ``peer_successes`` calls, then a fails 20
    in a row (a full window and more than 5 in a row)."""
    eps = {k: _ep(k) for k in "abc"}
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(),
                          clock=lambda: 100.0)
    eb.update(list(eps.values()))

    def call(key: str, code: grpc.StatusCode) -> None:
        got = eb.pick(exclude=[e for k, e in eps.items() if k != key])
        assert got is not None and got[0].key == key
        got[1](code, 0.001)

    for _ in range(5):
        call("c", UNAVAILABLE)
    assert eb.ejected() == ["c"]
    for _ in range(peer_successes):
        call("b", OK)
    for _ in range(20):
        call("a", UNAVAILABLE)
    return eb, eps


def test_one_peer_success_does_not_eject_beyond_the_cap() -> None:
    """With c out (the cap), a failing its 20 calls beside b's one successful call stays
    in rotation: one call of b says nothing about how often b fails."""
    eb, _ = _setup(peer_successes=1)
    assert eb.ejected() == ["c"]


def test_a_full_window_of_peer_successes_ejects_beyond_the_cap() -> None:
    """With c out (the cap), a failing its 20 calls beside b's 20 successes is broken
    beside a healthy peer and is ejected beyond the cap (b is left in rotation)."""
    eb, _ = _setup(peer_successes=20)
    assert sorted(eb.ejected()) == ["a", "c"]
