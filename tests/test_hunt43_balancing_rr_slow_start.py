"""RoundRobin and WeightedRoundRobin had no slow start, where P2C has one: an endpoint
added after the first answer (a scale-out, one back from an ejection) took a full share
of calls at once. Envoy applies ``slow_start_config`` to ``round_robin`` as to
``least_request``. Both now take ``slow_start_s`` / ``slow_start_min_weight`` with P2C's
meaning: a newcomer's weight grows from the minimum to 1 over ``slow_start_s`` from its
first READY, and its share of picks is its weight over the sum of weights (Envoy's
normalised weights); endpoints of the first answer never ramp."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from meshkit.balancer import (
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    RoundRobin,
    WeightedRoundRobin,
)
from meshkit.discovery import Instance
from meshkit.errors import ConfigError

_READY = EndpointState.READY


def _ep(i: int) -> Endpoint:
    ep = Endpoint(Instance(service="svc", instance_id=f"i{i:03d}", host="127.0.0.1",
                           port=40000 + i))
    ep.state = _READY
    return ep


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


Make = Callable[[_Clock], "RoundRobin | WeightedRoundRobin"]
_MAKERS: list[Make] = [
    lambda c: RoundRobin(random.Random(1), slow_start_s=5.0, clock=c),
    lambda c: WeightedRoundRobin(random.Random(1), slow_start_s=5.0, clock=c),
]
_IDS = ["rr", "wrr"]


def _share(b: RoundRobin | WeightedRoundRobin, group: set[int], picks: int) -> float:
    got = 0
    for _ in range(picks):
        picked = b.pick()
        assert picked is not None
        got += id(picked[0]) in group
    return got / picks


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_newcomers_ramp_up(make: Make) -> None:
    clock = _Clock()
    b = make(clock)
    warm = [_ep(i) for i in range(10)]
    b.update(warm)  # the first answer, READY: no ramp
    assert _share(b, {id(e) for e in warm[:5]}, 1000) == pytest.approx(0.5, abs=0.02)
    clock.t += 60
    new = [_ep(i) for i in range(10, 20)]
    b.update(warm + new)
    group = {id(e) for e in new}
    early = _share(b, group, 2000)  # weight 0.1: about 10 * 0.1 / 11 = 9 %
    assert 0.02 < early < 0.2, f"newcomers took {early:.0%} at the ramp's start"
    clock.t += 2.5  # weight 0.5: about 5 / 15 = 33 %
    mid = _share(b, group, 2000)
    assert early < mid < 0.45, f"newcomers took {mid:.0%} half-way"
    clock.t += 3.0  # over: an even share
    late = _share(b, group, 2000)
    assert late == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_a_newcomer_ramps_from_its_first_ready(make: Make) -> None:
    clock = _Clock()
    b = make(clock)
    warm = [_ep(i) for i in range(4)]
    b.update(warm)
    clock.t += 60
    late = _ep(4)
    late.state = EndpointState.IDLE
    b.update([*warm, late])
    clock.t += 30  # connecting for longer than the ramp
    late.state = _READY
    share = _share(b, {id(late)}, 2000)  # fair: 20 %; weight 0.1: about 2.4 %
    assert share < 0.08, f"a late-connecting newcomer took {share:.0%} at once"


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_the_first_answer_in_batches_does_not_ramp(make: Make) -> None:
    clock = _Clock()
    b = make(clock)
    eps = [_ep(i) for i in range(20)]
    b.cold_start(True)
    b.update(eps[:10])  # READY before the next batch: still the first answer
    clock.t += 0.01
    b.update(eps)
    b.cold_start(False)
    assert _share(b, {id(e) for e in eps[10:]}, 2000) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("make", _MAKERS, ids=_IDS)
def test_an_endpoint_back_from_ejection_ramps(make: Make) -> None:
    clock = _Clock()
    inner = make(clock)
    eb = EjectingBalancer(inner, OutlierOptions(consecutive_failures=1), clock=clock)
    eps = [_ep(i) for i in range(10)]
    eb.update(eps)
    clock.t += 60
    inner.update(eps[1:])  # as the ejection of i000 does
    clock.t += 20
    inner.update(eps)  # back
    share = _share(inner, {id(eps[0])}, 2000)  # fair: 10 %; weight 0.1: about 1 %
    assert share < 0.05, f"an endpoint back from ejection took {share:.0%} at once"


def test_off_by_default_and_checked() -> None:
    clock = _Clock()
    rr = RoundRobin(random.Random(1), clock=clock)
    warm = [_ep(i) for i in range(5)]
    rr.update(warm)
    clock.t += 60
    new = _ep(5)
    rr.update([*warm, new])
    assert _share(rr, {id(new)}, 600) == pytest.approx(1 / 6, abs=0.01)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="slow_start_s"):
            RoundRobin(slow_start_s=bad)
        with pytest.raises(ConfigError, match="slow_start_s"):
            WeightedRoundRobin(slow_start_s=bad)
    with pytest.raises(ConfigError, match="slow_start_min_weight"):
        RoundRobin(slow_start_s=1.0, slow_start_min_weight=0.0)


_SLOT = Endpoint.__dict__["_state"]


class _Reads(Endpoint):
    """An endpoint counting the reads of its state slot (the picks read the slot)."""

    __slots__ = ()
    reads = 0

    @property  # type: ignore[override]
    def _state(self) -> EndpointState:
        _Reads.reads += 1
        return _SLOT.__get__(self, Endpoint)  # type: ignore[no-any-return]

    @_state.setter
    def _state(self, value: EndpointState) -> None:
        _SLOT.__set__(self, value)


def test_a_pick_with_few_of_many_ready_stays_cheap_while_one_ramps() -> None:
    """2,000 endpoints, 2 READY, a newcomer that never connects: the ramp's walk is a
    few steps, then the pick finds the next READY one by state (a walk of the whole
    turn read about 1,000 states a pick)."""
    clock = _Clock()
    rr = RoundRobin(random.Random(2), slow_start_s=5.0, clock=clock)
    eps = [_Reads(Instance(service="svc", instance_id=f"i{i:04d}", host="127.0.0.1",
                           port=20000 + i)) for i in range(2000)]
    for ep in eps[500], eps[1500]:
        ep.state = _READY
    rr.update(eps)
    dead = _Reads(Instance(service="svc", instance_id="new", host="127.0.0.1", port=9))
    dead.state = EndpointState.FAILING
    rr.update([*eps, dead])
    _Reads.reads = 0
    for _ in range(100):
        assert rr.pick() is not None
    assert _Reads.reads / 100 < 100, f"{_Reads.reads / 100:.0f} states read a pick"
