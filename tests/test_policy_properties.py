"""Properties of meshkit's pure policies, checked by Hypothesis over generated inputs: the
balancers (preference between READY, connecting and excluded endpoints, exact weighted
shares, a ring that moves only the keys of the endpoint that came or went, outlier
ejection and P2C driven as state machines), the retry budget against a reference model,
backoff bounds, the method matcher's precedence, URI and address redaction, rate-limit
helpers and host literals.

Each property ran thousands of examples when it was written (five faults were found and
fixed that way: tests/test_balancer_faults.py, tests/resilience/test_ratelimit.py,
tests/discovery/test_etcd.py, tests/test_ipv6.py); here they run a bounded, derandomized
number (the same examples on every run: CI stays deterministic) that keeps the file
within seconds; ``MESHKIT_PROPERTY_SCALE=20`` runs twenty times as many."""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshkit._hosts import bare_host, check_host, is_loopback, is_unspecified, uri_host
from meshkit._metadata import check_metadata
from meshkit._methods import MethodMatcher
from meshkit.balancer import (
    P2C,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    OutlierOptions,
    P2COptions,
    RingHash,
    RoundRobin,
    WeightedRoundRobin,
)
from meshkit.discovery import ConsulOptions, EtcdOptions, Instance
from meshkit.discovery._options import parse_uri, shown_uri, split_address
from meshkit.errors import ConfigError, InvalidMetadataError
from meshkit.resilience import Backoff
from meshkit.resilience._budget import BudgetOptions, RetryBudget
from meshkit.resilience._ratelimit_policy import peer_host, redact_uri, sliding_window_wait_s

READY, IDLE, FAILING = EndpointState.READY, EndpointState.IDLE, EndpointState.FAILING
STATES = [READY, IDLE, FAILING]
OK = grpc.StatusCode.OK

# a deeper run by hand: MESHKIT_PROPERTY_SCALE=20 runs 20 times the examples (derandomized)
_SCALE = max(1, int(os.environ.get("MESHKIT_PROPERTY_SCALE", "1")))


def _settings(examples: int, **more: Any) -> settings:
    """``examples`` derandomized examples (times ``MESHKIT_PROPERTY_SCALE``), no
    per-example deadline (a loaded 2-core box), no example database."""
    return settings(max_examples=examples * _SCALE, deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck), **more)


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ep(key: str, weight: int = 1, state: EndpointState = READY, port: int = 0) -> Endpoint:
    """An endpoint of instance ``key`` (at a port derived from it unless given)."""
    e = Endpoint(Instance(service="svc", instance_id=key, host="127.0.0.1",
                          port=port or 1000 + sum(map(ord, key)), weight=weight))
    e.state = state
    return e


def owners(ring: RingHash, keys: list[str]) -> dict[str, str]:
    """The endpoint (its key) that owns each of ``keys`` on ``ring``."""
    out = {}
    for k in keys:
        got = ring.pick(k)
        assert got is not None
        out[k] = got[0].key
    return out


def take(balancer: Any) -> str:
    """One pick of ``balancer`` (one must be usable): its endpoint's key."""
    got = balancer.pick()
    assert got is not None
    return str(got[0].key)


# -- balancers: preference -------------------------------------------------------------------
@_settings(150)
@given(states=st.lists(st.sampled_from(STATES), min_size=1, max_size=7),
       kind=st.sampled_from(["rr", "wrr", "ring", "p2c"]),
       ex=st.lists(st.integers(0, 6), max_size=7), seed=st.integers(0, 50),
       weights=st.lists(st.integers(1, 4), min_size=7, max_size=7), n=st.integers(1, 20),
       flips=st.lists(st.tuples(st.integers(0, 6), st.sampled_from(STATES)), max_size=10))
def test_every_balancer_prefers_ready_then_connecting_then_excluded(
        states: list[EndpointState], kind: str, ex: list[int], seed: int,
        weights: list[int], n: int, flips: list[tuple[int, EndpointState]]) -> None:
    """Whatever the states (changing between picks) and ``exclude``: never a FAILING
    endpoint, ``None`` only when every endpoint fails, an excluded endpoint only when no
    other is usable, a connecting one only when no READY one is (among those not
    excluded, and among the excluded ones when every usable endpoint is excluded)."""
    rng = random.Random(seed)
    makers: dict[str, Callable[[], Any]] = {
        "rr": lambda: RoundRobin(rng), "wrr": lambda: WeightedRoundRobin(rng),
        "ring": lambda: RingHash(5, rng), "p2c": lambda: P2C(rng=rng, clock=lambda: 5.0)}
    b = makers[kind]()
    eps = [ep(f"i{i}", weights[i], s) for i, s in enumerate(states)]
    b.update(eps)
    for step in range(n):
        if step < len(flips):
            i, s = flips[step]
            eps[i % len(eps)].state = s
        exclude = [eps[i % len(eps)] for i in ex]
        got = b.pick(None, exclude)
        usable = [e for e in eps if e.state is not FAILING]
        if not usable:
            assert got is None
            continue
        assert got is not None, (eps, exclude)
        e, done = got
        assert e in usable
        free = [x for x in usable if x not in exclude]
        if free:
            assert e not in exclude, (kind, e, exclude, eps)
        if any(x.state is READY for x in (free or usable)):
            assert e.state is READY, (kind, e, exclude, eps)
        done(OK, 0.01)


@_settings(100)
@given(states=st.lists(st.sampled_from(STATES), min_size=1, max_size=5),
       kind=st.sampled_from(["rr", "wrr", "ring", "p2c"]), seed=st.integers(0, 50),
       weights=st.lists(st.integers(1, 4), min_size=5, max_size=5), pre=st.integers(0, 8),
       n=st.integers(1, 6))
def test_with_every_endpoint_excluded_a_ready_one_comes_before_a_connecting_one(
        states: list[EndpointState], kind: str, seed: int, weights: list[int], pre: int,
        n: int) -> None:
    """A retry whose ``exclude`` holds every endpoint still takes a READY one while there
    is one (WeightedRoundRobin took a connecting one whose turn was due first)."""
    rng = random.Random(seed)
    makers: dict[str, Callable[[], Any]] = {
        "rr": lambda: RoundRobin(rng), "wrr": lambda: WeightedRoundRobin(rng),
        "ring": lambda: RingHash(5, rng), "p2c": lambda: P2C(rng=rng, clock=lambda: 5.0)}
    b = makers[kind]()
    eps = [ep(f"i{i}", weights[i], s) for i, s in enumerate(states)]
    b.update(eps)
    for _ in range(pre):
        if (got := b.pick()) is not None:
            got[1](OK, 0.01)
    for _ in range(n):
        got = b.pick(None, eps)
        if all(e.state is FAILING for e in eps):
            assert got is None
            continue
        assert got is not None and got[0].state is not FAILING
        if any(e.state is READY for e in eps):
            assert got[0].state is READY, (kind, got[0], eps)
        got[1](OK, 0.01)


# -- balancers: shares -----------------------------------------------------------------------
@_settings(100)
@given(n=st.integers(1, 8), seed=st.integers(0, 100), pre=st.integers(0, 20),
       states=st.lists(st.sampled_from(STATES), min_size=8, max_size=8))
def test_round_robin_gives_every_ready_endpoint_an_equal_share(
        n: int, seed: int, pre: int, states: list[EndpointState]) -> None:
    """Wherever it starts, round robin gives each READY endpoint one pick per round."""
    rr = RoundRobin(random.Random(seed))
    eps = [ep(f"i{i}", 1, states[i]) for i in range(n)]
    rr.update(eps)
    for _ in range(pre):
        rr.pick()
    ready = [e for e in eps if e.state is READY]
    assume(ready)
    shares = Counter(take(rr) for _ in range(len(ready) * 3))
    assert all(shares[e.key] == 3 for e in ready), shares


@_settings(100)
@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6), seed=st.integers(0, 100),
       pre=st.integers(0, 30))
def test_wrr_gives_exactly_the_weights_share_of_each_cycle(
        weights: list[int], seed: int, pre: int) -> None:
    """Any two full cycles, wherever they start, give each endpoint twice its weight."""
    w = WeightedRoundRobin(random.Random(seed))
    eps = [ep(f"i{i}", wt) for i, wt in enumerate(weights)]
    w.update(eps)
    for _ in range(pre):
        w.pick()
    shares = Counter(take(w) for _ in range(sum(weights) * 2))
    assert all(shares[e.key] == 2 * e.instance.weight for e in eps), (shares, weights)


@_settings(100)
@given(weights=st.lists(st.integers(1, 6), min_size=2, max_size=6), seed=st.integers(0, 100),
       pre=st.integers(0, 30), fail=st.integers(0, 5), down=st.integers(1, 40))
def test_wrr_an_endpoint_back_from_failing_gets_no_burst(
        weights: list[int], seed: int, pre: int, fail: int, down: int) -> None:
    """A FAILING endpoint gets no pick; back, it has its share again (within one pick
    over three cycles), not the picks it missed."""
    w = WeightedRoundRobin(random.Random(seed))
    eps = [ep(f"i{i}", wt) for i, wt in enumerate(weights)]
    w.update(eps)
    for _ in range(pre):
        w.pick()
    f = eps[fail % len(eps)]
    f.state = FAILING
    for _ in range(down):
        assert take(w) != f.key
    f.state = READY
    shares = Counter(take(w) for _ in range(sum(weights) * 3))
    for e in eps:
        assert abs(shares[e.key] - 3 * e.instance.weight) <= 1, (shares, weights, f.key)


@_settings(100)
@given(sets=st.lists(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5)), min_size=1,
                              max_size=5, unique_by=lambda t: t[0]), min_size=1, max_size=4),
       picks=st.lists(st.integers(0, 15), min_size=4, max_size=4), seed=st.integers(0, 100))
def test_wrr_shares_hold_after_any_churn(sets: list[list[tuple[int, int]]], picks: list[int],
                                         seed: int) -> None:
    """After endpoints join, leave and change weight between picks, the last set's
    shares hold within one pick over three cycles."""
    w = WeightedRoundRobin(random.Random(seed))
    pool: dict[tuple[int, int], Endpoint] = {}
    eps: list[Endpoint] = []
    for spec, p in zip(sets, picks, strict=False):
        eps = [pool.setdefault((k, wt), ep(f"i{k}", wt)) for k, wt in spec]
        w.update(eps)
        for _ in range(p):
            w.pick()
    total = sum(e.instance.weight for e in eps)
    shares = Counter(take(w) for _ in range(total * 3))
    for e in eps:
        assert abs(shares[e.key] - 3 * e.instance.weight) <= 1, shares


# -- balancers: the ring moves only the keys of the endpoint that came or went -----------------
keys_st = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=40)


@_settings(100)
@given(weights=st.lists(st.integers(1, 5), min_size=1, max_size=6),
       new_weight=st.integers(1, 5), keys=keys_st)
def test_ring_hash_join_moves_keys_only_to_the_newcomer(
        weights: list[int], new_weight: int, keys: list[str]) -> None:
    """Below max_ring_size, a join moves a key only to the endpoint that joined (the
    minimal example that was found: two endpoints of weight 2, one of weight 1 joins)."""
    eps = [ep(f"i{i}", weight=w) for i, w in enumerate(weights)]
    ring = RingHash()
    ring.update(eps)
    before = owners(ring, keys)
    ring.update([*eps, ep("new", weight=new_weight)])
    after = owners(ring, keys)
    for k in keys:
        assert after[k] in (before[k], "new"), (k, before[k], after[k])


@_settings(150)
@given(n=st.integers(1, 8), weights=st.lists(st.integers(1, 5), min_size=10, max_size=10),
       keys=keys_st, op=st.sampled_from(["add", "remove", "weight", "state"]),
       which=st.integers(0, 9))
def test_ring_hash_a_change_moves_only_the_changed_endpoints_keys(
        n: int, weights: list[int], keys: list[str], op: str, which: int) -> None:
    """An endpoint that joins takes keys, one that leaves or fails gives only its own,
    one whose weight grows takes keys: no key moves between endpoints that did not
    change."""
    r = RingHash(10, random.Random(0))
    eps = [ep(f"i{i}", weights[i]) for i in range(n)]
    r.update(eps)
    before = owners(r, keys)
    changed = eps[which % n]
    if op == "add":
        changed = ep("i9", weights[9])
        r.update([*eps, changed])
    elif op == "remove":
        assume(n > 1)
        r.update([e for e in eps if e is not changed])
    elif op == "weight":
        r.update([ep(e.key, e.instance.weight + 2) if e is changed else e for e in eps])
    else:
        assume(n > 1)
        changed.state = FAILING
    after = owners(r, keys)
    for k in keys:
        if op in ("add", "weight"):
            assert after[k] in (before[k], changed.key), (k, before[k], after[k])
        elif before[k] != changed.key:
            assert after[k] == before[k], (k, before[k], after[k])


# -- balancers as state machines ----------------------------------------------------------------
CODES = [OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
         grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.DEADLINE_EXCEEDED]


class EjectMachine(RuleBasedStateMachine):
    """Outlier ejection over each inner balancer, driven by updates, state changes, picks
    (plain and stream, keyed or not, with ``exclude``), outcomes in any order, first
    responses and time: the ejection cap holds at every ejection, a due probe is sent,
    an ejected endpoint is picked only as its probe or by panic routing (every endpoint
    in rotation failing), ``next_probe_in_s`` is never late, and after a heal every
    endpoint is back."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.pool: dict[tuple[str, int, int], Endpoint] = {}
        self.outstanding: list[list[Any]] = []
        self.eps: list[Endpoint] = []
        self.eb: EjectingBalancer | None = None
        self.inner: Any = None

    @initialize(inner=st.sampled_from(["p2c", "rr", "wrr", "ring"]),
                cf=st.integers(1, 4), rate=st.sampled_from([None, 0.5, 1.0]),
                win=st.integers(1, 5), pct=st.sampled_from([0, 10, 34, 50, 100]),
                seed=st.integers(0, 10))
    def setup(self, inner: str, cf: int, rate: float | None, win: int, pct: int,
              seed: int) -> None:
        rng = random.Random(seed)
        makers: dict[str, Callable[[], Any]] = {
            "p2c": lambda: P2C(P2COptions(slow_start_s=2.0), rng=rng, clock=self.clock),
            "rr": lambda: RoundRobin(rng), "wrr": lambda: WeightedRoundRobin(rng),
            "ring": lambda: RingHash(3, rng)}
        self.inner = makers[inner]()
        self.opts = OutlierOptions(consecutive_failures=cf, failure_rate=rate,
                                   failure_rate_window=win, base_ejection_s=5.0,
                                   max_ejection_s=20.0, max_ejection_percent=pct)
        self.eb = EjectingBalancer(self.inner, self.opts, clock=self.clock,
                                   on_change=self.changed)

    def changed(self, key: str, ejected: bool) -> None:
        assert self.eb is not None
        if ejected:
            n = len(self.eb._all)
            cap = max(1, int(n * self.opts.max_ejection_percent / 100))
            count = len(self.eb.ejected())
            assert count <= cap or self.eb._health[key].times != 1, (
                "over the cap", key, count, cap, n, self.opts)

    @rule(spec=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 2), st.integers(1, 3),
                                  st.sampled_from(STATES)),
                        max_size=6, unique_by=lambda t: t[0]))
    def update(self, spec: list[tuple[int, int, int, EndpointState]]) -> None:
        if self.eb is None:
            return
        self.eps = []
        for k, port, w, s in spec:
            e = self.pool.get((f"i{k}", port, w))
            if e is None:
                e = self.pool[(f"i{k}", port, w)] = ep(f"i{k}", w, port=1000 + port)
            e.state = s
            self.eps.append(e)
        self.eb.update(self.eps)

    @rule(i=st.integers(0, 5), s=st.sampled_from(STATES))
    def set_state(self, i: int, s: EndpointState) -> None:
        if self.eps:
            self.eps[i % len(self.eps)].state = s

    @rule(dt=st.sampled_from([0.1, 1.0, 3.0, 6.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @rule(exclude_i=st.lists(st.integers(0, 5), max_size=2),
          key=st.sampled_from([None, "a", "b"]), stream=st.booleans())
    def pick(self, exclude_i: list[int], key: str | None, stream: bool) -> None:
        if self.eb is None:
            return
        eb = self.eb
        exclude = [self.eps[i % len(self.eps)] for i in exclude_i] if self.eps else []
        before = set(eb.ejected())
        now = self.clock()
        due = [e for e in self.eps if e.key in before and not eb._health[e.key].probing
               and (eb._health[e.key].ejected_until or math.inf) <= now
               and e.state is not FAILING]
        got = (eb.pick_stream if stream else eb.pick)(key, exclude)
        if due:
            assert got is not None and got[0] in due, (got, due)
        if got is None:
            return
        e = got[0]
        assert e in self.eps, (e, self.eps)
        if e.key in before and not eb._health[e.key].probing:  # panic routing only
            in_rotation = [x for x in self.eps if x.key not in before]
            assert all(x.state is FAILING for x in in_rotation), (e, in_rotation)
            assert e.state is not FAILING
        self.outstanding.append([got[0], got[1], stream, False])

    @rule(i=st.integers(0, 20), code=st.sampled_from(CODES),
          lat=st.sampled_from([-1.0, 0.0, 0.001, 0.05, 0.5]))
    def finish(self, i: int, code: grpc.StatusCode, lat: float) -> None:
        if self.outstanding:
            self.outstanding.pop(i % len(self.outstanding))[1](code, lat)

    @rule(i=st.integers(0, 20))
    def respond(self, i: int) -> None:
        if self.outstanding:
            o = self.outstanding[i % len(self.outstanding)]
            if o[2] and not o[3]:
                o[3] = True
                o[1].responded()

    @rule()
    def heal(self) -> None:
        if self.eb is None:
            return
        while self.outstanding:
            self.outstanding.pop()[1](OK, 0.01)
        for e in self.eps:
            e.state = READY
        self.clock.t += 25.0
        for _ in range(4 * len(self.eps) + 4):
            got = self.eb.pick()
            if got is None:
                break
            got[1](OK, 0.01)
            self.clock.t += 0.01
        assert self.eb.ejected() == [], (self.eb.ejected(), self.eps)

    @invariant()
    def pending_is_never_negative(self) -> None:
        if isinstance(self.inner, P2C):
            for key, s in self.inner._stats.items():
                assert s.pending >= 0, (key, s.pending)

    @invariant()
    def next_probe_is_never_late(self) -> None:
        if self.eb is None:
            return
        now = self.clock()
        nxt = self.eb.next_probe_in_s()
        for e in self.eps:
            h = self.eb._health[e.key]
            if h.ejected_until is None:
                continue
            bound = (h.probe_until if h.probing else h.ejected_until) - now
            if bound != math.inf:
                assert nxt is not None and nxt <= max(0.0, bound) + 1e-9, (e, nxt, bound)

    @invariant()
    def only_listed_endpoints_are_ejected(self) -> None:
        if self.eb is not None:
            assert set(self.eb.ejected()) <= {e.key for e in self.eps}

    def teardown(self) -> None:
        while self.outstanding:
            self.outstanding.pop()[1](OK, 0.01)
        if isinstance(self.inner, P2C):
            for key, s in self.inner._stats.items():
                assert s.pending == 0, (key, s.pending)


EjectMachine.TestCase.settings = _settings(100, stateful_step_count=50)
TestOutlierEjectionMachine = EjectMachine.TestCase


class P2CMachine(RuleBasedStateMachine):
    """P2C driven by updates, state changes, picks (with ``exclude``), outcomes and time:
    pending counts never go negative and end at zero, a READY endpoint not excluded wins
    over any other, and the prior of an unsampled endpoint is the mean decayed estimate
    of the sampled ones."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.pool: dict[tuple[str, int], Endpoint] = {}
        self.outstanding: list[list[Any]] = []
        self.eps: list[Endpoint] = []
        self.p: P2C | None = None

    @initialize(seed=st.integers(0, 100), slow_start=st.sampled_from([0.0, 5.0]),
                decay=st.sampled_from([0.5, 10.0]))
    def setup(self, seed: int, slow_start: float, decay: float) -> None:
        self.p = P2C(P2COptions(slow_start_s=slow_start, decay_s=decay),
                     rng=random.Random(seed), clock=self.clock)

    @rule(spec=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 2),
                                  st.sampled_from(STATES)),
                        max_size=6, unique_by=lambda t: t[0]))
    def update(self, spec: list[tuple[int, int, EndpointState]]) -> None:
        if self.p is None:
            return
        self.eps = []
        for k, port, s in spec:
            e = self.pool.get((f"i{k}", port))
            if e is None:
                e = self.pool[(f"i{k}", port)] = ep(f"i{k}", port=1000 + port)
            e.state = s
            self.eps.append(e)
        self.p.update(self.eps)

    @rule(i=st.integers(0, 5), s=st.sampled_from(STATES))
    def set_state(self, i: int, s: EndpointState) -> None:
        if self.eps:
            self.eps[i % len(self.eps)].state = s

    @rule(dt=st.sampled_from([0.01, 1.0, 3.0, 100.0, 1000.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @rule(ex=st.lists(st.integers(0, 5), max_size=2), stream=st.booleans())
    def pick(self, ex: list[int], stream: bool) -> None:
        if self.p is None:
            return
        exclude = [self.eps[i % len(self.eps)] for i in ex] if self.eps else []
        got = (self.p.pick_stream if stream else self.p.pick)(None, exclude)
        usable = [e for e in self.eps if e.state is not FAILING]
        if got is None:
            assert not usable, usable
            return
        e = got[0]
        assert e in self.eps and e.state is not FAILING
        self.outstanding.append([e, got[1], stream, False])
        if any(x.state is READY and x not in exclude for x in self.eps):
            assert e.state is READY, (e, self.eps)
        if any(x not in exclude for x in usable):
            assert e not in exclude, (e, exclude)

    @rule(i=st.integers(0, 20), code=st.sampled_from(CODES[:4]),
          lat=st.sampled_from([-1.0, 0.0, 0.001, 0.05, 2.0]))
    def finish(self, i: int, code: grpc.StatusCode, lat: float) -> None:
        if self.outstanding:
            self.outstanding.pop(i % len(self.outstanding))[1](code, lat)

    @rule(i=st.integers(0, 20))
    def respond(self, i: int) -> None:
        if self.outstanding:
            o = self.outstanding[i % len(self.outstanding)]
            if o[2] and not o[3]:
                o[3] = True
                o[1].responded()

    @invariant()
    def pending_is_never_negative(self) -> None:
        if self.p is not None:
            for key, s in self.p._stats.items():
                assert s.pending >= 0, (key, s.pending)

    @invariant()
    def prior_is_the_mean_decayed_estimate(self) -> None:
        if self.p is None:
            return
        now = self.clock()
        sampled = [s.estimate(now, 0.0) for s in self.p._stats.values() if s.rtt_s >= 0]
        expect = sum(sampled) / len(sampled) if sampled else self.p._opts.default_rtt_s
        assert math.isclose(self.p._prior(now), expect, rel_tol=1e-6, abs_tol=1e-12)

    def teardown(self) -> None:
        if self.p is None:
            return
        while self.outstanding:
            self.outstanding.pop()[1](OK, 0.01)
        for key, s in self.p._stats.items():
            assert s.pending == 0, (key, s.pending)


P2CMachine.TestCase.settings = _settings(100, stateful_step_count=50)
TestP2CMachine = P2CMachine.TestCase


# -- retry budget and backoff ---------------------------------------------------------------------
@_settings(150)
@given(ratio=st.floats(0, 1), floor=st.floats(0, 3), ttl=st.sampled_from([1.0, 10.0, 0.3, 7.0]),
       ops=st.lists(st.tuples(st.sampled_from(["req", "try", "adv"]), st.floats(0, 2.5)),
                    max_size=150),
       start=st.one_of(st.floats(-1e6, 1e7), st.just(0.0)))
def test_retry_budget_matches_a_model_of_its_window(
        ratio: float, floor: float, ttl: float, ops: list[tuple[str, float]],
        start: float) -> None:
    """The balance is ``floor * ttl + ratio * requests - retries`` over the last ten
    buckets of ``ttl / 10`` (wherever the clock starts), and a retry is granted exactly
    when it is at least 1."""
    clock = Clock()
    clock.t = start
    b = RetryBudget(BudgetOptions(retry_ratio=ratio, min_retries_per_s=floor, ttl_s=ttl),
                    clock=clock)
    bucket = ttl / 10
    events: list[tuple[int, str]] = []  # (bucket index, "req" or "try")

    def expected() -> float:
        now_b = math.floor(clock.t / bucket)
        live = [kind for (bi, kind) in events if now_b - 10 < bi <= now_b]
        return floor * ttl + ratio * live.count("req") - live.count("try")

    for op, x in ops:
        now_b = math.floor(clock.t / bucket)
        if op == "req":
            b.record_request()
            events.append((now_b, "req"))
        elif op == "try":
            want = expected()
            granted = b.try_withdraw()
            assert granted == (want >= 1), (granted, want)
            if granted:
                events.append((now_b, "try"))
        else:
            clock.t += x * ttl
        assert math.isclose(b.balance(), expected(), abs_tol=1e-9), (b.balance(), expected())


@_settings(150)
@given(base=st.floats(0, 5), mult=st.floats(1, 10), extra=st.floats(0, 10),
       retry=st.integers(1, 2000), seed=st.integers(0, 10))
def test_backoff_stays_within_its_cap_which_grows_to_the_max(
        base: float, mult: float, extra: float, retry: int, seed: int) -> None:
    """A delay is within 0..cap, the cap within 0..max_delay_s and never shrinks with
    the retry number (no overflow at retry 2000)."""
    b = Backoff(base_delay_s=base, max_delay_s=base + extra, multiplier=mult,
                rng=random.Random(seed))
    cap = b.cap_s(retry)
    assert 0 <= cap <= base + extra
    assert 0 <= b.delay_s(retry) <= cap
    if retry > 1:
        assert b.cap_s(retry) >= b.cap_s(retry - 1)


# -- rate-limit helpers -------------------------------------------------------------------------
@_settings(150)
@given(amount=st.integers(1, 20), window=st.sampled_from([1.0, 10.0, 60.0]),
       prev=st.integers(0, 40), cur=st.integers(0, 40), pexp=st.floats(0, 1),
       cexp=st.floats(0.001, 1))
def test_sliding_window_wait_ends_when_the_weighted_count_drops_below_the_limit(
        amount: int, window: float, prev: int, cur: int, pexp: float, cexp: float) -> None:
    """After the wait a hit is admitted (the weighted count below ``amount``), and a
    millisecond before it would not have been."""
    pe = pexp * window
    ce = window + cexp * window  # the current window's key lives two windows
    wait = sliding_window_wait_s(amount=amount, window_s=window, previous_count=prev,
                                 previous_expires_in_s=pe, current_count=cur,
                                 current_expires_in_s=ce)
    assert wait >= 0

    def weighted(t: float) -> float:  # the weighted count t seconds from now
        cur_ends = ce - window
        if t < cur_ends:
            return prev * max(0.0, pe - t) / window + cur
        t2 = t - cur_ends  # rolled over: the current window became the previous one
        return cur * (window - t2) / window if t2 < window else 0.0

    assert weighted(wait + 1e-6) < amount + 1e-9, (wait, weighted(wait + 1e-6))
    if wait > 1e-3:
        assert weighted(wait - 1e-3) >= amount - 1e-6, (wait, weighted(wait - 1e-3))


@_settings(100)
@given(host=st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
       port=st.integers(1, 65535), pct=st.booleans())
def test_peer_host_is_the_address_of_any_grpc_peer(host: str, port: int, pct: bool) -> None:
    """``ipv4:a.b.c.d:port`` and ``ipv6:[addr]:port`` (brackets percent-encoded or not)
    give the bare address."""
    if ":" in host:
        bracketed = f"%5B{host}%5D" if pct else f"[{host}]"
        peer = f"ipv6:{bracketed}:{port}"
    else:
        peer = f"ipv4:{host}:{port}"
    assert peer_host(peer) == host


# -- method matcher --------------------------------------------------------------------------
_SERVICE_PATTERNS = ["a.v1.Orders", "Orders", "*", "Ord*", "a.*", "?ay", "[OP]*", "b.Orders",
                     "Pay"]
_METHOD_PATTERNS = ["Get", "Get*", "*", "G?t", "Put", "[GP]*", "G"]


@st.composite
def patterns(draw: st.DrawFn) -> dict[str, int]:
    """A rules mapping of distinct method patterns (``/`` led or not, or ``*``)."""
    out: dict[str, int] = {}
    for _ in range(draw(st.integers(0, 8))):
        s = draw(st.sampled_from(_SERVICE_PATTERNS))
        m = draw(st.sampled_from(_METHOD_PATTERNS))
        text = ("/" if draw(st.booleans()) else "") + f"{s}/{m}"
        if draw(st.integers(0, 10)) == 0:
            text = "*"
        norm = "*/*" if text == "*" else text.lstrip("/")
        if all(("*/*" if t == "*" else t.lstrip("/")) != norm for t in out):
            out[text] = len(out)
    return out


def _literals(part: str) -> int:
    return len(re.sub(r"\[!?\]?[^\]]*\]", "", part).replace("*", "").replace("?", ""))


def reference_lookup(pats: dict[str, int], method: str) -> int | str:
    """The documented precedence, by brute force: exact, then most literal characters,
    then fewer ``*``, then code-point order; a service pattern matches the full or the
    package-less service name."""
    service, _, name = method.lstrip("/").rpartition("/")
    short = service.rsplit(".", 1)[-1]
    found: list[tuple[tuple[bool, int, int, str], int]] = []
    for text, value in pats.items():
        norm = "*/*" if text == "*" else text.lstrip("/")
        ps, _, pm = norm.partition("/")
        if fnmatch.fnmatchcase(name, pm) and (fnmatch.fnmatchcase(service, ps)
                                             or fnmatch.fnmatchcase(short, ps)):
            glob = any(c in norm for c in "*?[")
            found.append(((glob, -(_literals(ps) + 1 + _literals(pm)), norm.count("*"),
                           norm), value))
    return min(found)[1] if found else "default"


@_settings(150)
@given(pats=patterns(), s=st.sampled_from(["a.v1.Orders", "Orders", "b.Orders", "Pay", "x.Pay"]),
       m=st.sampled_from(["Get", "GetAll", "Put", "G"]), order=st.randoms(use_true_random=False))
def test_method_matcher_precedence_does_not_depend_on_the_mappings_order(
        pats: dict[str, int], s: str, m: str, order: random.Random) -> None:
    """The pattern that governs a method is the reference's, whatever the order of the
    rules mapping."""
    items = list(pats.items())
    order.shuffle(items)
    method = f"/{s}/{m}"
    got = MethodMatcher(pats, "default").lookup(method)
    assert got == MethodMatcher(dict(items), "default").lookup(method)
    assert got == reference_lookup(pats, method), (pats, method)


# -- metadata ----------------------------------------------------------------------------------
@_settings(150)
@given(k=st.text(max_size=8), v=st.one_of(st.text(max_size=8), st.binary(max_size=8)))
def test_check_metadata_follows_grpcs_rules(k: str, v: str | bytes) -> None:
    """A key is ``[0-9a-z_.-]+``; a ``-bin`` key's value is bytes; any other value is
    printable ASCII (str or bytes)."""
    key_ok = re.fullmatch(r"[0-9a-z_.\-]+", k) is not None
    if k.endswith("-bin"):
        value_ok = isinstance(v, bytes)
    else:
        raw = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v
        value_ok = all(0x20 <= c <= 0x7E for c in raw)
    try:
        check_metadata([(k, v)])
        accepted = True
    except InvalidMetadataError:
        accepted = False
    assert accepted == (key_ok and value_ok), (k, v)


# -- URIs and addresses never show a password --------------------------------------------------
_PASSWORD = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                    max_size=12)
_HOST = st.sampled_from(["h", "10.0.0.1", "[::1]", "db.example.com"])


@_settings(200)
@given(scheme=st.sampled_from(["redis", "async+redis", "rediss", "memcached",
                               "redis+sentinel"]),
       user=st.text(alphabet="abcxyz", max_size=4), pw=_PASSWORD, host=_HOST,
       port=st.sampled_from(["", ":6379"]), tail=st.sampled_from(["", "/", "/0", "?db=1"]))
def test_redact_uri_never_shows_the_password(scheme: str, user: str, pw: str, host: str,
                                             port: str, tail: str) -> None:
    """No ``scheme://user:password@host:port...`` shows its password, whatever the
    password holds (the minimal example that was found: ``redis://:S3CR0?@h``), and the
    host, port and path are shown as written."""
    uri = f"{scheme}://{user}:S3CR{pw}@{host}{port}{tail}"
    shown = redact_uri(uri)
    assert "S3CR" not in shown, (uri, shown)
    assert shown == f"{scheme}://***@{host}{port}{tail}", (uri, shown)


@_settings(200)
@given(scheme=st.sampled_from(["etcd", "consul", "etcd+https", "async+redis"]),
       user=st.text(alphabet="abcxyz", max_size=4), pw=_PASSWORD, host=_HOST,
       port=st.sampled_from(["", ":2379"]),
       tail=st.sampled_from(["", "/", "/0", "?ttl_s=5", "?prefix=/x&password=zz", "#frag",
                             "/0?x=1"]))
def test_shown_uri_never_shows_the_password(scheme: str, user: str, pw: str, host: str,
                                            port: str, tail: str) -> None:
    """Registry URIs as errors quote them: no password, whatever it holds, nor the value
    of a query key that is no option."""
    uri = f"{scheme}://{user}:S3CR{pw}@{host}{port}{tail}"
    shown = shown_uri(uri, ("ttl_s", "prefix"))
    assert "S3CR" not in shown and "zz" not in shown, (uri, shown)


@_settings(200)
@given(scheme=st.sampled_from(["", "http://", "https://"]),
       user=st.text(alphabet="abcxyz", max_size=4), pw=_PASSWORD,
       host=st.sampled_from(["h", "10.0.0.1", "[::1]", "[::1"]),
       port=st.sampled_from(["", ":2379"]))
def test_an_address_with_user_info_is_refused_without_its_password(
        scheme: str, user: str, pw: str, host: str, port: str) -> None:
    """``[scheme://]user:password@host[:port]`` is refused (a password must not sit in an
    address), quoted without the password."""
    text = f"{scheme}{user}:S3CR{pw}@{host}{port}"
    try:
        split_address(text, "addr")
    except ConfigError as exc:
        assert "S3CR" not in str(exc), (text, str(exc))
    else:
        raise AssertionError(f"accepted user info: {text!r}")


_URI_TEXT = st.text(alphabet="[]:@/?#%.,=&ab19 ", max_size=16)


@_settings(200)
@given(scheme=st.sampled_from(["", "http://", "consul://", "etcd://", "etcd+https://",
                               "bogus://"]),
       rest=_URI_TEXT)
def test_a_malformed_uri_or_address_is_a_config_error(scheme: str, rest: str) -> None:
    """Whatever the text (unbalanced brackets, stray ``@``, ``%``, ports that are no
    number), parsing a registry URI or an address raises ConfigError or nothing: never
    urllib's bare ValueError (an unbalanced ``[`` raised ``Invalid IPv6 URL``)."""
    text = scheme + rest
    for parse in (lambda: parse_uri(text, "registry URI"),
                  lambda: split_address(text, "addr"),
                  lambda: ConsulOptions.from_uri(text, environ={}),
                  lambda: EtcdOptions.from_uri(text, environ={})):
        with contextlib.suppress(ConfigError):
            parse()


# -- hosts -----------------------------------------------------------------------------------
_NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{1,5}){0,3}", fullmatch=True)


@_settings(150)
@given(st.one_of(st.ip_addresses().map(str), _NAMES))
def test_every_address_and_name_is_a_host_bracketed_for_uris_once(host: str) -> None:
    """An IP address or a DNS name passes check_host, bracketed or not; ``uri_host``
    brackets an IPv6 literal once and ``bare_host`` takes the brackets off again."""
    check_host("h", host)
    u = uri_host(host)
    assert bare_host(u) == host and uri_host(u) == u
    check_host("h", u)
    if ":" in host:
        assert u == f"[{host}]"


@_settings(200)
@given(st.one_of(st.text(max_size=30),
                 st.builds("{}%{}".format, st.sampled_from(["fe80::1", "[fe80::1", "::1"]),
                           st.text(max_size=6)).map(
                     lambda h: h + "]" if h.startswith("[") else h)))
def test_check_host_accepts_addresses_and_names_only(host: str) -> None:
    """Whatever check_host accepts is an IP address (an IPv6 zone of RFC 6874's
    unreserved characters) or a name of letters, digits, ``-``, ``.`` and ``_``: no
    space anywhere, no ``/``, ``@``, ``?`` or ``#``."""
    try:
        check_host("h", host)
    except ConfigError:
        return
    bare = bare_host(host)
    assert not any(c.isspace() for c in host), host
    assert not set("/@?#") & set(host), host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        assert host.isascii() and all(c.isalnum() or c in "-._" for c in host), host
    else:
        zone = bare.partition("%")[2]
        assert re.fullmatch(r"[A-Za-z0-9._~-]*", zone), host


_MAPPED = st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
_SPECIAL = st.sampled_from(["127.0.0.1", "127.1.2.3", "0.0.0.0", "::1", "::",
                            "::ffff:127.0.0.1", "::ffff:0.0.0.0", "::ffff:10.0.0.1"]
                           ).map(ipaddress.ip_address)


@_settings(150)
@given(st.one_of(st.ip_addresses(), _MAPPED, _SPECIAL), st.booleans())
def test_loopback_and_wildcard_are_what_the_address_maps(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, bracket: bool) -> None:
    """``is_loopback`` and ``is_unspecified`` say what the address (an IPv4-mapped IPv6
    address: the IPv4 address it maps) is, bracketed or not."""
    mapped = getattr(address, "ipv4_mapped", None) or address
    host = str(address)
    if bracket and ":" in host:
        host = f"[{host}]"
    assert is_loopback(host) == mapped.is_loopback, host
    assert is_unspecified(host) == mapped.is_unspecified, host
