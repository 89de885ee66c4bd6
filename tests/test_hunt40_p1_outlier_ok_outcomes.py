"""The outcome callback of an ejecting balancer's unary pick records an ``OK`` inline
(without ``_record``'s frame) only while an ``OK`` is no failure and no failure-rate
window is kept: with ``OK`` among ``failure_codes`` a run of ``OK`` outcomes still ejects,
and without it an ``OK`` still ends a run of failures."""

from __future__ import annotations

import random
from typing import Any

import grpc

from meshkit.balancer import EjectingBalancer, Endpoint, EndpointState, OutlierOptions, RoundRobin
from meshkit.discovery import Instance

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def _ep(key: str) -> Endpoint:
    e = Endpoint(
        Instance(service="svc", instance_id=key, host="127.0.0.1", port=1000 + ord(key[0]))
    )
    e.state = EndpointState.READY
    return e


def _balancer(**opts: Any) -> EjectingBalancer:
    """Three consecutive failures eject (no rate rule), round robin over ``a``, ``b``,
    ``c``, no percentage cap."""
    o: dict[str, Any] = {
        "consecutive_failures": 3,
        "base_ejection_s": 10.0,
        "max_ejection_percent": 100,
        **opts,
    }
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(**o), clock=Clock())
    eb.update([_ep("a"), _ep("b"), _ep("c")])
    return eb


def _on(eb: EjectingBalancer, key: str, code: grpc.StatusCode, other: grpc.StatusCode) -> None:
    """One call on ``key`` ending with ``code`` (the calls picked on the way end ``other``)."""
    for _ in range(10):
        got = eb.pick()
        assert got is not None
        if got[0].key == key:
            got[1](code, 0.001)
            return
        got[1](other, 0.001)
    raise AssertionError(f"{key} never picked")


def test_ok_among_failure_codes_ejects_after_a_run_of_oks() -> None:
    """``failure_codes`` holding ``OK`` (an application whose OK answers mean a broken
    endpoint): three ``OK`` outcomes in a row through pick's callback eject it."""
    eb = _balancer(failure_codes={OK, UNAVAILABLE})
    for _ in range(3):
        _on(eb, "a", OK, grpc.StatusCode.NOT_FOUND)
    assert eb.ejected() == ["a"]


def test_an_ok_ends_a_run_of_failures() -> None:
    """Without ``OK`` among the failure codes, an ``OK`` between failures resets the run:
    two failures, an ``OK``, two failures eject nothing; a third in a row does."""
    eb = _balancer()
    for code in (UNAVAILABLE, UNAVAILABLE, OK, UNAVAILABLE, UNAVAILABLE):
        _on(eb, "a", code, OK)
    assert eb.ejected() == []
    _on(eb, "a", UNAVAILABLE, OK)
    assert eb.ejected() == ["a"]
