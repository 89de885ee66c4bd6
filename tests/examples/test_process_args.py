"""The service processes' deployment arguments (examples/ecom/_process.py): where the
admin server binds and which host is registered, from flags or the environment the
Kubernetes manifests in deploy/k8s set."""

from __future__ import annotations

import pytest

from examples.ecom._process import parser, serve_options


def test_defaults_keep_the_admin_server_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without flags or environment the admin server binds 127.0.0.1 on a free port and the
    registered host is the bind address (ServeOptions' own defaults)."""
    for var in ("MESHKIT_ADMIN_HOST", "MESHKIT_ADMIN_PORT", "MESHKIT_ADVERTISE_HOST"):
        monkeypatch.delenv(var, raising=False)
    opts = serve_options(parser("svc", "sqlite:///x.db").parse_args([]), None)
    assert opts.admin is not None
    assert (opts.admin.host, opts.admin.port) == ("127.0.0.1", 0)
    assert opts.advertise_host is None


def test_environment_binds_admin_on_all_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESHKIT_ADMIN_HOST/PORT and MESHKIT_ADVERTISE_HOST (what deploy/k8s sets: 0.0.0.0,
    9464, the pod IP) reach ServeOptions; flags win over the environment."""
    monkeypatch.setenv("MESHKIT_ADMIN_HOST", "0.0.0.0")
    monkeypatch.setenv("MESHKIT_ADMIN_PORT", "9464")
    monkeypatch.setenv("MESHKIT_ADVERTISE_HOST", "10.1.2.3")
    args = parser("svc", "sqlite:///x.db").parse_args(["--host", "0.0.0.0"])
    opts = serve_options(args, None)
    assert opts.admin is not None
    assert (opts.admin.host, opts.admin.port) == ("0.0.0.0", 9464)
    assert (opts.host, opts.advertise_host) == ("0.0.0.0", "10.1.2.3")
    args = parser("svc", "sqlite:///x.db").parse_args(["--admin-host", "127.0.0.1",
                                                       "--admin-port", "0"])
    admin = serve_options(args, None).admin
    assert admin is not None and (admin.host, admin.port) == ("127.0.0.1", 0)
