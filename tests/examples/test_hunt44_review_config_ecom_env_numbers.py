"""The ecom processes read the numbers of their environment (``MESHKIT_ADMIN_PORT``,
``ECOM_DB_WAIT_S``, ``ECOM_USER_CACHE_TTL_S``, ``ECOM_SUMMARY_ACK_WAIT_S``) and flags as
the library reads ``MESHKIT_*`` numbers (review of cf620c73): a plain decimal number, not
the other spellings Python's ``int()``/``float()`` take (``1_0`` read as 10, full-width
digits); those are a usage error naming the flag and the variable (exit 2)."""

from __future__ import annotations

import pytest

from examples.ecom import user_service
from examples.ecom._process import parser


@pytest.mark.parametrize(("env", "value", "flag"), [
    ("MESHKIT_ADMIN_PORT", "9_464", "--admin-port"),
    ("MESHKIT_ADMIN_PORT", "\uff19464", "--admin-port"),
    ("MESHKIT_ADMIN_PORT", "+9464", "--admin-port"),
    ("ECOM_USER_CACHE_TTL_S", "1_0", "--user-cache-ttl-s"),
    ("ECOM_USER_CACHE_TTL_S", "\uff15", "--user-cache-ttl-s"),
    ("ECOM_DB_WAIT_S", "6_0", "--db-wait-s"),
], ids=["port-underscore", "port-fullwidth", "port-plus", "ttl-underscore",
        "ttl-fullwidth", "db-wait-underscore"])
def test_python_only_number_spellings_in_the_environment_are_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: str, value: str, flag: str) -> None:
    """A Python-only spelling in the environment is a usage error naming both."""
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exited:
        user_service.arguments().parse_args(["--insecure"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and env in err and repr(value) in err, err


@pytest.mark.parametrize("argv", [["--grace-s", "1_0"], ["--port", "5_0051"],
                                  ["--drain-delay-s", "\uff10"]],
                         ids=["grace-underscore", "port-underscore", "drain-fullwidth"])
def test_python_only_number_spellings_in_flags_are_refused(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """The flags read numbers the same way."""
    with pytest.raises(SystemExit) as exited:
        parser("svc", "sqlite:///x.db").parse_args(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_plain_numbers_are_still_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a person writes still reads: blanks around, a leading dot, an exponent."""
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", " 09464 ")
    monkeypatch.setenv("ECOM_USER_CACHE_TTL_S", ".5")
    monkeypatch.setenv("ECOM_DB_WAIT_S", "1e2")
    args = user_service.arguments().parse_args(["--grace-s", "5.", "--port", "0"])
    assert (args.admin_port, args.user_cache_ttl_s, args.db_wait_s, args.grace_s) == (
        9464, 0.5, 100.0, 5.0)
