"""The ecom service processes refuse a bad number in a flag or in the environment its
default comes from as a usage error naming both (exit 2), not a traceback.

Before, ``MESHKIT_ADMIN_PORT=94x64`` (or ``ECOM_USER_CACHE_TTL_S=1m``,
``ECOM_SUMMARY_ACK_WAIT_S=5s``) raised ``ValueError: invalid literal for int() ...``
while the parser was built, naming no variable, even for ``--help``; ``--grace-s nan``,
``--user-cache-ttl-s 0`` or ``--admin-port 70000`` were taken and failed later with a
``ConfigError`` traceback, or not at all."""

from __future__ import annotations

import pytest

from examples.ecom import user_service
from examples.ecom._process import parser


@pytest.mark.parametrize(("env", "value", "flag"), [
    ("MESHKIT_ADMIN_PORT", "94x64", "--admin-port"),
    ("MESHKIT_ADMIN_PORT", "70000", "--admin-port"),
    ("ECOM_USER_CACHE_TTL_S", "1m", "--user-cache-ttl-s"),
    ("ECOM_USER_CACHE_TTL_S", "nan", "--user-cache-ttl-s"),
    ("ECOM_USER_CACHE_TTL_S", "0", "--user-cache-ttl-s"),
])
def test_a_bad_environment_value_is_a_usage_error_naming_flag_and_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: str, value: str, flag: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exited:
        user_service.arguments().parse_args(["--insecure"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and env in err and repr(value) in err, err


def test_a_good_environment_value_is_taken_and_a_flag_wins_over_a_bad_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", "9464")
    monkeypatch.setenv("ECOM_USER_CACHE_TTL_S", "2.5")
    args = user_service.arguments().parse_args([])
    assert (args.admin_port, args.user_cache_ttl_s) == (9464, 2.5)
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", "bad")
    assert user_service.arguments().parse_args(["--admin-port", "0"]).admin_port == 0


@pytest.mark.parametrize("argv", [
    ["--grace-s", "nan"], ["--grace-s", "-1"], ["--drain-delay-s", "inf"],
    ["--port", "65536"], ["--admin-port", "-1"],
])
def test_a_bad_flag_value_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser("svc", "sqlite:///x.db").parse_args(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err
