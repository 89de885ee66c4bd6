"""P2C and an endpoint holding a silent stream: a server-streaming watch whose server
says nothing until an event (minutes, hours), or a long upload. Such a stream is
pending (an outstanding request, until its first response message) and gives no
outcome for as long as it is silent, which is no sign of a wedged endpoint. The hold of
the estimate while calls are pending (b7811e5, for a wedged endpoint's unary calls)
must not freeze the load of an endpoint whose only pending call is such a stream: its
estimate still decays, so P2C, which avoids it for the stream's ``pending`` count, tries
it again, as the module docstring promises ("an endpoint holding idle subscriptions is
not read as loaded by them and starved of calls")."""

from __future__ import annotations

import random

import grpc

from meshkit.balancer import P2C, Endpoint, P2COptions
from meshkit.balancer._endpoint import Done
from tests.support.balancing import Clock
from tests.support.balancing import ready_endpoint as _ep

OK = grpc.StatusCode.OK


def _warm(p: P2C, clock: Clock, n: int = 200) -> None:
    for _ in range(n):
        got = p.pick()
        assert got is not None
        clock.t += 0.01
        got[1](OK, 0.01)


def _land_on(p: P2C, ep: Endpoint, stream: bool) -> Done:
    """A pick (a stream's with ``stream``) that lands on ``ep``: calls held on the
    other endpoints until it does (then ended at once, 10 ms)."""
    held: list[Done] = []
    for _ in range(100):
        got = p.pick_stream() if stream else p.pick()
        assert got is not None
        if got[0] is ep:
            for done in held:
                done(OK, 0.01)
            return got[1]
        held.append(got[1])
    raise AssertionError(f"no pick landed on {ep.key}")


def test_an_endpoint_holding_a_silent_watch_still_gets_calls() -> None:
    """Two endpoints answering in 10 ms; a watch is opened on ``a`` and stays silent
    for five minutes while calls go one after another (50 a second, each answered in
    10 ms). ``a``'s load counts the watch (``pending`` 1) so P2C avoids it, and the
    decay of its estimate (decay_s 10 s) must bring it back: before this test's fix the
    estimate was held while the watch was pending and ``a`` got no call at all in the
    five minutes (it got about one every few seconds before b7811e5)."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(5), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    _warm(p, clock)
    watch = _land_on(p, a, stream=True)
    on_a = 0
    for _ in range(15_000):  # 300 s at 50 calls/s
        clock.t += 0.02
        got = p.pick()
        assert got is not None
        on_a += got[0] is a
        got[1](OK, 0.01)
    assert on_a >= 10, f"{on_a} of 15000 calls went to the endpoint holding the watch"
    watch(OK, -1.0)  # it ends (no latency sample)
    assert p.load(a) > 0


def test_a_slow_answer_beside_a_silent_watch_is_not_held_for_the_watch_s_life() -> None:
    """``a`` holds a silent watch, then answers one call slowly (1 s: a pause). It is
    avoided, as it should be, until its estimate decays (decay_s 10 s: a minute or so
    beside a 10 ms peer), then tried again; before the fix its load stayed at 1 s x 2
    for as long as the watch was silent."""
    clock = Clock()
    p = P2C(P2COptions(decay_s=10.0, slow_start_s=0.0), rng=random.Random(6), clock=clock)
    a, b = _ep("a"), _ep("b")
    p.update([a, b])
    _warm(p, clock)
    watch = _land_on(p, a, stream=True)
    slow = _land_on(p, a, stream=False)  # answers in 1 s
    clock.t += 1.0
    slow(OK, 1.0)
    on_a_first = on_a_late = 0
    for i in range(15_000):  # 300 s at 50 calls/s
        clock.t += 0.02
        got = p.pick()
        assert got is not None
        if got[0] is a:
            if i < 1500:
                on_a_first += 1
            else:
                on_a_late += 1
        got[1](OK, 0.01)
    assert on_a_first <= 2, f"{on_a_first} calls on a in the 30 s after its 1 s answer"
    assert on_a_late >= 10, f"{on_a_late} calls on a after that (4.5 minutes)"
    watch(OK, -1.0)
