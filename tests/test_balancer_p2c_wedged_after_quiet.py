"""P2C and an endpoint that wedges after the client was idle for a while (a nightly
job's client, a service called in bursts): every estimate decayed towards zero
meanwhile (decay_s 10 s: by exp(-12) after two minutes), so b7811e5's hold of the
estimate at its value when the endpoint got busy held it at about nothing, and the
wedged endpoint, its load ``~0 x (pending + 1)``, drew every call (2,998 of 3,000 in
the next minute). A unary call pending with no outcome since is a latency sample in the
making, as a cancelled one is (``_Stat._cancelled``): while unary calls are pending, the
load counts at least the time since the endpoint's last outcome."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import P2C, P2COptions
from meshkit.balancer._endpoint import Done
from tests.support.balancing import Clock
from tests.support.balancing import ready_endpoint as _ep

OK = grpc.StatusCode.OK


def test_an_endpoint_that_wedges_after_a_quiet_spell_draws_few_calls() -> None:
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(3), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    for _ in range(200):  # warm: both answer in 10 ms
        got = p.pick()
        assert got is not None
        clock.t += 0.01
        got[1](OK, 0.01)
    clock.t += 120.0  # the client is idle for two minutes; then a wedges
    hung: list[Done] = []
    for _ in range(3000):  # 60 s at 50 calls/s
        clock.t += 0.02
        got = p.pick()
        assert got is not None
        if got[0] is a:
            hung.append(got[1])
        else:
            got[1](OK, 0.01)
    assert len(hung) <= 20, f"{len(hung)} of 3000 calls hung on the wedged endpoint"


def test_a_busy_endpoint_answering_is_not_charged_for_its_pending_calls_age() -> None:
    """Two endpoints, each with calls in flight all the time (10 callers, 10 ms
    answers): both keep their share, the bound is the time since an endpoint's last
    outcome, reset at each."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(9), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    inflight: list[tuple[float, Done]] = []
    counts = {"a": 0, "b": 0}
    for _ in range(20_000):
        clock.t += 0.001
        while inflight and inflight[0][0] <= clock.t:
            _, done = inflight.pop(0)
            done(OK, 0.01)
        if len(inflight) < 10:
            got = p.pick()
            assert got is not None
            counts[got[0].key] += 1
            inflight.append((clock.t + 0.01, got[1]))
    assert min(counts.values()) > 0.35 * sum(counts.values()), counts


def test_an_endpoint_answering_beside_one_long_call_is_not_charged_for_its_age() -> None:
    """``a`` has one call out for 30 s (a legitimate long call) while it answers others
    in 10 ms, one every 20 ms: its load stays about its estimate times its pending
    calls, not 30 s (the time without an outcome restarts at each outcome)."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(9), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    for _ in range(100):
        got = p.pick()
        assert got is not None
        clock.t += 0.01
        got[1](OK, 0.01)

    def on_a() -> Done:
        held: list[Done] = []
        for _ in range(100):
            got = p.pick()
            assert got is not None
            if got[0] is a:
                for done in held:
                    done(OK, 0.01)
                return got[1]
            held.append(got[1])
        raise AssertionError("no pick landed on a")

    long_call = on_a()
    for _ in range(1500):  # 30 s
        clock.t += 0.02
        on_a()(OK, 0.01)
        assert p.load(a) < 0.1, p.snapshot()
    long_call(OK, 30.0)
