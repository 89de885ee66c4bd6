"""Medians of alternating rounds, and what a variant adds to a base measured in the same
rounds: the median of the per-round differences (a round runs every variant back to back,
so the difference cancels how the machine's speed moved between rounds; the difference of
two medians, taken from different rounds, does not)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

__all__ = ["medians", "paired_added"]


def medians(rounds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The median of each variant's per-round figures.

    Args:
        rounds: variant name -> its figure in each round (at least one), in round order.

    Raises:
        statistics.StatisticsError: a variant without a round.
    """
    return {name: float(statistics.median(v)) for name, v in rounds.items()}


def paired_added(rounds: Mapping[str, Sequence[float]], base: str) -> dict[str, float]:
    """What each variant adds to ``base``: the median over rounds of (variant - base) in
    the same round; ``base``'s own entry is 0.0.

    Args:
        rounds: variant name -> its figure in each round, in round order (all the same
            length, at least one round); ``base`` among them.
        base: the variant subtracted.

    Raises:
        KeyError: ``base`` is not a variant.
        ValueError: a variant has a different number of rounds from ``base``.
    """
    ref = rounds[base]
    return {name: float(statistics.median(x - b for x, b in zip(v, ref, strict=True)))
            for name, v in rounds.items()}
