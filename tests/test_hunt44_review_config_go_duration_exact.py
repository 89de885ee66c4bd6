"""parse_go_duration reads a duration to Go's time.ParseDuration's integer nanoseconds
(review of 4bab5331): a fraction of a nanosecond is dropped as Go drops it (``0.5ns`` is
0, so ``ETCDCTL_DIAL_TIMEOUT=0.5ns`` is refused as ``0`` is), and the largest duration Go
takes (``9223372036854775807ns``, ``2562047h47m16.854775807s``) is taken, one more
refused."""

from __future__ import annotations

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.discovery._options import parse_go_duration
from meshkit.errors import ConfigError

_MAX_S = (2**63 - 1) / 1e9


@pytest.mark.parametrize(("text", "seconds"), [
    ("0.5ns", 0.0), ("1.9ns", 1e-9), ("9223372036854775807ns", _MAX_S),
    ("2562047h47m16.854775807s", _MAX_S), ("-9223372036854775808ns", -2**63 / 1e9),
    ("1h1m", 3660.0), ("1.5h", 5400.0), ("+5s", 5.0), ("1.s", 1.0), (".5s", 0.5)],
    ids=["half-ns", "fraction-ns", "max-ns", "max-hms", "min-ns", "hm", "fraction-h",
         "plus", "trailing-dot", "leading-dot"])
def test_go_durations_read_as_go_reads_them(text: str, seconds: float) -> None:
    """Go's value, in seconds."""
    assert parse_go_duration("X", text) == seconds


@pytest.mark.parametrize("text", ["9223372036854775808ns", "2562047h47m16.854775808s",
                                  "-9223372036854775809ns", "1e3s", "1", ".s", "00"],
                         ids=["max-plus-1", "max-hms-plus-1", "min-minus-1", "exponent",
                              "no-unit", "no-digits", "double-zero"])
def test_what_go_refuses_is_refused(text: str) -> None:
    """What ParseDuration refuses is a ConfigError quoting it."""
    with pytest.raises(ConfigError, match=repr(text)):
        parse_go_duration("X", text)


def test_a_sub_nanosecond_dial_timeout_is_refused_as_zero() -> None:
    """etcdctl reads 0.5ns as 0: refused as a zero timeout is."""
    with pytest.raises(ConfigError, match="ETCDCTL_DIAL_TIMEOUT must be a Go duration above 0"):
        EtcdOptions.from_env({"ETCDCTL_DIAL_TIMEOUT": "0.5ns"})
