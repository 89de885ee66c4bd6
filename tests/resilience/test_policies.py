"""Resilience policies as pure code with a fake clock: backoff, budget, EWMA, P2C, WRR,
ring hash, outlier ejection, method tables."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

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
from meshkit.discovery import Instance
from meshkit.errors import ConfigError
from meshkit.resilience import Backoff, BudgetOptions, RetryBudget, RetryOptions, RetryPolicy

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def eps(*names: str, weights: dict[str, int] | None = None) -> list[Endpoint]:
    """READY endpoints named ``names``."""
    out = []
    for i, n in enumerate(names):
        inst = Instance(service="s", instance_id=n, host="127.0.0.1", port=1000 + i,
                        weight=(weights or {}).get(n, 1))
        ep = Endpoint(inst)
        ep.state = EndpointState.READY
        out.append(ep)
    return out


# -- backoff -------------------------------------------------------------------------------
def test_backoff_caps_grow_exponentially_and_are_bounded() -> None:
    """The jitter cap doubles per retry up to max_delay_s; every delay lies within [0, cap]."""
    b = Backoff(base_delay_s=0.1, max_delay_s=1.0, multiplier=2, rng=random.Random(1))
    assert [b.cap_s(n) for n in (1, 2, 3, 4, 5, 100)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for n in range(1, 30):
        assert 0 <= b.delay_s(n) <= b.cap_s(n)
    delays = [b.delay_s(3) for _ in range(2000)]
    assert 0.15 < sum(delays) / len(delays) < 0.25  # full jitter: mean is half the cap


def test_backoff_cap_grows_past_65_retries_and_never_overflows() -> None:
    """The cap of retry n is min(max_delay_s, base_delay_s * multiplier ** (n - 1)) (gRFC
    A6) for any n: it stopped growing at n = 65 (a gentle multiplier's cap froze at a
    fraction of max_delay_s), and a large multiplier still overflowed."""
    b = Backoff(base_delay_s=0.001, max_delay_s=10.0, multiplier=1.05)
    assert b.cap_s(100) == pytest.approx(0.001 * 1.05 ** 99)
    assert b.cap_s(1000) == 10.0
    big = Backoff(base_delay_s=0.01, max_delay_s=5.0, multiplier=1e5)
    assert big.cap_s(70) == 5.0 and big.cap_s(10**9) == 5.0
    assert Backoff(base_delay_s=0.0, max_delay_s=1.0, multiplier=float("inf")).cap_s(3) == 0.0


def test_backoff_bad_values_quote_the_value() -> None:
    """Negative delays, a max below the base, and a multiplier < 1 are refused."""
    with pytest.raises(ConfigError, match=re.escape("-0.5")):
        Backoff(base_delay_s=-0.5)
    with pytest.raises(ConfigError, match=re.escape("0.01")):
        Backoff(base_delay_s=0.1, max_delay_s=0.01)
    with pytest.raises(ConfigError, match=re.escape("0.5")):
        Backoff(multiplier=0.5)


# -- retry budget --------------------------------------------------------------------------
def test_budget_allows_floor_plus_ratio_of_requests() -> None:
    """Retries allowed = min_retries_per_s * ttl_s + retry_ratio * requests in the window."""
    clock = Clock()
    b = RetryBudget(BudgetOptions(retry_ratio=0.2, min_retries_per_s=1, ttl_s=10), clock)
    for _ in range(100):
        b.record_request()
    assert b.balance() == pytest.approx(10 + 20)
    granted = sum(b.try_withdraw() for _ in range(50))
    assert granted == 30
    assert b.denied == 20


def test_budget_window_slides() -> None:
    """Requests and retries older than ttl_s stop counting."""
    clock = Clock()
    b = RetryBudget(BudgetOptions(retry_ratio=0.5, min_retries_per_s=0, ttl_s=10), clock)
    for _ in range(10):
        b.record_request()
    assert sum(b.try_withdraw() for _ in range(10)) == 5
    clock.t += 5
    assert not b.try_withdraw()
    clock.t += 6  # the first batch has left the window
    assert b.balance() == 0
    b.record_request()
    b.record_request()
    assert b.try_withdraw()


def test_budget_bad_values() -> None:
    """A ratio above 1, a negative floor and a zero window are refused."""
    with pytest.raises(ConfigError, match=re.escape("1.5")):
        BudgetOptions(retry_ratio=1.5)
    with pytest.raises(ConfigError, match="-1"):
        BudgetOptions(min_retries_per_s=-1)
    with pytest.raises(ConfigError, match="0"):
        BudgetOptions(ttl_s=0)


def test_retry_policy_bad_values() -> None:
    """max_attempts < 1, hedging without idempotency and bad patterns fail at construction."""
    with pytest.raises(ConfigError, match="0"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="idempotent"):
        RetryPolicy(hedge_delay_s=0.1)
    with pytest.raises(ConfigError, match=re.escape("-0.1")):
        RetryPolicy(idempotent=True, hedge_delay_s=-0.1)
    with pytest.raises(ConfigError, match="''"):
        RetryOptions(methods={"": RetryPolicy()})


@pytest.mark.parametrize(("build", "quoted"), [
    pytest.param(lambda: RetryPolicy(backoff=0.1), "0.1", id="RetryPolicy.backoff"),
    pytest.param(lambda: RetryOptions(methods={"OrderService/PlaceOrder": 3}), "3",
                 id="RetryOptions.methods"),
    pytest.param(lambda: RetryOptions(default="UNAVAILABLE"), "'UNAVAILABLE'",
                 id="RetryOptions.default"),
    pytest.param(lambda: RetryOptions(budget=0.2), "0.2", id="RetryOptions.budget"),
])
def test_retry_options_of_the_wrong_type_are_refused(build: Callable[[], object],
                                                     quoted: str) -> None:
    """A policy, backoff or budget of the wrong type was accepted and failed with an
    ``AttributeError`` on the first call that needed it."""
    with pytest.raises(ConfigError, match=re.escape(quoted)):
        build()
    assert RetryOptions(methods={"Svc/M": None}, default=None).default is None


# -- P2C / peak EWMA -----------------------------------------------------------------------
def drive(p: P2C, clock: Clock, calls: int, slow: str = "slow") -> Counter[str]:
    """``calls`` picks 1 ms apart, each answered in 1 ms (50 ms from ``slow``); the picks
    per endpoint."""
    picks: Counter[str] = Counter()
    for _ in range(calls):
        got = p.pick()
        assert got is not None
        ep, done = got
        picks[ep.key] += 1
        clock.t += 0.001
        done(OK, 0.050 if ep.key == slow else 0.001)
    return picks


def test_peak_ewma_jumps_up_decays_down() -> None:
    """A slow sample sets the estimate at once; fast samples and idle time bring it down."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=10, slow_start_s=0), clock=clock, rng=random.Random(1))
    (a,) = eps("a")
    p.update([a])
    assert p.load(a) == pytest.approx(0.03)  # default RTT before any sample
    got = p.pick()
    assert got is not None
    got[1](OK, 0.2)
    assert p.load(a) == pytest.approx(0.2)
    clock.t += 10  # one time constant idle: e^-1
    assert p.load(a) == pytest.approx(0.2 * 0.36788, rel=1e-3)
    got = p.pick()
    assert got is not None
    assert p.load(a) == pytest.approx(2 * 0.2 * 0.36788, rel=1e-3)  # one pending call doubles


def test_p2c_prefers_the_less_loaded() -> None:
    """With one slow endpoint among three, P2C sends it only a small share of calls."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=0), clock=clock, rng=random.Random(7))
    endpoints = eps("a", "b", "slow")
    p.update(endpoints)
    picks = drive(p, clock, 3000)
    assert picks["slow"] / 3000 < 0.02
    assert picks["a"] > 1000 and picks["b"] > 1000


def test_p2c_compares_two_distinct_endpoints_every_pick() -> None:
    """Each pick compares two different endpoints, drawn uniformly: with two, the less
    loaded one (fewer calls pending) takes every pick; with four of equal load, each
    takes about a quarter."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=0), clock=clock, rng=random.Random(3))
    a, b = eps("a", "b")
    p.update([a, b])
    held = p.pick()  # one call left pending on whichever won
    assert held is not None
    busy = held[0]
    for _ in range(200):
        got = p.pick()
        assert got is not None and got[0] is not busy
        got[1](OK, 0.001)
    p = P2C(P2COptions(slow_start_s=0), clock=clock, rng=random.Random(4))
    p.update(eps("a", "b", "c", "d"))
    picks = drive(p, clock, 4000)  # none of them slow
    assert all(800 < picks[k] < 1200 for k in "abcd"), picks


def test_p2c_penalises_resource_exhausted() -> None:
    """A RESOURCE_EXHAUSTED answer raises the endpoint's load to at least the penalty."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=0, overload_penalty_s=0.25), clock=clock)
    (a,) = eps("a")
    p.update([a])
    got = p.pick()
    assert got is not None
    got[1](grpc.StatusCode.RESOURCE_EXHAUSTED, 0.001)
    assert p.load(a) == pytest.approx(0.25)


def test_p2c_slow_start_ramps_new_endpoints() -> None:
    """A later endpoint starts at its peers' estimate and takes a pick it wins with a
    probability ramping from slow_start_min_weight to 1 over slow_start_s."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=10, slow_start_min_weight=0.1), clock=clock)
    a, b = eps("a", "b")
    p.update([a])
    got = p.pick()
    assert got is not None
    got[1](OK, 0.004)
    p.update([a, b])
    assert p.load(b) == pytest.approx(p.load(a))  # seeded, not the 30 ms default
    assert p.weight(b) == pytest.approx(0.1) and p.weight(a) == 1.0
    clock.t += 5
    assert p.weight(b) == pytest.approx(0.5)
    clock.t += 5
    assert p.weight(b) == 1.0


@pytest.mark.parametrize(("late_code", "late_latency_s", "first_sample"), [
    # a's call in flight when a left ends fast: its old share taken off a sum it is no
    # longer in, the sum went negative and the prior read 0
    pytest.param(grpc.StatusCode.OK, 0.001, False, id="late-success"),
    # a newcomer that left before its first answer: its late, slow outcome was added to
    # the sum and the count as a present endpoint's
    pytest.param(grpc.StatusCode.DEADLINE_EXCEEDED, 5.0, True, id="late-first-sample"),
])
def test_p2c_prior_ignores_the_late_outcome_of_an_endpoint_that_left(
    late_code: grpc.StatusCode, late_latency_s: float, first_sample: bool,
) -> None:
    """P2C over a, b, c, d; b has answered, c and d (newcomers) have not. a leaves (or is
    ejected, which takes it out of P2C's list the same way) with a call in flight, which
    ends afterwards, as calls on an endpoint that left do. The newcomers' prior (the mean
    estimate of their sampled peers: the endpoints present) kept a's late outcome in its
    running sum: read 0 (c and d won every pick whatever their pending) or a's timeout
    (they lost every pick, the starvation the prior exists to prevent), until the next
    update or 500 s. An endpoint that left has no part in it."""
    clk = Clock()
    p = P2C(P2COptions(slow_start_s=0), rng=random.Random(1), clock=clk)
    a, b, c, d = eps("a", "b", "c", "d")
    p.update([a, b, c, d])
    got_a = p.pick(exclude=[b, c, d])
    assert got_a is not None and got_a[0] is a
    if not first_sample:
        got_a0 = p.pick(exclude=[b, c, d])
        assert got_a0 is not None and got_a0[0] is a
        got_a0[1](grpc.StatusCode.OK, 1.0)  # a answered once, slowly
    got_b = p.pick(exclude=[a, c, d])
    assert got_b is not None and got_b[0] is b
    got_b[1](grpc.StatusCode.OK, 0.01)
    clk.t += 30.0
    p.update([b, c, d])  # a leaves, its call still in flight
    expected = p._stats[b.key].estimate(clk.t, 0.0)  # the only present sampled peer: b
    assert p._prior(clk.t) == pytest.approx(expected)
    got_a[1](late_code, late_latency_s)  # a's call ends after it left
    assert p._prior(clk.t) == pytest.approx(expected, rel=0.01)


def test_p2c_new_endpoint_is_not_starved() -> None:
    """With fast peers, an endpoint added later still gets calls and, once ramped up, about
    its fair share (it used to keep the 30 ms default cost and never be picked)."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=2), clock=clock, rng=random.Random(5))
    old = eps("a", "b")
    p.update(old)
    for _ in range(200):
        got = p.pick()
        assert got is not None
        got[1](OK, 0.001)
        clock.t += 0.001
    p.update([*old, *eps("new")])
    picks: Counter[str] = Counter()
    for i in range(3000):
        got = p.pick()
        assert got is not None
        picks[got[0].key] += i >= 2000  # count after the 2 s ramp
        got[1](OK, 0.001)
        clock.t += 0.001
    assert picks["new"] / 1000 > 0.2


def test_p2c_newcomer_does_not_yield_its_picks_to_a_slow_replica() -> None:
    """While a new endpoint ramps up, the picks it yields go to the better of the loser and
    a third endpoint: the slow replica keeps a small share (it got about a third when a
    newcomer yielded to whatever it had beaten)."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=10), clock=clock, rng=random.Random(11))
    old = eps("a", "slow")
    p.update(old)
    drive(p, clock, 400)
    p.update([*old, *eps("new")])
    picks = drive(p, clock, 2000)  # 2 s into a 10 s ramp: the newcomer yields ~80 % of its wins
    assert picks["slow"] / 2000 < 0.05
    assert picks["new"] > 0 and picks["a"] > picks["new"]


@pytest.mark.parametrize(("added", "most", "least"), [
    pytest.param(10, 0.15, 0.04, id="10-beside-10"),  # fair 50 %, Envoy's weights 9 %
    pytest.param(30, 0.35, 0.12, id="30-beside-10"),  # fair 75 %, Envoy's weights 23 %
])
def test_p2c_slow_start_holds_when_many_endpoints_are_added_at_once(
    added: int, most: float, least: float,
) -> None:
    """Endpoints added together beside ten warm ones take about their slow-start weight
    of their fair share, weights normalised (Envoy scales each host's weight by its
    slow-start factor: 10 newcomers at 0.1 beside 10 warm hosts get 10 x 0.1 / (10 x
    0.1 + 10), about 9 % of calls; 30 beside 10, 23 %).

    What was wrong: only the winner's weight was checked; a pick it yielded went to the
    loser or a third endpoint unchecked, and after a scale-out (an autoscaler's batch, a
    blue/green switch) those are newcomers too. A user saw 10 newcomers at weight 0.1 take
    ~32 % of calls (30 of them: ~65 %), flooding the cold replicas the ramp protects. Now
    a newcomer keeps a pick it wins with probability its weight over the mean weight,
    and a yielded pick goes only to endpoints whose ramp is over: ~13 % and ~28 % (the
    margin over Envoy's figures is P2C's pull towards the endpoints it held back, whose
    estimates decay while they wait)."""
    clock = Clock()
    lat = random.Random(2)
    p = P2C(clock=clock, rng=random.Random(1))  # slow_start_s=5, min weight 0.1
    warm = eps(*(f"w{i}" for i in range(10)))
    p.update(warm)  # the first discovery answer: no slow start
    for _ in range(2000):
        clock.t += 0.001
        got = p.pick()
        assert got is not None
        got[1](OK, lat.uniform(0.009, 0.011))
    fresh = [Endpoint(Instance(service="s", instance_id=f"n{i}", host="127.0.0.1",
                               port=2000 + i)) for i in range(added)]
    for ep in fresh:
        ep.state = EndpointState.READY
    p.update([*warm, *fresh])  # a scale-out: replicas registered together
    picks: Counter[str] = Counter()
    for _ in range(4000):
        clock.t += 0.0001  # 0.4 s in all: every newcomer's weight stays at 0.1
        got = p.pick()
        assert got is not None
        picks[got[0].key[0]] += 1
        got[1](OK, lat.uniform(0.009, 0.011))
    assert p.weight(fresh[0]) == pytest.approx(0.1)
    share = picks["n"] / 4000
    assert least < share <= most, f"{added} newcomers at weight 0.1 took {share:.1%}"


def test_p2c_slow_start_does_not_hold_back_when_every_endpoint_ramps() -> None:
    """With every endpoint slow-starting at the same weight (none past its ramp), there
    is no one to yield to: the picks are P2C's, spread over all of them."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=10), clock=clock, rng=random.Random(3))
    p.update(eps("seed"))
    fresh = eps("a", "b", "c", "d")
    p.update(fresh)  # every endpoint replaced
    assert p.weight(fresh[0]) == pytest.approx(0.1)
    picks = drive(p, clock, 2000)
    assert all(350 < picks[k] < 650 for k in "abcd"), picks


def test_p2c_skips_failing_and_honours_exclude() -> None:
    """FAILING endpoints are never picked; excluded ones only when nothing else is usable."""
    p = P2C(P2COptions(slow_start_s=0), rng=random.Random(3))
    a, b, c = eps("a", "b", "c")
    c.state = EndpointState.FAILING
    p.update([a, b, c])
    keys = set()
    for _ in range(200):
        got = p.pick(exclude=[a])
        assert got is not None
        keys.add(got[0].key)
        got[1](OK, 0.001)
    assert keys == {"b"}
    b.state = EndpointState.FAILING
    got = p.pick(exclude=[a])
    assert got is not None and got[0].key == "a"
    a.state = EndpointState.FAILING
    assert p.pick() is None



def test_p2c_with_one_endpoint_picks_it_while_usable() -> None:
    """With a single endpoint there is nothing to compare: P2C picks it when READY (also
    when excluded, since no other endpoint is usable), counts the pick as pending until its
    ``done``, which records the latency; an IDLE one is picked as a last resort, a FAILING
    one never."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=0), clock=clock, rng=random.Random(5))
    (a,) = eps("a")
    p.update([a])
    for exclude in ((), (a,)):
        got = p.pick(exclude=exclude)
        assert got is not None and got[0] is a
        assert p.snapshot()[0]["pending"] == 1
        got[1](OK, 0.004)
        assert p.snapshot()[0]["pending"] == 0
    assert p.snapshot()[0]["rtt_ms"] == pytest.approx(4.0)
    a.state = EndpointState.IDLE
    got = p.pick()
    assert got is not None and got[0] is a
    got[1](OK, 0.004)
    a.state = EndpointState.FAILING
    assert p.pick() is None and p.pick(exclude=(a,)) is None


# -- weighted round robin, ring hash ---------------------------------------------------------
def test_wrr_follows_weights_smoothly() -> None:
    """Weights 3:1 give 3 of every 4 picks, never three of the heavy one in a row twice."""
    w = WeightedRoundRobin()
    w.update(eps("a", "b", weights={"a": 3, "b": 1}))
    seq = []
    for _ in range(8):
        got = w.pick()
        assert got is not None
        seq.append(got[0].key)
    assert Counter(seq) == {"a": 6, "b": 2}
    assert "aaaa" not in "".join(seq)


def test_wrr_shares_hold_over_many_endpoints_and_skip_failing_ones() -> None:
    """Over 200 endpoints of weights 1..4 every endpoint gets its weight's share of full
    cycles exactly; a FAILING endpoint gets no pick and the rest keep their proportions;
    ``exclude`` is avoided while another endpoint is usable, and taken when it is the only
    one; when it recovers it gets no burst of picks it missed."""
    names = [f"e{i}" for i in range(200)]
    weights = {n: 1 + i % 4 for i, n in enumerate(names)}
    w = WeightedRoundRobin()
    endpoints = eps(*names, weights=weights)
    w.update(endpoints)
    total = sum(weights.values())

    def cycle(k: int, exclude: tuple[Endpoint, ...] = ()) -> Counter[str]:
        got: Counter[str] = Counter()
        for _ in range(k):
            picked = w.pick(exclude=exclude)
            assert picked is not None
            got[picked[0].key] += 1
        return got

    assert cycle(total * 3) == {n: 3 * wt for n, wt in weights.items()}
    endpoints[1].state = EndpointState.FAILING  # weight 2
    shares = cycle((total - 2) * 2)
    assert "e1" not in shares and shares == {
        n: 2 * wt for n, wt in weights.items() if n != "e1"}
    endpoints[1].state = EndpointState.READY
    # its share of the next cycle (one less when the window ends before its second turn:
    # the endpoints' turns start at random points), never a burst of the turns it missed
    assert cycle(total)["e1"] in (1, 2)
    picked = w.pick(exclude=(endpoints[0],))
    assert picked is not None and picked[0] is not endpoints[0]
    only = eps("x", "y")
    w.update(only)
    only[1].state = EndpointState.FAILING
    picked = w.pick(exclude=(only[0],))
    assert picked is not None and picked[0] is only[0]  # excluded, but the only one usable
    only[0].state = EndpointState.FAILING
    assert w.pick() is None
    w.update([])
    assert w.pick() is None


def test_wrr_prefers_ready_endpoints_to_connecting_ones() -> None:
    """An endpoint still connecting is taken only when no READY one is usable (as round
    robin), its turn passing meanwhile (no burst once READY); with every endpoint
    connecting, the weights' shares hold."""
    w = WeightedRoundRobin()
    endpoints = eps("a", "b", "c", weights={"a": 1, "b": 1, "c": 2})
    w.update(endpoints)
    for ep in endpoints:
        ep.state = EndpointState.IDLE
    got = Counter(w.pick()[0].key for _ in range(40))  # type: ignore[index]
    assert got == {"a": 10, "b": 10, "c": 20}
    endpoints[0].state = EndpointState.READY
    assert {w.pick()[0].key for _ in range(20)} == {"a"}  # type: ignore[index]
    for ep in endpoints:
        ep.state = EndpointState.READY
    assert Counter(w.pick()[0].key for _ in range(40)) == {  # type: ignore[index]
        "a": 10, "b": 10, "c": 20}


def test_wrr_first_turns_differ_between_clients() -> None:
    """Clients made together do not all send their first calls to the same endpoint: each
    one's endpoints start at random points of their first turn (as RoundRobin starts at a
    random position)."""
    names = [f"e{i}" for i in range(10)]
    firsts = set()
    for seed in range(20):
        w = WeightedRoundRobin(rng=random.Random(seed))
        w.update(eps(*names))
        got = w.pick()
        assert got is not None
        firsts.add(got[0].key)
    assert len(firsts) >= 5, firsts


def test_wrr_keeps_its_place_across_updates() -> None:
    """An update that adds an endpoint keeps the others' turns: the newcomer gets its
    share from then on, and an endpoint whose weight changed gets its new one."""
    w = WeightedRoundRobin()
    ab = eps("a", "b", weights={"a": 2, "b": 1})
    w.update(ab)
    first = [w.pick()[0].key for _ in range(3)]  # type: ignore[index]
    assert Counter(first) == {"a": 2, "b": 1}
    w.update([*ab, *eps("c", weights={"c": 3})])
    nxt = Counter(w.pick()[0].key for _ in range(60))  # type: ignore[index]
    want = {"a": 20, "b": 10, "c": 30}  # within one pick: the window starts mid-cycle
    assert set(nxt) == set(want) and all(abs(nxt[k] - v) <= 1 for k, v in want.items()), nxt
    w.update(eps("a", "b", weights={"a": 1, "b": 1}))
    assert Counter(w.pick()[0].key for _ in range(10)) == {"a": 5, "b": 5}  # type: ignore[index]


def test_ring_hash_affinity_and_minimal_movement() -> None:
    """A key keeps its endpoint; adding a fourth endpoint moves only about a quarter of keys."""
    r = RingHash(rng=random.Random(1))
    three = eps("a", "b", "c")
    r.update(three)

    def owner(k: str) -> str:
        got = r.pick(k)
        assert got is not None
        return got[0].key

    keys = [f"user-{i}" for i in range(2000)]
    before = {k: owner(k) for k in keys}
    assert all(owner(k) == before[k] for k in keys[:100])
    assert min(Counter(before.values()).values()) > 450  # roughly even
    r.update([*three, *eps("d")])
    moved = sum(owner(k) != before[k] for k in keys)
    assert 0.15 < moved / len(keys) < 0.35
    # A failing owner hands its keys to the next endpoint on the ring.
    three[0].state = EndpointState.FAILING
    assert all(owner(k) != "a" for k in keys[:200])


@pytest.mark.parametrize("replicas", [0, math.nan, True, 2.5, "100"])
def test_ring_hash_replicas_per_weight_is_a_count(replicas: object) -> None:
    """NaN passed ``< 1`` and failed later in ``update()`` (``range(nan)``); ``True`` was
    one point per unit of weight. Refused at construction, quoted."""
    with pytest.raises(ConfigError, match="replicas_per_weight") as err:
        RingHash(replicas)  # type: ignore[arg-type]
    assert repr(replicas) in str(err.value)


# -- outlier ejection ----------------------------------------------------------------------
def test_consecutive_failures_eject_then_probe_decides() -> None:
    """5 failures in a row eject; after base_ejection_s one probe: success restores it."""
    clock = Clock()
    events: list[tuple[str, bool]] = []
    eb = EjectingBalancer(RoundRobin(random.Random(0)),
                          OutlierOptions(consecutive_failures=5, base_ejection_s=10,
                                         max_ejection_percent=100),
                          clock=clock, on_change=lambda k, e: events.append((k, e)))
    a, b = eps("a", "b")
    eb.update([a, b])

    def call(code_for: dict[str, grpc.StatusCode]) -> str:
        got = eb.pick()
        assert got is not None
        got[1](code_for.get(got[0].key, OK), 0.001)
        return got[0].key

    while events == []:
        call({"a": UNAVAILABLE})
    assert events == [("a", True)] and eb.ejected() == ["a"]
    assert {call({}) for _ in range(10)} == {"b"}
    clock.t += 10
    assert call({}) == "a"  # the single probe, and it succeeds
    assert events[-1] == ("a", False) and eb.ejected() == []


def test_failed_probe_ejects_for_longer() -> None:
    """A failing probe ejects again at once, for base_ejection_s times the ejection count."""
    clock = Clock()
    eb = EjectingBalancer(RoundRobin(), OutlierOptions(consecutive_failures=1,
                                                       base_ejection_s=10,
                                                       max_ejection_percent=100), clock=clock)
    a, b = eps("a", "b")
    eb.update([a, b])
    while eb.ejected() != ["a"]:
        got = eb.pick()
        assert got is not None
        got[1](UNAVAILABLE if got[0].key == "a" else OK, 0.001)
    clock.t += 10
    got = eb.pick()
    assert got is not None and got[0].key == "a"  # probe
    got[1](UNAVAILABLE, 0.001)
    assert eb.ejected() == ["a"]
    clock.t += 19.9
    got = eb.pick()
    assert got is not None and got[0].key == "b"
    got[1](OK, 0.001)
    clock.t += 0.2
    got = eb.pick()
    assert got is not None and got[0].key == "a"


def test_failure_rate_rule() -> None:
    """A failure rate at or over the threshold across a full window ejects."""
    eb = EjectingBalancer(RoundRobin(), OutlierOptions(consecutive_failures=100,
                                                       failure_rate=0.5,
                                                       failure_rate_window=10,
                                                       max_ejection_percent=100))
    (a,) = eps("a")
    eb.update([a])
    for i in range(10):
        got = eb.pick()
        assert got is not None
        got[1](UNAVAILABLE if i % 2 else OK, 0.001)
    assert eb.ejected() == ["a"]
    # nothing left in rotation: the ejected endpoint still takes calls (panic routing)
    got = eb.pick()
    assert got is not None and got[0] is a and eb.panic_picks == 1


def test_max_ejection_percent_caps_ejections() -> None:
    """With max 50 % of 4 endpoints and failures that are not total (every third call of
    the failing endpoints succeeds), a third failing endpoint stays in rotation."""
    eb = EjectingBalancer(RoundRobin(), OutlierOptions(consecutive_failures=1,
                                                       max_ejection_percent=50))
    endpoints = eps("a", "b", "c", "d")
    eb.update(endpoints)
    seen: Counter[str] = Counter()
    for _ in range(40):
        got = eb.pick()
        assert got is not None
        seen[got[0].key] += 1
        ok = got[0].key == "d" or seen[got[0].key] % 3 == 1
        got[1](OK if ok else UNAVAILABLE, 0.001)
    assert len(eb.ejected()) == 2


def test_max_ejection_percent_zero_still_lets_one_endpoint_be_ejected() -> None:
    """``max_ejection_percent=0``: one endpoint may always be ejected (the docstring, and
    Envoy: "will eject at least one host regardless of the value"); 0 ejected none."""
    clock = Clock()
    eb = EjectingBalancer(RoundRobin(rng=random.Random(0)),
                          OutlierOptions(max_ejection_percent=0), clock=clock)
    eb.update(eps("a", "b", "c", "d"))
    failed = 0
    while failed < 5:  # five calls on "a" fail; the calls elsewhere never end
        got = eb.pick()
        assert got is not None
        if got[0].key == "a":
            got[1](UNAVAILABLE, 0.001)
            failed += 1
    assert eb.ejected() == ["a"]


def test_application_errors_do_not_eject() -> None:
    """NOT_FOUND and INVALID_ARGUMENT are the request's fault, not the endpoint's."""
    eb = EjectingBalancer(RoundRobin(), OutlierOptions(consecutive_failures=2,
                                                       max_ejection_percent=100))
    (a,) = eps("a")
    eb.update([a])
    for _ in range(10):
        got = eb.pick()
        assert got is not None
        got[1](grpc.StatusCode.NOT_FOUND, 0.001)
    assert eb.ejected() == []


def test_outlier_bad_values() -> None:
    """Out-of-range ejection options fail at construction with the value quoted."""
    with pytest.raises(ConfigError, match="0"):
        OutlierOptions(consecutive_failures=0)
    with pytest.raises(ConfigError, match=re.escape("1.5")):
        OutlierOptions(failure_rate=1.5)
    with pytest.raises(ConfigError, match="150"):
        OutlierOptions(max_ejection_percent=150)


def test_method_table_most_specific_pattern_wins() -> None:
    """Exact names beat globs; short, full and slash-less forms all match."""
    t = MethodMatcher({"OrderService/*": 1, "OrderService/PlaceOrder": 2, "*/Get*": 3}, 0)
    assert t.lookup("/ecom.v1.OrderService/PlaceOrder") == 2
    assert t.lookup("/ecom.v1.OrderService/ListOrders") == 1
    assert t.lookup("/ecom.v1.UserService/GetUser") == 3
    assert t.lookup("/other.Svc/Do") == 0


def test_p2c_unsampled_endpoint_competes_at_its_peers_level() -> None:
    """Endpoints of the first answer that got no sample yet (b: lost its first comparison;
    c: not READY) compete at their peers' measured level instead of the 30 ms default,
    which lost every comparison to peers measured at 1 ms and starved them for good."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=0), clock=clock, rng=random.Random(3))
    a, b, c = eps("a", "b", "c")
    c.state = EndpointState.FAILING
    p.update([a, b, c])
    for _ in range(300):
        got = p.pick()
        assert got is not None
        got[1](OK, 0.001)
        clock.t += 0.001
    c.state = EndpointState.READY
    picks: Counter[str] = Counter()
    for _ in range(900):
        got = p.pick()
        assert got is not None
        picks[got[0].key] += 1
        got[1](OK, 0.001)
        clock.t += 0.001
    assert min(picks[k] for k in "abc") / 900 > 0.2, picks


def test_p2c_charges_fast_server_faults_like_overload() -> None:
    """An endpoint failing fast with UNKNOWN (e.g. a broken database session) does not win
    the load comparison because its failures are quick."""
    clock = Clock()
    p = P2C(P2COptions(slow_start_s=0), clock=clock, rng=random.Random(4))
    p.update(eps("ok", "broken"))
    picks: Counter[str] = Counter()
    for _ in range(1000):
        got = p.pick()
        assert got is not None
        picks[got[0].key] += 1
        broken = got[0].key == "broken"
        got[1](grpc.StatusCode.UNKNOWN if broken else OK, 0.0001 if broken else 0.005)
        clock.t += 0.001
    assert picks["broken"] / 1000 < 0.2


def test_endpoint_failing_every_call_is_ejected_beyond_the_cap_while_a_peer_succeeds() -> None:
    """The cap protects against a shared cause (every endpoint failing at once); an endpoint
    that fails every call while a peer in rotation succeeds is ejected even at the cap, and
    the last succeeding endpoint is never ejected by this rule."""
    eb = EjectingBalancer(RoundRobin(), OutlierOptions(consecutive_failures=3,
                                                       max_ejection_percent=50))
    endpoints = eps("a", "b", "c", "d")
    eb.update(endpoints)
    # 120 picks: the one beyond the cap needs its peers to hold a window's calls (20)
    # between them (08c2dab); with 80, a round robin starting at some positions had not
    # given d that many yet (9 of 40 seeds; the start is random)
    for _ in range(120):
        got = eb.pick()
        assert got is not None
        got[1](OK if got[0].key == "d" else UNAVAILABLE, 0.001)
    assert sorted(eb.ejected()) == ["a", "b", "c"]
    for _ in range(20):
        got = eb.pick()
        assert got is not None and got[0].key == "d"
        got[1](OK, 0.001)


def test_cap_holds_when_every_endpoint_fails() -> None:
    """With no endpoint succeeding (a shared dependency down), at most the cap is ejected."""
    eb = EjectingBalancer(RoundRobin(), OutlierOptions(consecutive_failures=2,
                                                       max_ejection_percent=50))
    eb.update(eps("a", "b", "c", "d"))
    for _ in range(80):
        got = eb.pick()
        assert got is not None
        got[1](UNAVAILABLE, 0.001)
    assert len(eb.ejected()) == 2
