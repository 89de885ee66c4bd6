"""P2C's two-draw pick decays its two draws' RTT estimates inline (no ``_Stat.estimate``
frame): each drawn endpoint's estimate and its stamp move exactly as ``estimate(now)``
moves them, an endpoint without a sample keeps none (its prior compared), and the picks
are those of the loads that ``estimate`` gives, whatever the clock's steps."""

from __future__ import annotations

import copy
import random

import grpc

from meshkit.balancer import P2C, Endpoint, EndpointState
from meshkit.discovery import Instance

OK = grpc.StatusCode.OK


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _ep(i: int) -> Endpoint:
    e = Endpoint(Instance(service="svc", instance_id=f"e{i}", host="127.0.0.1", port=2000 + i))
    e.state = EndpointState.READY
    return e


def test_drawn_estimates_decay_as_estimate_does() -> None:
    """400 picks over 4 endpoints (one never answered), the clock stepping 0 to 3 s
    between them: after each pick, every endpoint's ``rtt_s`` and ``stamp`` equal those
    of a copy taken before it, on which ``estimate(now)`` was called for the drawn ones
    (or left alone: the others, and the one without a sample)."""
    clock = Clock()
    p = P2C(rng=random.Random(7), clock=clock)
    eps = [_ep(i) for i in range(4)]
    p.update(eps)
    steps = random.Random(3)
    for i in range(3):  # samples for e0..e2; e3 never answers
        for _ in range(40):
            got = p.pick(None, ())
            assert got is not None
            if got[0].key == f"e{i}":
                got[1](OK, 0.01 * (i + 1))
                break
            got[1](grpc.StatusCode.CANCELLED, 0.0)  # neutral: no sample
    decayed = 0
    for _ in range(400):
        clock.t += steps.choice([0.0, 0.001, 0.5, 3.0])
        before = copy.deepcopy({k: (s.rtt_s, s.stamp) for k, s in p._stats.items()})
        rng_state = p._rng.getstate()
        got = p.pick(None, ())
        assert got is not None
        # the two drawn, as pick draws them (the same random numbers again)
        p._rng.setstate(rng_state)
        n = len(eps)
        i, j = int(p._rng.random() * n), int(p._rng.random() * (n - 1))
        drawn = {eps[i].key, eps[j + 1 if j >= i else j].key}
        for key, st in p._stats.items():
            rtt, stamp = before[key]
            if key in drawn and rtt >= 0:
                ref = copy.copy(st)
                ref.rtt_s, ref.stamp = rtt, stamp
                want = ref.estimate(clock.t, 0.0)
                assert (st.rtt_s, st.stamp) == (want, ref.stamp), key
                decayed += st.stamp != stamp
            else:
                assert (st.rtt_s, st.stamp) == (rtt, stamp), key
        got[1](OK, 0.02)
    assert decayed > 50  # the inline decay ran (steps of 0 leave it alone)


def test_an_outcome_sets_the_floor_to_the_new_estimate() -> None:
    """Each outcome (a peak that jumps the estimate up, or one averaged in) leaves the
    floor that ``held()`` reads while calls are pending at the new estimate, and the
    stamp at the outcome's time."""
    clock = Clock()
    p = P2C(rng=random.Random(1), clock=clock)
    p.update([_ep(0)])
    st = p._stats["e0"]
    for latency_s, step in ((0.05, 0.0), (0.01, 0.2), (0.002, 1.0), (0.2, 0.5), (0.03, 0.1)):
        clock.t += step
        got = p.pick(None, ())
        assert got is not None
        got[1](OK, latency_s)
        assert st.floor == st.rtt_s > 0
        assert st.stamp == clock.t
    assert st.rtt_s < 0.2  # the last one averaged in, not a peak
