"""The failure-rate rule of outlier ejection counts the calls of one interval only, as gRFC
A50's failure-percentage ejection and Envoy's do (their call counters are evaluated and
reset every ``interval``): failures long past do not join a later call's window."""

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
    e = Endpoint(Instance(service="svc", instance_id=key, host="127.0.0.1",
                          port=1000 + ord(key[0])))
    e.state = EndpointState.READY
    return e


def _balancer(clock: Clock, **opts: Any) -> EjectingBalancer:
    """The rate rule alone (50 % of a 4-call window; no run of failures ejects), over
    round robin across ``a``, ``b``, ``c``, 10 s ejections, no percentage cap."""
    o: dict[str, Any] = {"consecutive_failures": 1000, "failure_rate": 0.5,
                         "failure_rate_window": 4, "base_ejection_s": 10.0,
                         "max_ejection_percent": 100, **opts}
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(**o), clock=clock)
    eb.update([_ep("a"), _ep("b"), _ep("c")])
    return eb


def _on(eb: EjectingBalancer, key: str, code: grpc.StatusCode) -> None:
    """One call on ``key`` ending with ``code`` (the calls picked on the way succeed)."""
    for _ in range(10):
        got = eb.pick()
        assert got is not None
        if got[0].key == key:
            got[1](code, 0.001)
            return
        got[1](OK, 0.001)
    raise AssertionError(f"{key} never picked")


def test_failures_of_a_past_interval_do_not_fill_a_later_window() -> None:
    """Three failures an hour ago and one success and one failure now eject nothing:
    this interval saw two calls, fewer than the window's four."""
    clock = Clock()
    eb = _balancer(clock)
    for _ in range(3):
        _on(eb, "a", UNAVAILABLE)
    assert eb.ejected() == []
    clock.t += 3600.0
    _on(eb, "a", OK)
    _on(eb, "a", UNAVAILABLE)
    assert eb.ejected() == []


def test_a_failure_rate_within_one_interval_ejects() -> None:
    """Two failures in four calls within one interval reach the 50 % rate and eject."""
    clock = Clock()
    eb = _balancer(clock)
    for code in (UNAVAILABLE, OK, OK):
        _on(eb, "a", code)
        clock.t += 1.0
    _on(eb, "a", UNAVAILABLE)
    assert eb.ejected() == ["a"]


def test_the_window_starts_afresh_each_interval() -> None:
    """Calls of the interval before the last are dropped at the next outcome: a window
    of 1 failure then 3 successes an interval later, then 2 failures, ejects only once
    the interval's own calls reach the rate."""
    clock = Clock()
    eb = _balancer(clock)
    for code in (UNAVAILABLE, UNAVAILABLE, UNAVAILABLE):
        _on(eb, "a", code)
    clock.t += 10.5  # a new interval: the three failures are no longer counted
    for code in (OK, OK, OK):
        _on(eb, "a", code)
    assert eb.ejected() == []
    _on(eb, "a", UNAVAILABLE)  # 1 of 4 in this interval
    assert eb.ejected() == []
    _on(eb, "a", UNAVAILABLE)  # 2 of the last 4
    assert eb.ejected() == ["a"]
