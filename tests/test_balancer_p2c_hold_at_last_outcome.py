"""P2C's hold of the estimate while unary calls are pending (b7811e5) is at the estimate
at the endpoint's *last outcome* since it got busy, not only at the time it got busy:
an endpoint that answered a call slowly (or had one cancelled after long) while other
calls stayed pending, then stopped answering, keeps that slow estimate in its load for
as long as its calls are pending, as the module docstring says."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import P2C, Endpoint, P2COptions
from meshkit.balancer._endpoint import Done
from tests.support.balancing import Clock
from tests.support.balancing import ready_endpoint as _ep

OK = grpc.StatusCode.OK
CANCELLED = grpc.StatusCode.CANCELLED


def _setup() -> tuple[P2C, Clock, Endpoint, Endpoint]:
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(7), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    for _ in range(100):  # warm: both answer in 10 ms
        got = p.pick()
        assert got is not None
        clock.t += 0.01
        got[1](OK, 0.01)
    return p, clock, a, b


def _on(p: P2C, ep: Endpoint) -> Done:
    """A unary pick that lands on ``ep`` (picks on the other held, then answered)."""
    held: list[Done] = []
    for _ in range(100):
        got = p.pick()
        assert got is not None
        if got[0] is ep:
            for done in held:
                done(OK, 0.01)
            return got[1]
        held.append(got[1])
    raise AssertionError(f"no pick landed on {ep.key}")


def test_a_slow_answer_while_calls_stay_pending_is_held() -> None:
    p, clock, a, _b = _setup()
    _stuck = _on(p, a)  # never answered
    assert p.load(a) < 0.1  # busy at 10 ms: held there
    slow = _on(p, a)
    clock.t += 1.0
    slow(OK, 1.0)  # its last outcome: 1 s
    clock.t += 60.0  # six time constants, no outcome, one call still pending
    assert p.load(a) >= 1.9, p.snapshot()


def test_a_call_cancelled_after_long_while_calls_stay_pending_is_held() -> None:
    p, clock, a, _b = _setup()
    _stuck = _on(p, a)
    assert p.load(a) < 0.1
    gone = _on(p, a)
    clock.t += 2.0
    gone(CANCELLED, 2.0)  # the endpoint took at least 2 s
    clock.t += 60.0
    assert p.load(a) >= 3.9, p.snapshot()
