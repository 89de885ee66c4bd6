"""The outlier detector's probe of an ejected endpoint is a real call, but its latency
went nowhere: P2C took the endpoint back as a newcomer estimated at its peers' mean, so
one that came back slow (its probe took 500 ms beside peers at 10 ms) drew its full
share at once. Finagle and Linkerd send the probe through the balancer's per-node
latency metric (their failure accrual sits below it), so the probe is a sample there.
Decided: the estimate from before the ejection stays dropped (hunt43), and the probe's
latency, measured after the endpoint recovered, is its first sample (an optional
``observe`` of the inner balancer; ZoneAwareBalancer passes it to the zone group)."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import (
    P2C,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    P2COptions,
    ZoneAwareBalancer,
)
from meshkit.discovery import Instance

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _ep(i: int, zone: str = "a") -> Endpoint:
    ep = Endpoint(Instance(service="svc", instance_id=f"{zone}{i:02d}", host="127.0.0.1",
                           port=40000 + i, meta={"zone": zone}))
    ep.state = EndpointState.READY
    return ep


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _eject_and_probe(eb: EjectingBalancer, clock: _Clock, eps: list[Endpoint],
                     probe_code: grpc.StatusCode, probe_latency_s: float) -> None:
    """Warm every endpoint at 10 ms, eject eps[0], then answer its probe."""
    for _ in range(400):
        clock.t += 0.001
        got = eb.pick()
        assert got is not None
        got[1](_OK, 0.010)
    for _ in range(400):
        if eb.ejected():
            break
        got = eb.pick()
        assert got is not None
        got[1](_UNAVAILABLE if got[0] is eps[0] else _OK, 0.010)
    assert eb.ejected() == [eps[0].key]
    clock.t += 11.0  # its ejection time is up: the next pick probes it
    got = eb.pick()
    assert got is not None and got[0] is eps[0]
    got[1](probe_code, probe_latency_s)


def _p2c(clock: _Clock) -> P2C:
    return P2C(P2COptions(slow_start_s=0.0), rng=random.Random(3), clock=clock)


def _four_under_p2c(clock: _Clock) -> tuple[P2C, EjectingBalancer, list[Endpoint]]:
    """Four READY endpoints of zone ``a`` in a P2C under an EjectingBalancer that ejects
    at the first failure."""
    p2c = _p2c(clock)
    eb = EjectingBalancer(p2c, OutlierOptions(consecutive_failures=1), clock=clock)
    eps = [_ep(i) for i in range(4)]
    eb.update(eps)
    return p2c, eb, eps


def _rtt_ms(p2c: P2C, ep: Endpoint) -> float:
    row = {r["instance_id"]: r for r in p2c.snapshot()}[ep.key]
    return float(row["rtt_ms"])


def test_a_slow_probe_is_the_returning_endpoints_first_sample() -> None:
    """A probe answered OK in 500 ms: back in rotation estimated at 500 ms, not at its
    peers' 10 ms, and it draws few of the next calls."""
    clock = _Clock()
    p2c, eb, eps = _four_under_p2c(clock)
    _eject_and_probe(eb, clock, eps, _OK, 0.5)
    assert not eb.ejected()
    assert _rtt_ms(p2c, eps[0]) >= 400.0, p2c.snapshot()
    got = 0
    for _ in range(300):
        clock.t += 0.001
        picked = eb.pick()
        assert picked is not None
        got += picked[0] is eps[0]
        picked[1](_OK, 0.5 if picked[0] is eps[0] else 0.010)
    assert got < 30, f"the slow returner took {got} of 300 calls"


def test_a_failed_probe_feeds_nothing() -> None:
    """A probe that fails keeps the endpoint out; P2C never sees it."""
    clock = _Clock()
    p2c, eb, eps = _four_under_p2c(clock)
    _eject_and_probe(eb, clock, eps, _UNAVAILABLE, 0.5)
    assert eb.ejected() == [eps[0].key]
    assert eps[0].key not in {r["instance_id"] for r in p2c.snapshot()}
    assert all(r["pending"] == 0 for r in p2c.snapshot())


def test_the_probe_sample_reaches_the_zone_group() -> None:
    """Under ZoneAwareBalancer, the probe's latency reaches the P2C of its zone group,
    and nothing stays pending there."""
    clock = _Clock()
    local: list[P2C] = []

    def inner() -> P2C:
        local.append(_p2c(clock))
        return local[-1]

    zb = ZoneAwareBalancer("a", inner, rng=random.Random(1))
    eb = EjectingBalancer(zb, OutlierOptions(consecutive_failures=1), clock=clock)
    eps = [_ep(i) for i in range(4)] + [_ep(i, "b") for i in range(4)]
    eb.update(eps)
    _eject_and_probe(eb, clock, eps, _OK, 0.5)
    assert _rtt_ms(local[0], eps[0]) >= 400.0, local[0].snapshot()
    assert all(r["pending"] == 0 for r in local[0].snapshot())
