"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"; the same shape gRFC A6 uses for retries)."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field

from meshkit._config import check_number
from meshkit._fork import ForkSafeRandom
from meshkit.errors import ConfigError

__all__ = ["Backoff"]

# the bound of an uncapped delay whose growth passes a float's range: finite, so the
# jitter's uniform(0, cap) draws a number (uniform(0, inf) is inf, or NaN on a 0 draw)
_LONGEST_S = sys.float_info.max


class _OwnRandom(ForkSafeRandom):
    """The generator a Backoff makes when given none: reseeded in a child made by
    ``os.fork()``, and a copy of it (``pickle``, ``copy.deepcopy``) starts from a fresh
    seed. Options built before a pre-fork server forks its workers (module-level
    DialOptions), or handed pickled to workers that ``multiprocessing``'s ``spawn`` or
    ``forkserver`` starts, otherwise gave every worker the same state, the same "random"
    delays, and retries in lock-step after an outage, which full jitter exists to
    prevent. A generator the caller passes is the caller's, never reseeded."""

    def __reduce__(self) -> tuple[type[_OwnRandom], tuple[()]]:
        # random.Random's pickles its state; a copy draws its own delays instead
        return _OwnRandom, ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Delay before retry ``n`` (1-based): uniform in ``[0, min(max_delay_s,
    base_delay_s * multiplier ** (n - 1))]`` (gRFC A6 "Exponential backoff", with full
    jitter); never infinite or NaN: with ``max_delay_s=math.inf`` a growth past the
    largest float (about 1.8e308 s: ``multiplier=1e200`` at the third retry, the default
    2.0 past the 1,000th) is capped there.

    Args:
        base_delay_s: cap of the first delay, seconds (default 0.025).
        max_delay_s: cap of any delay, seconds (default 1.0; ``math.inf``: no cap but
            the largest finite float).
        multiplier: growth per retry, >= 1 (default 2.0).
        rng: random source (default a new ``random.Random``, reseeded in a child made by
            ``os.fork()`` and in a copy, pickled or deep-copied, so workers forked from
            one process or handed the options pickled, as ``multiprocessing``'s
            ``spawn`` does, do not retry in lock-step); inject a seeded one in tests
            (never reseeded, copied with its state).

    Raises:
        ConfigError: negative delays, ``max_delay_s < base_delay_s``, ``multiplier < 1``,
            an infinite ``multiplier`` with an infinite ``max_delay_s`` (every delay
            after the first infinite), or an ``rng`` without a ``uniform(a, b)`` method
            (``None`` included; quoted).
    """

    base_delay_s: float = 0.025
    max_delay_s: float = 1.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=_OwnRandom, compare=False)

    def __post_init__(self) -> None:
        check_number("base_delay_s", self.base_delay_s)
        check_number("max_delay_s", self.max_delay_s, finite=False)  # inf: no cap
        check_number("multiplier", self.multiplier, low=1.0, finite=False)
        if not callable(getattr(self.rng, "uniform", None)):  # else the first retry raised
            raise ConfigError(f"rng must be a random source with uniform(a, b), such as a "
                              f"random.Random (leave it out for the default), "
                              f"got {self.rng!r}")
        if math.isinf(self.multiplier) and math.isinf(self.max_delay_s) \
                and self.base_delay_s > 0:  # every delay past the first inf: asleep for ever
            raise ConfigError(f"max_delay_s must be finite with multiplier={self.multiplier!r}"
                              f" (every delay after the first would be infinite), "
                              f"got {self.max_delay_s!r}")
        if not self.max_delay_s >= self.base_delay_s:
            raise ConfigError(
                f"max_delay_s must be >= base_delay_s ({self.base_delay_s!r}), "
                f"got {self.max_delay_s!r}"
            )

    def cap_s(self, retry: int) -> float:
        """The upper bound of the delay before retry number ``retry`` (1-based), seconds:
        finite, at most ``max_delay_s`` and the largest float.

        Raises:
            ValueError: ``retry`` below 1.
        """
        if retry < 1:
            raise ValueError(f"retry is 1-based, got {retry!r}")
        base = self.base_delay_s
        if base == 0.0:
            return 0.0
        try:  # gRFC A6: min(initial_backoff * multiplier ** (n - 1), max_backoff)
            grown = base * self.multiplier ** (retry - 1)
        except OverflowError:  # past any float: past max_delay_s as well
            return min(self.max_delay_s, _LONGEST_S)
        # an infinite max_delay_s caps nothing: a product past the largest float is inf
        return min(self.max_delay_s, grown, _LONGEST_S)

    def delay_s(self, retry: int) -> float:
        """A jittered delay before retry number ``retry`` (1-based), seconds: uniform in
        ``[0, cap_s(retry)]``, finite.

        Raises:
            ValueError: ``retry`` below 1.
        """
        return self.rng.uniform(0.0, self.cap_s(retry))
