"""An uncapped backoff (``max_delay_s=math.inf``) whose growth passes the largest float
draws finite delays.

``Backoff.cap_s`` turned an ``OverflowError`` of ``multiplier ** (retry - 1)`` into
``max_delay_s``, and a product past the largest float (``base * multiplier ** n``, no
exception) into ``inf``: with the cap infinite, ``multiplier=1e200`` made the third
delay infinite, the default ``multiplier=2.0`` the 1,100th (a JetStream consumer's
``nak`` delay grows with the delivery count), and ``delay_s`` drew ``uniform(0, inf)``:
``inf``, or NaN when the draw was 0. The bound is now the largest finite float.
"""

from __future__ import annotations

import math
import random
import sys

import pytest

from meshkit.resilience import Backoff


class _Draws(random.Random):
    """A random source whose every draw is ``value`` (0: the jitter's NaN case)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self._value = value

    def random(self) -> float:
        return self._value


CASES = [
    pytest.param(0.025, 1e200, 3, id="huge-multiplier-pow-overflows"),
    pytest.param(0.025, 2.0, 1100, id="default-multiplier-many-retries"),
    pytest.param(10.0, 1e308, 2, id="product-past-float-max"),
]


@pytest.mark.parametrize(("base", "multiplier", "retry"), CASES)
def test_an_uncapped_cap_stays_finite(base: float, multiplier: float, retry: int) -> None:
    """The cap of an uncapped backoff past a float's range is the largest finite float."""
    backoff = Backoff(base_delay_s=base, multiplier=multiplier, max_delay_s=math.inf)
    assert backoff.cap_s(retry) == sys.float_info.max


@pytest.mark.parametrize(("base", "multiplier", "retry"), CASES)
@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0 - 2**-53], ids=["zero", "half", "top"])
def test_an_uncapped_jittered_delay_is_finite(base: float, multiplier: float, retry: int,
                                              draw: float) -> None:
    """Every jittered draw under that cap is a finite, non-negative number (never NaN)."""
    backoff = Backoff(base_delay_s=base, multiplier=multiplier, max_delay_s=math.inf,
                      rng=_Draws(draw))
    delay = backoff.delay_s(retry)
    assert math.isfinite(delay) and delay >= 0


def test_a_finite_cap_still_caps_an_overflowing_growth() -> None:
    """A finite ``max_delay_s`` is still the cap when the growth overflows."""
    assert Backoff(multiplier=1e200, max_delay_s=3.0).cap_s(3) == 3.0
    assert Backoff(base_delay_s=10.0, multiplier=1e308, max_delay_s=30.0).cap_s(2) == 30.0


def test_growth_within_range_is_unchanged() -> None:
    """Below the float range the uncapped delays are as before: base * multiplier**(n-1)."""
    backoff = Backoff(base_delay_s=0.5, multiplier=2.0, max_delay_s=math.inf)
    assert [backoff.cap_s(n) for n in (1, 2, 3, 11)] == [0.5, 1.0, 2.0, 512.0]
