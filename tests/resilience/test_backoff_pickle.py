"""Retry jitter of options handed to processes started by pickling them.

``multiprocessing``'s ``spawn`` and ``forkserver`` start methods (the default on macOS and
Windows, and on Linux from Python 3.14) hand a worker its arguments pickled:
``ProcessPoolExecutor(initializer=start_worker, initargs=(OPTIONS,))`` with ``OPTIONS =
DialOptions(...)``. ``Backoff``'s own generator (``rng`` not given) pickled with its
state, so every worker unpickled the same generator and drew the same "random" delays:
after an outage every worker's retries fired in lock-step, which full jitter exists to
break up (the fork case, test_backoff_fork.py, was fixed by reseeding in the child; a
pickled copy is no fork). ``copy.deepcopy`` copied the state the same way.

A generator the caller gave is the caller's: pickled with its state, as before (a seeded
one draws the same in every copy, which also shows the comparison can see equal draws).
"""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Callable

import pytest

import meshkit
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy


def _draws(options: meshkit.DialOptions) -> tuple[float, ...]:
    assert options.retry is not None and options.retry.default is not None
    backoff = options.retry.default.backoff
    return tuple(backoff.delay_s(n) for n in range(1, 9))


def _pickled(options: meshkit.DialOptions) -> meshkit.DialOptions:
    copied: meshkit.DialOptions = pickle.loads(pickle.dumps(options))
    return copied


@pytest.mark.parametrize("copy_", [_pickled, copy.deepcopy], ids=["pickle", "deepcopy"])
@pytest.mark.parametrize("retry", [
    RetryOptions(),  # the default policy's own Backoff()
    RetryOptions(default=RetryPolicy(idempotent=True, backoff=Backoff(base_delay_s=0.1))),
], ids=["default", "own-backoff"])
def test_copies_of_options_draw_their_own_jitter(
        copy_: Callable[[meshkit.DialOptions], meshkit.DialOptions],
        retry: RetryOptions) -> None:
    options = meshkit.DialOptions(insecure=True, retry=retry)
    workers = [copy_(options) for _ in range(3)]  # what three spawned workers get
    draws = {_draws(w) for w in workers}
    assert len(draws) == 3, draws  # no two in lock-step
    again = copy_(workers[0])
    assert _draws(again) != _draws(copy_(workers[0]))
    # a copy is still a Backoff of the same shape, equal to the original
    assert workers[0].retry == options.retry
    assert all(0.0 <= d <= 1.0 for d in _draws(workers[1]))


def test_a_generator_the_caller_gave_is_copied_with_its_state() -> None:
    given = Backoff(rng=random.Random(7))
    options = meshkit.DialOptions(insecure=True, retry=RetryOptions(
        default=RetryPolicy(idempotent=True, backoff=given)))
    assert len({_draws(_pickled(options)) for _ in range(3)}) == 1
