"""Retry jitter in workers forked from one process.

``Backoff``'s default ``rng`` is a ``random.Random()`` seeded once, when the policy is
built. Options built at import time of a pre-fork server (``OPTIONS = DialOptions(retry=
RetryOptions(...))`` at module level, then gunicorn-style workers forked) gave every
worker the same generator state: each drew the same "random" delays, so after an outage
every worker's retries fired in lock-step, the thundering herd full jitter exists to
break up (AWS Architecture Blog, "Exponential Backoff And Jitter"; CPython reseeds its own
module-level generator in a forked child for this reason, ``Lib/random.py``; meshkit's
registries reseed theirs, README "Discovery"). A generator the caller passed is the
caller's and is left alone (a seeded one draws the same in every worker, which also shows
the comparison can see equal draws).

The fork runs in a subprocess of its own: the test process has threads a fork would copy.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.support.forking import forked_reports

_SCRIPT = textwrap.dedent("""
    import random, sys
    from tests.support.forking import report_from_workers
    import meshkit
    from meshkit.resilience import Backoff, RetryOptions, RetryPolicy

    given = sys.argv[1] == "given"
    # module-level options of a pre-fork server, built before its workers are forked
    backoff = Backoff(rng=random.Random(7)) if given else Backoff()
    OPTIONS = meshkit.DialOptions(insecure=True, retry=RetryOptions(
        default=RetryPolicy(idempotent=True, backoff=backoff)))
    DEFAULT = RetryOptions()  # the default policy dial() retries with

    def draws():
        policies = (OPTIONS.retry.default, DEFAULT.default)
        return ",".join(repr(p.backoff.delay_s(n)) for p in policies for n in range(1, 9))

    report_from_workers(draws)
""")


def _run(rng: str) -> dict[str, list[float]]:
    lines = forked_reports(_SCRIPT, rng, timeout_s=45)
    return {name: [float(x) for x in value.split(",")] for name, value in lines.items()}


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_workers_forked_from_one_process_draw_different_retry_jitter() -> None:
    draws = _run("default")
    for name, values in draws.items():
        assert len(values) == 16 and all(0.0 <= v <= 1.0 for v in values), (name, values)
    # each policy's eight draws (the options' own Backoff(), and RetryOptions()' default)
    for part in (slice(0, 8), slice(8, 16)):
        seqs = {name: tuple(values[part]) for name, values in draws.items()}
        assert len(set(seqs.values())) == 3, seqs  # no two workers in lock-step


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_generator_the_caller_gave_is_left_alone_in_workers() -> None:
    draws = _run("given")
    given = {tuple(values[:8]) for values in draws.values()}
    assert len(given) == 1, draws  # the caller's seeded generator: the same in each
    defaults = {tuple(values[8:]) for values in draws.values()}
    assert len(defaults) == 3, draws
