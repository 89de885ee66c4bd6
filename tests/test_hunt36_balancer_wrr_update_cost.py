"""WeightedRoundRobin.update (every discovery change, and every ejection or return under
outlier ejection, on the event loop) computed the least common multiple of every weight
before seeing it was too large for integer turns: with large weights (registry weights
up to 2**63 - 1) that number grows to tens of thousands of bits and each step costs its
size, quadratic in endpoints: 0.28-0.39 s for 3,000 endpoints, against 8-16 ms with
weights 1-4. The multiple is now given up on as soon as it passes the integer bound
(float turns, as before): large weights cost about what small ones do; the schedule is
the same."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from meshkit.balancer import Endpoint, EndpointState, WeightedRoundRobin
from meshkit.discovery import Instance


def _eps(n: int, weights: Callable[[int], int]) -> list[Endpoint]:
    out = []
    for i in range(n):
        ep = Endpoint(Instance(service="s", instance_id=f"i{i:05d}", host="127.0.0.1",
                               port=1 + i, weight=weights(i)))
        ep.state = EndpointState.READY
        out.append(ep)
    return out


def _best_update_s(eps: list[Endpoint]) -> float:
    wrr = WeightedRoundRobin(random.Random(1))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        wrr.update(eps)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.timeout(120)
def test_wrr_update_with_large_weights_costs_about_what_it_does_with_small_ones() -> None:
    rng = random.Random(3)
    n = 3000
    small = _best_update_s(_eps(n, lambda i: 1 + i % 4))
    large = _best_update_s(_eps(n, lambda _: rng.randrange(2**40, 2**63)))
    assert large / small < 8.0, (
        f"update over {n} endpoints: {large:.4f} s with large weights vs {small:.4f} s"
        " with weights 1-4")


def test_wrr_schedule_with_integer_and_float_turns_keeps_the_weights_shares() -> None:
    for weights in ([1, 2, 3, 4], [2**61, 3, 2**40 + 1]):
        eps = _eps(len(weights), lambda i, w=weights: w[i])  # type: ignore[misc]
        wrr = WeightedRoundRobin(random.Random(5))
        wrr.update(eps)
        total = sum(weights) if max(weights) < 100 else 0
        if total:
            got = Counter()
            for _ in range(total * 5):
                picked = wrr.pick()
                assert picked is not None
                got[picked[0].key] += 1
            assert [got[e.key] for e in eps] == [5 * w for w in weights]
        else:  # float turns: the heaviest takes nearly every pick
            picked = [wrr.pick() for _ in range(50)]
            assert all(p is not None and p[0] is eps[0] for p in picked)
