"""An ejection storm costs work per ejection, not per endpoint: EjectingBalancer hands
the inner balancer the one endpoint that left or came back (its optional ``remove`` /
``restore``) instead of the whole list in rotation (``update``), and keeps its own
schedule over the ejected endpoints only; the inner balancer's picks stay those of full
updates."""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Callable, Collection, Sequence
from types import FrameType
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.balancer import (
    P2C,
    Balancer,
    Done,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    P2COptions,
    RingHash,
    RoundRobin,
    WeightedRoundRobin,
    ZoneAwareBalancer,
)
from meshkit.discovery import Instance

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_OK = grpc.StatusCode.OK


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _endpoints(n: int) -> list[Endpoint]:
    eps = []
    for i in range(n):
        ep = Endpoint(Instance(service="s", instance_id=f"i{i}", host="10.0.0.1",
                               port=1000 + i, meta={"zone": "a" if i % 2 else "b"}))
        ep.state = EndpointState.READY
        eps.append(ep)
    return eps


class _FullOnly:
    """A balancer seen only through update/pick (and the older optional hooks): what
    EjectingBalancer did for every balancer before (a full update per change)."""

    def __init__(self, inner: Balancer) -> None:
        self.inner = inner
        self.handed = 0  # endpoints handed over by update

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self.handed += len(endpoints)
        self.inner.update(endpoints)

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        return self.inner.pick(key, exclude)

    def census(self, endpoints: Sequence[Endpoint]) -> None:
        hook = getattr(self.inner, "census", None)
        if hook is not None:
            hook(endpoints)

    def observe(self, ep: Endpoint, code: grpc.StatusCode, latency_s: float) -> None:
        hook = getattr(self.inner, "observe", None)
        if hook is not None:
            hook(ep, code, latency_s)


class _Counting(_FullOnly):
    """The same, with the inner balancer's remove/restore passed on where it has them."""

    def __init__(self, inner: Balancer) -> None:
        super().__init__(inner)
        self.hooked = 0
        if hasattr(inner, "remove"):
            self.remove = self._remove
            self.restore = self._restore

    def _remove(self, ep: Endpoint) -> None:
        self.hooked += 1
        self.inner.remove(ep)  # type: ignore[attr-defined]

    def _restore(self, ep: Endpoint, at: int) -> None:
        self.hooked += 1
        self.inner.restore(ep, at)  # type: ignore[attr-defined]


def _lines_in_balancer(fn: Callable[[], None]) -> int:
    """Python lines run in meshkit/balancer/ by ``fn`` (loop iterations included: a line
    event at every backward jump): work counted, not timed."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if "meshkit/balancer/" not in frame.f_code.co_filename:
            return None

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal count
            if event == "line":
                count += 1
            return local

        return local

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return count


INNERS: dict[str, Callable[[_Clock], Balancer]] = {
    "p2c": lambda clock: P2C(rng=random.Random(1), clock=clock),
    "round_robin": lambda clock: RoundRobin(random.Random(1)),
    "round_robin_slow_start": lambda clock: RoundRobin(random.Random(1), slow_start_s=5.0,
                                                       clock=clock),
    # (no slow start: a full update of the zone's balancer remade the slow-start summary
    # of both groups' P2C, which P2C keeps a while otherwise, P2C._ramps: the picks of a
    # newcomer part by that, not by the endpoints in rotation)
    "zone_p2c": lambda clock: ZoneAwareBalancer(
        "a", functools.partial(P2C, P2COptions(slow_start_s=0.0), rng=random.Random(1),
                               clock=clock),
        rng=random.Random(1)),
    "zone_round_robin": lambda clock: ZoneAwareBalancer(
        "a", functools.partial(RoundRobin, random.Random(1)), rng=random.Random(1)),
}


def _storm_work(make: Callable[[_Clock], Balancer], n: int, k: int) -> tuple[int, int, int, int]:
    """Eject ``k`` of ``n`` endpoints one by one, then bring them back one by one (each by
    its probe): the lines run for each half, and the endpoints handed to the inner
    balancer's update meanwhile."""
    clock = _Clock()
    inner = _Counting(make(clock))
    eb = EjectingBalancer(inner, OutlierOptions(consecutive_failures=1,
                                                max_ejection_percent=100), clock=clock)
    eps = _endpoints(n)
    eb.update(eps)
    inner.handed = 0
    victims = eps[1:n:n // k][:k]

    def eject() -> None:
        for ep in victims:
            got = eb.pick()
            assert got is not None
            # a failure of `ep` (as a pick of it would report)
            eb._record(ep, eb._health[ep.key], _UNAVAILABLE)

    ejecting = _lines_in_balancer(eject)
    assert sorted(eb.ejected()) == sorted(ep.key for ep in victims)
    handed_ejecting = inner.handed
    clock.now += 100.0  # (the ejections are over; within P2C's horizon, _HORIZON)

    def restore() -> None:
        for _ in victims:
            got = eb.pick()
            assert got is not None
            got[1](_OK, 0.01)

    returning = _lines_in_balancer(restore)
    assert eb.ejected() == []
    return ejecting, returning, handed_ejecting, inner.handed - handed_ejecting


@pytest.mark.parametrize("name", list(INNERS), ids=list(INNERS))
def test_an_ejection_storm_costs_no_work_per_endpoint_in_rotation(name: str) -> None:
    """Ejecting 16 endpoints one by one (and bringing them back) among 1,600 costs about
    what it does among 200: the inner balancer is handed the endpoint that moved, not the
    list in rotation (O(n) a change: 5-8 ms at 4,000 endpoints, seconds of stall in a
    storm of 2,000 ejections)."""
    k = 16
    small = _storm_work(INNERS[name], 200, k)
    large = _storm_work(INNERS[name], 1600, k)
    assert large[2] == 0 and large[3] == 0, large  # no full update
    # 8x the endpoints: within 1.5x the work (O(n) a change would be about 8x)
    assert large[0] < small[0] * 1.5 + 200, (small, large)
    assert large[1] < small[1] * 1.5 + 200, (small, large)


# ---- the picks are those of full updates --------------------------------------------

_OPS = st.lists(
    st.tuples(st.sampled_from(["eject", "eject", "probe", "probe", "fail", "ok", "pick",
                               "tick", "state", "update", "restart"]),
              st.integers(0, 11), st.integers(0, 2)),
    min_size=1, max_size=60)


def _twins(name: str) -> tuple[list[tuple[EjectingBalancer, Balancer]], list[Endpoint]]:
    eps = _endpoints(12)
    out = []
    for wrap in (_Counting, _FullOnly):
        clock = _Clock()
        inner = wrap(INNERS[name](clock))
        eb = EjectingBalancer(inner, OutlierOptions(consecutive_failures=2,
                                                    max_ejection_percent=60,
                                                    base_ejection_s=1.0), clock=clock)
        out.append((eb, inner))
    return out, eps


@pytest.mark.parametrize("name", list(INNERS), ids=list(INNERS))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_incremental_changes_pick_as_full_updates(name: str,
                                                  ops: list[tuple[str, int, int]]) -> None:
    """After any sequence of failures, successes (probes that bring endpoints back),
    picks, clock ticks, state changes and list updates, a balancer told of each
    ejection and return one endpoint at a time picks exactly as one given the whole
    list in rotation each time: the same endpoints, in the same order."""
    ((inc, inc_inner), (full, full_inner)), _ = _twins(name)
    clocks = [inc._clock, full._clock]
    eps = _endpoints(12)
    listed = list(eps)
    for eb in (inc, full):
        eb.update(listed)
    outstanding: list[list[tuple[Endpoint, Done]]] = [[], []]
    for op, i, j in ops:
        if op == "tick":
            for c in clocks:
                c.now += 0.4 * (j + 1)  # type: ignore[attr-defined]
        elif op == "state":
            eps[i].state = (EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING)[j]
        elif op == "update":
            listed = [ep for k, ep in enumerate(eps) if (k + i) % (j + 2)] or [eps[i]]
            for eb in (inc, full):
                eb.update(listed)
        elif op == "restart":
            listed = list(eps)
            for eb in (inc, full):
                eb.update(listed)
        elif op == "eject":  # consecutive_failures of endpoint i (as its picks report)
            for eb in (inc, full):
                h = eb._health.get(eps[i].key)
                if h is not None:
                    for _ in range(2):
                        eb._record(eps[i], h, _UNAVAILABLE)
        elif op == "probe":  # the next ejection ends; its probe answers (OK, or fails)
            due = inc.next_probe_in_s()
            assert due == full.next_probe_in_s()
            if due is not None:
                for c in clocks:
                    c.now += due + 0.001  # type: ignore[attr-defined]
                got = [eb.pick() for eb in (inc, full)]
                assert [g and g[0].key for g in got] == [g and g[0].key for g in got[::-1]]
                for g in got:  # (j 1: an answer without a latency sample, as a stream's)
                    if g is not None:
                        g[1](_UNAVAILABLE if j == 2 else _OK, -1.0 if j == 1 else 0.01 * (i + 1))
        elif op in ("fail", "ok"):
            code = _UNAVAILABLE if op == "fail" else _OK
            for side in (0, 1):
                if outstanding[side]:
                    # the latest pick (a probe, after a tick) or another one
                    _, done = outstanding[side].pop(-1 if j == 0 else
                                                    i % len(outstanding[side]))
                    done(code, 0.01 * (j + 1))
        for eb in (inc, full):
            assert eb.inner is not None  # (the reference's list, updated at a pick, now)
        loads = [_loads(b) for b in (inc_inner, full_inner)]
        assert loads[0].keys() == loads[1].keys()
        for key, load in loads[1].items():
            assert loads[0][key] == pytest.approx(load, rel=1e-9, abs=1e-12), key
        got = [eb.pick() for eb in (inc, full)]
        picked = [g[0].key if g is not None else None for g in got]
        if picked[0] != picked[1]:
            # P2C's running mean of the sampled estimates (the prior of an endpoint with
            # none) is the same mean summed from another origin: two loads equal but for
            # rounding may compare either way (and the runs part there)
            a, b = picked
            assert a is not None and b is not None, (op, i, j, picked)
            assert loads[1][a] == pytest.approx(loads[1][b], rel=1e-9), (op, i, j, picked)
            return
        for side, g in enumerate(got):
            if g is not None:
                outstanding[side].append(g)
        assert inc.ejected() == full.ejected()
        assert _rotation(inc_inner) == _rotation(full_inner)
    assert full_inner.handed >= 0  # type: ignore[attr-defined]


def _loads(b: Balancer) -> dict[str, float]:
    """Every P2C's load of each endpoint in its rotation (a copy of what a pick reads)."""
    inner = b.inner  # type: ignore[attr-defined]
    p2cs = ([inner.local, inner.other] if isinstance(inner, ZoneAwareBalancer)
            else [inner])
    out: dict[str, float] = {}
    for p in p2cs:
        if isinstance(p, P2C):
            for ep in p._eps:
                out[ep.key] = p.load(ep)
    return out


def _rotation(b: Balancer) -> object:
    """The endpoints in rotation as the inner balancer holds them (in order)."""
    inner = b.inner  # type: ignore[attr-defined]
    if isinstance(inner, ZoneAwareBalancer):
        return (_rotation(_FullOnlyView(inner.local)), _rotation(_FullOnlyView(inner.other)),
                inner._local_out, [ep.key for ep in inner._local_eps])
    if isinstance(inner, P2C):
        return [ep.key for ep in inner._eps], sorted(inner._stats)
    if isinstance(inner, RoundRobin):
        ramp = inner._ramp
        return ([ep.key for ep in inner._endpoints], inner._next,
                None if ramp is None else sorted(ramp.ramping))
    raise AssertionError(inner)


class _FullOnlyView:
    def __init__(self, inner: Balancer) -> None:
        self.inner = inner


@pytest.mark.parametrize("sampled_back", [False, True], ids=["no_sample_yet", "sampled"])
def test_p2c_restore_beside_sampled_peers_estimates_at_their_mean(sampled_back: bool) -> None:
    """An endpoint P2C gets back (restore) while every other one has a latency sample is
    estimated, until its own first sample, at their mean (as after a full update), and
    its first sample then moves nothing else: the running mean it needs is made at the
    first read (O(n) once), not at the restore."""
    clock = _Clock()
    eps = _endpoints(4)
    inc, full = P2C(rng=random.Random(1), clock=clock), P2C(rng=random.Random(1), clock=clock)
    for p in (inc, full):
        p.update(eps)
        for k, ep in enumerate(eps):
            p.observe(ep, _OK, 0.01 * (k + 1))  # every endpoint sampled
    clock.now += 3.0
    inc.remove(eps[2])
    full.update([eps[0], eps[1], eps[3]])
    clock.now += 1.0
    inc.restore(eps[2], 2)
    full.update(eps)
    if sampled_back:
        for p in (inc, full):
            p.observe(eps[2], _OK, 0.05)
    clock.now += 1.0
    peers = [(0.01 * (k + 1)) * 2.718281828459045 ** (-5.0 / 10.0) for k in (0, 1, 3)]
    expected = 0.05 * 2.718281828459045 ** (-1.0 / 10.0) if sampled_back else sum(peers) / 3
    for ep in eps:
        assert inc.load(ep) == pytest.approx(full.load(ep), rel=1e-9), ep.key
    assert inc.load(eps[2]) == pytest.approx(expected, rel=1e-9)
    assert [ep.key for ep in inc._eps] == [ep.key for ep in eps]


BATCHED: dict[str, Callable[[_Clock], Balancer]] = {
    "weighted_round_robin": lambda clock: WeightedRoundRobin(random.Random(1)),
    "ring_hash": lambda clock: RingHash(rng=random.Random(1)),
}


def _batched_storm(make: Callable[[_Clock], Balancer], n: int,
                   k: int) -> tuple[int, int, int]:
    """Eject ``k`` of ``n`` endpoints one by one, then pick once: the lines run by the
    ejections, the endpoints handed to the inner balancer's update by them, and by the
    pick."""
    clock = _Clock()
    inner = _Counting(make(clock))
    eb = EjectingBalancer(inner, OutlierOptions(consecutive_failures=1,
                                                max_ejection_percent=100), clock=clock)
    eps = _endpoints(n)
    eb.update(eps)
    inner.handed = 0
    victims = eps[1:n:n // k][:k]

    def eject() -> None:
        for ep in victims:
            eb._record(ep, eb._health[ep.key], _UNAVAILABLE)

    lines = _lines_in_balancer(eject)
    by_ejections = inner.handed
    for _ in range(50):
        got = eb.pick("some-key")
        assert got is not None and got[0] not in victims
    return lines, by_ejections, inner.handed - by_ejections


@pytest.mark.parametrize("name", list(BATCHED), ids=list(BATCHED))
def test_an_ejection_storm_between_picks_costs_one_update(name: str) -> None:
    """An inner balancer without remove/restore (its schedule or ring is remade whole)
    gets one update at the next pick for all the ejections since the last one, not one
    each: 16 ejections among 1,600 endpoints cost about what they do among 200, and the
    picks after see none of the ejected endpoints."""
    k = 16
    small = _batched_storm(BATCHED[name], 200, k)
    large = _batched_storm(BATCHED[name], 1600, k)
    assert large[1] == 0, large
    assert large[2] == 1600 - k, large  # one update, at the first pick
    assert large[0] < small[0] * 1.5 + 200, (small, large)


class _Checked(_FullOnly):
    """Checks at each pick that the list it was last given is the list in rotation."""

    eb: EjectingBalancer

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        super().update(endpoints)
        self.listed = [ep.key for ep in endpoints]

    def pick(self, key: str | None = None,
             exclude: Collection[Endpoint] = ()) -> tuple[Endpoint, Done] | None:
        out = set(self.eb.ejected())
        assert self.listed == [ep.key for ep in self.eb._all if ep.key not in out]
        return super().pick(key, exclude)


@pytest.mark.parametrize("name", list(BATCHED), ids=list(BATCHED))
@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_batched_updates_leave_no_ejected_endpoint_in_a_pick(
        name: str, ops: list[tuple[str, int, int]]) -> None:
    """After any sequence of ejections, probes, outcomes, ticks, state changes and list
    updates, every pick of an inner balancer updated at the next pick sees exactly the
    endpoints in rotation."""
    clock = _Clock()
    inner = _Checked(BATCHED[name](clock))
    eb = EjectingBalancer(inner, OutlierOptions(consecutive_failures=2,
                                                max_ejection_percent=60,
                                                base_ejection_s=1.0), clock=clock)
    inner.eb = eb
    eps = _endpoints(12)
    eb.update(eps)
    outstanding: list[tuple[Endpoint, Done]] = []
    for op, i, j in ops:
        if op == "tick":
            clock.now += 0.4 * (j + 1)
        elif op == "state":
            eps[i].state = (EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING)[j]
        elif op == "update":
            eb.update([ep for k, ep in enumerate(eps) if (k + i) % (j + 2)] or [eps[i]])
        elif op == "restart":
            eb.update(eps)
        elif op == "eject":
            h = eb._health.get(eps[i].key)
            if h is not None:
                for _ in range(2):
                    eb._record(eps[i], h, _UNAVAILABLE)
        elif op == "probe":
            due = eb.next_probe_in_s()
            if due is not None:
                clock.now += due + 0.001
                got = eb.pick(f"k{i}")
                if got is not None:
                    got[1](_UNAVAILABLE if j == 2 else _OK, 0.01)
        elif op in ("fail", "ok") and outstanding:
            _, done = outstanding.pop(-1 if j == 0 else i % len(outstanding))
            done(_UNAVAILABLE if op == "fail" else _OK, 0.01)
        got = eb.pick(f"k{i}")
        if got is not None:
            h = eb._health[got[0].key]  # in rotation, else its probe (or panic routing)
            assert h.ejected_until is None or h.probing or eb.panic_picks
            outstanding.append(got)
