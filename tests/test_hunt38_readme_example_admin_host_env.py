"""The example services' ``--admin-host`` and ``--db`` defaults: ``MESHKIT_ADMIN_HOST``
set but empty (a ConfigMap or a compose file leaving it blank) is unset, as the library's
``ServeOptions.admin`` reads it (README "Admin server"); it made every service exit at its
start with "host must be an IP address ... got ''"; a blank ``DATABASE_URL`` likewise
("unsupported store URL scheme ''") instead of taking the service's default database."""

from __future__ import annotations

import pytest

from examples.ecom._process import parser


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_blank_admin_host_is_loopback(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MESHKIT_ADMIN_HOST", value)
    args = parser("user_service", "sqlite:///x.db").parse_args([])
    assert args.admin_host == "127.0.0.1"


def test_admin_host_from_env_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_ADMIN_HOST", " 0.0.0.0 ")
    args = parser("user_service", "sqlite:///x.db").parse_args([])
    assert args.admin_host == "0.0.0.0"


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_blank_database_url_is_the_default(monkeypatch: pytest.MonkeyPatch,
                                           value: str) -> None:
    monkeypatch.setenv("DATABASE_URL", value)
    args = parser("user_service", "sqlite:///x.db").parse_args([])
    assert args.db == "sqlite:///x.db"
