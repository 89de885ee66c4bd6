"""``meshkit demo --timeout-s`` and ``--ttl-s`` take a positive finite number of seconds.

They were plain floats: ``--timeout-s nan`` or ``-1`` ran the whole demo with every call
given an impossible deadline, and ``--ttl-s 0`` or ``inf`` started the stack and died
with a ConfigError traceback from the registry URI; each is now a usage error (exit 2)
naming the flag, before anything starts."""

from __future__ import annotations

import pytest

from examples.ecom.demo import build_parser


@pytest.mark.parametrize("flag", ["--timeout-s", "--ttl-s"])
@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_a_bad_number_of_seconds_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([flag, value])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


def test_good_values_are_taken() -> None:
    args = build_parser().parse_args(["--timeout-s", "2.5", "--ttl-s", "1"])
    assert (args.timeout_s, args.ttl_s) == (2.5, 1.0)


@pytest.mark.parametrize("value", ["0.05", "0.099"])
def test_a_ttl_under_the_local_registrys_floor_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], value: str) -> None:
    """``--ttl-s 0.05`` passed the positive check and died at the registry URI with a
    ConfigError traceback (LocalOptions refuses ``ttl_s`` under 0.1 s since 6012d18):
    a usage error naming the flag and the floor."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--ttl-s", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--ttl-s" in err and ">= 0.1" in err, err
    assert build_parser().parse_args(["--ttl-s", "0.1"]).ttl_s == 0.1
