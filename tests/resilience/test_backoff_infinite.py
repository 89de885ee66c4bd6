"""A backoff whose delays grow without end and without a cap is refused when built.

``Backoff(multiplier=math.inf, max_delay_s=math.inf)`` took both fields' "no limit" and
made every delay after the first infinite: ``cap_s(2)`` was ``inf``, ``delay_s(2)`` drew
``uniform(0, inf)`` (``inf``, or NaN when the draw is 0), and a call without a deadline
that failed twice slept in its backoff for ever (with a deadline the retry was merely
given up). Either one alone is fine: an infinite multiplier under a finite cap jumps to
the cap at the second retry, an infinite cap under a finite multiplier grows forever
but finitely.
"""

from __future__ import annotations

import math

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience import Backoff


def test_an_infinite_multiplier_without_a_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_delay_s") as info:
        Backoff(multiplier=math.inf, max_delay_s=math.inf)
    assert "inf" in str(info.value)


@pytest.mark.parametrize(("multiplier", "max_delay_s"), [(math.inf, 2.0), (2.0, math.inf)])
def test_either_limit_alone_draws_finite_delays(multiplier: float, max_delay_s: float) -> None:
    backoff = Backoff(base_delay_s=0.5, multiplier=multiplier, max_delay_s=max_delay_s)
    assert all(math.isfinite(backoff.delay_s(n)) for n in range(1, 12))
    assert backoff.cap_s(2) == (2.0 if multiplier == math.inf else 1.0)


def test_a_zero_base_needs_no_cap() -> None:
    """No delay to grow: every delay is 0, whatever the multiplier."""
    assert Backoff(base_delay_s=0.0, multiplier=math.inf, max_delay_s=math.inf).delay_s(5) == 0
