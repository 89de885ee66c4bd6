"""Balancers in workers forked from one process.

A balancer's default random source (P2C's two choices, RoundRobin's start position,
WeightedRoundRobin's first turns, RingHash's keyless picks) was a ``random.Random()``
seeded once, when the balancer was built; one built before a pre-fork server forks its
workers gave every worker the same state, so the workers picked the same endpoints in
the same order, in lock-step (as ``Backoff``'s jitter did: ``tests/resilience/
test_backoff_fork.py``). A generator the caller passed is the caller's and is left alone
(a seeded one picks the same in every worker, which also shows the comparison can see
equal picks).

The fork runs in a subprocess of its own: the test process has threads a fork would copy.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.support.forking import forked_reports

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]

_SCRIPT = textwrap.dedent("""
    import random, sys
    from tests.support.forking import report_from_workers
    from meshkit.balancer import P2C, RingHash, RoundRobin, WeightedRoundRobin
    from meshkit.balancer._endpoint import Endpoint, EndpointState
    from meshkit.discovery import Instance

    given = sys.argv[1] == "given"

    def rng():
        return {"rng": random.Random(7)} if given else {}

    def endpoints():
        eps = []
        for i in range(1024):
            ep = Endpoint(Instance(service="svc", instance_id=f"i{i:04}", host="127.0.0.1",
                                   port=2000 + i, weight=1 + i % 3))
            ep.state = EndpointState.READY
            eps.append(ep)
        return eps

    # balancers of a channel dialled before the workers are forked
    balancers = {"p2c": P2C(**rng()), "rr": RoundRobin(**rng()),
                 "wrr": WeightedRoundRobin(**rng()), "ring": RingHash(**rng())}
    for b in balancers.values():
        b.update(endpoints())
        for _ in range(3):  # in use in the parent already
            b.pick()

    def picks():
        return ";".join(name + "=" + ",".join(b.pick()[0].key for _ in range(12))
                        for name, b in balancers.items())

    report_from_workers(picks)
""")


def _run(rng: str) -> dict[str, dict[str, str]]:
    """Each worker's picks, by balancer: ``{worker: {balancer: picks}}``."""
    lines = forked_reports(_SCRIPT, rng, timeout_s=50)
    return {worker: dict(part.split("=", 1) for part in value.split(";"))
            for worker, value in lines.items()}


def test_workers_forked_from_one_process_pick_apart() -> None:
    """Balancers built with their default random source before a fork pick differently in
    the forked workers (all three picked the same twelve endpoints in the same order)."""
    picks = _run("default")
    seqs = {name: {worker: got[name] for worker, got in picks.items()}
            for name in ("p2c", "rr", "wrr", "ring")}
    # no two workers in lock-step (twelve random picks of 1024 endpoints); a round
    # robin's twelve follow from its position alone: two of three workers may share
    # one (3 in 1024), all three (1 in a million) may not
    apart = {"p2c": 3, "rr": 2, "wrr": 3, "ring": 3}
    assert {name: got for name, got in seqs.items()
            if len(set(got.values())) < apart[name]} == {}


def test_a_generator_the_caller_gave_is_left_alone_in_workers() -> None:
    """A balancer given a seeded generator picks the same in every worker: the caller's
    generator is never reseeded."""
    picks = _run("given")
    for name in ("p2c", "rr", "wrr", "ring"):
        seqs = {worker: got[name] for worker, got in picks.items()}
        assert len(set(seqs.values())) == 1, (name, seqs)
