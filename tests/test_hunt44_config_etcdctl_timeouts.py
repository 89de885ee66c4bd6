"""EtcdOptions.from_env reads etcdctl's ``ETCDCTL_DIAL_TIMEOUT`` (``connect_timeout_s``)
and ``ETCDCTL_COMMAND_TIMEOUT`` (``operation_timeout_s``) as etcdctl does: Go durations
(``time.ParseDuration``: ``2s``, ``500ms``, ``1m30s``, ``.5s``); a bad value is a
ConfigError naming the variable and quoting the value. They used to be ignored."""

from __future__ import annotations

import pytest

from meshkit.discovery import EtcdOptions
from meshkit.discovery._options import parse_go_duration
from meshkit.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [
    ("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), (".5s", 0.5),
    ("1.s", 1.0), ("1.5h", 5400.0), ("100us", 1e-4), ("100\u00b5s", 1e-4),
    ("100\u03bcs", 1e-4), ("10ns", 1e-8), ("+3s", 3.0), ("0", 0.0), ("-1s", -1.0),
    ("1h2m3s4ms", 3723.004)],
    ids=["s", "ms", "m-s", "h", "leading-dot", "trailing-dot", "fraction-h", "us",
         "micro-sign", "greek-mu", "ns", "plus", "zero", "negative", "all-units"])
def test_go_durations_read_as_go_reads_them(text: str, seconds: float) -> None:
    """What time.ParseDuration takes reads as the same number of seconds."""
    assert parse_go_duration("X", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2", "s", ".s", "2 s", "2sec", "2S", "1_0s",
                                  "\uff12s", "1e3s", "3000000h", "inf", "--1s", "1s "],
                         ids=["empty", "no-unit", "no-number", "dot-unit", "inner-blank",
                              "sec", "upper-unit", "underscore", "fullwidth", "exponent",
                              "overflow", "inf", "double-sign", "trailing-blank"])
def test_bad_go_durations_are_refused_quoted(text: str) -> None:
    """What time.ParseDuration refuses is a ConfigError naming the value's source."""
    with pytest.raises(ConfigError) as info:
        parse_go_duration("ETCDCTL_DIAL_TIMEOUT", text)
    assert "ETCDCTL_DIAL_TIMEOUT" in str(info.value) and repr(text) in str(info.value)


def test_from_env_reads_the_timeouts() -> None:
    """The two variables set connect_timeout_s and operation_timeout_s, blanks ignored."""
    opts = EtcdOptions.from_env({"ETCDCTL_DIAL_TIMEOUT": " 3s\n",
                                 "ETCDCTL_COMMAND_TIMEOUT": "1m30s"})
    assert opts.connect_timeout_s == 3.0
    assert opts.operation_timeout_s == 90.0


def test_from_env_unset_or_blank_keeps_the_defaults() -> None:
    """Unset or blank variables leave meshkit's defaults."""
    opts = EtcdOptions.from_env({"ETCDCTL_DIAL_TIMEOUT": "  "})
    assert opts.connect_timeout_s == EtcdOptions().connect_timeout_s
    assert opts.operation_timeout_s == EtcdOptions().operation_timeout_s


def test_overrides_win_over_the_variables() -> None:
    """An override wins over its variable, as for etcdctl's other variables."""
    opts = EtcdOptions.from_env({"ETCDCTL_DIAL_TIMEOUT": "3s"}, connect_timeout_s=0.5)
    assert opts.connect_timeout_s == 0.5


@pytest.mark.parametrize(("variable", "value"), [
    ("ETCDCTL_DIAL_TIMEOUT", "3"), ("ETCDCTL_DIAL_TIMEOUT", "0"),
    ("ETCDCTL_COMMAND_TIMEOUT", "-5s"), ("ETCDCTL_COMMAND_TIMEOUT", "5 seconds")],
    ids=["dial-no-unit", "dial-zero", "command-negative", "command-words"])
def test_bad_timeouts_name_the_variable(variable: str, value: str) -> None:
    """A value that is no duration above 0 is refused, the variable named, quoted."""
    with pytest.raises(ConfigError) as info:
        EtcdOptions.from_env({variable: value})
    assert variable in str(info.value) and repr(value) in str(info.value), info.value


def test_from_uri_reads_them_too() -> None:
    """A registry URI builds on from_env, so it takes them as well."""
    opts = EtcdOptions.from_uri("etcd://127.0.0.1:2379",
                                environ={"ETCDCTL_COMMAND_TIMEOUT": "20s"})
    assert opts.operation_timeout_s == 20.0
