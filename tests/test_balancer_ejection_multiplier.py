"""The ejection multiplier of outlier ejection, as Envoy's outlier detection and gRFC A50
define it: each ejection lasts ``base_ejection_s`` times the number of times the endpoint
was ejected, and that number goes down by one per ``base_ejection_s`` (Envoy's and A50's
``interval``, 10 s by default as ``base_ejection_time``) the endpoint spends in rotation,
not back to zero at the first call it answers. Envoy: "This causes hosts to get ejected
for longer and longer periods if they continue to fail. [...] If the host is healthy
during that check, the ejection time multiplier is decremented." A50: "for each address
[...] if the address is not ejected and the multiplier is greater than 0, decrement the
multiplier"."""

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
    """Ejection over round robin across ``a``, ``b``, ``c``: one failure ejects, 10 s
    a time, no percentage cap."""
    o: dict[str, Any] = {"consecutive_failures": 1, "base_ejection_s": 10.0,
                         "max_ejection_percent": 100, **opts}
    eb = EjectingBalancer(RoundRobin(random.Random(0)), OutlierOptions(**o), clock=clock)
    eb.update([_ep("a"), _ep("b"), _ep("c")])
    return eb


def _call(eb: EjectingBalancer, fail: str = "") -> str:
    got = eb.pick()
    assert got is not None
    got[1](UNAVAILABLE if got[0].key == fail else OK, 0.001)
    return got[0].key


def _eject_a(eb: EjectingBalancer) -> None:
    for _ in range(10):
        _call(eb, fail="a")
        if eb.ejected() == ["a"]:
            return
    raise AssertionError("a not ejected")


def _probe_a_ok(eb: EjectingBalancer) -> None:
    assert _call(eb) == "a"  # the probe, which succeeds: back in rotation
    assert eb.ejected() == []


def _ejected_for(eb: EjectingBalancer, clock: Clock) -> float:
    """How long ``a`` (just ejected) stays out: seconds until a pick probes it."""
    start = clock.t
    for _ in range(400):
        clock.t += 1.0
        if _call(eb) == "a":
            return clock.t - start
    raise AssertionError("a never probed")


def test_an_endpoint_that_fails_again_right_after_its_probe_is_ejected_for_longer() -> None:
    """Ejected, back by a successful probe, failing again at once: the second ejection
    lasts 2 x base_ejection_s, the third 3 x (the probe's one success does not forgive
    it; it did with the count reset to 0 at the probe, every relapse 10 s)."""
    clock = Clock()
    eb = _balancer(clock)
    _eject_a(eb)
    assert _ejected_for(eb, clock) == 10.0
    assert eb.ejected() == []  # the probe succeeded
    _eject_a(eb)  # relapses at once
    assert _ejected_for(eb, clock) == 20.0
    _eject_a(eb)
    assert _ejected_for(eb, clock) == 30.0


def test_the_multiplier_goes_down_by_one_per_base_ejection_s_in_rotation() -> None:
    """Ejected three times in a row (multiplier 3), then 10 s in rotation (3 -> 2): the
    next ejection is the third again, 30 s (not 40 s); after 30 s in rotation (3 -> 0)
    the next one is the first again, 10 s."""
    clock = Clock()
    eb = _balancer(clock)
    for expected in (10.0, 20.0, 30.0):
        _eject_a(eb)
        assert _ejected_for(eb, clock) == expected
    clock.t += 10.0
    _eject_a(eb)
    assert _ejected_for(eb, clock) == 30.0
    clock.t += 30.0
    _eject_a(eb)
    assert _ejected_for(eb, clock) == 10.0


def test_the_multiplier_stops_growing_at_max_ejection_s() -> None:
    """Envoy: "When ejected host reaches max_ejection_time, it does not increase any
    more", so the way down starts from there: ejected many times in a row with
    max_ejection_s 30 (each 30 s at most), then 10 s in rotation, the next ejection is
    30 s (the multiplier 3, capped, minus one, plus one), and after 30 s more, 10 s."""
    clock = Clock()
    eb = _balancer(clock, max_ejection_s=30.0)
    for expected in (10.0, 20.0, 30.0, 30.0, 30.0, 30.0):
        _eject_a(eb)
        assert _ejected_for(eb, clock) == expected
    clock.t += 10.0
    _eject_a(eb)
    assert _ejected_for(eb, clock) == 30.0
    clock.t += 30.0
    _eject_a(eb)
    assert _ejected_for(eb, clock) == 10.0
