"""``MESHKIT_CERT_DIR`` and ``MESHKIT_WORKLOAD`` are read as ``MESHKIT_REGISTRY`` and
``MESHKIT_LOCAL_DIR`` are: surrounding whitespace stripped, blank as unset
(``meshkit._env``, read by dial(), MeshServer, tls_from_dir, ``meshkit certs`` and
``meshkit call``).

A value with a trailing newline (a ConfigMap's ``|`` block, an ``.env`` file line with a
stray blank) made dial() and serve() refuse to start with ``/etc/mesh/certs\\n/ca.pem is
missing`` (or ``clientd\\n.pem``); one of blanks was taken for a directory named so, where
an empty one said what to set."""

from __future__ import annotations

from pathlib import Path

import pytest

import meshkit
from meshkit.auth import init_ca_dir, issue_into_dir, tls_from_dir
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError
from tests.auth.conftest import TD


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain=TD, ttl_days=2)
    for name in ("clientd", "whod"):
        issue_into_dir(d, name, ttl_h=1.0, dns=("localhost",), ips=("127.0.0.1",))
    return d


async def test_dial_and_serve_take_values_with_surrounding_whitespace(
        cert_dir: Path, registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_CERT_DIR", f" {cert_dir}\n")
    monkeypatch.setenv("MESHKIT_WORKLOAD", "clientd\n")
    async with meshkit.dial("whod", registry=registry) as ch:
        assert ch.options.tls is not None
        assert ch.options.tls.cert_file == cert_dir / "clientd.pem"
    srv = meshkit.MeshServer("whod", [], registry=registry)
    assert srv.options.tls is not None and srv.options.tls.cert_file == cert_dir / "whod.pem"
    assert tls_from_dir(None, "whod").cert_file == cert_dir / "whod.pem"


async def test_a_blank_cert_dir_is_unset(registry: LocalRegistry,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_CERT_DIR", "  ")
    monkeypatch.setenv("MESHKIT_WORKLOAD", "clientd")
    with pytest.raises(ConfigError, match="no transport security configured"):
        meshkit.dial("whod", registry=registry)
    with pytest.raises(ConfigError, match="no transport security configured"):
        meshkit.MeshServer("whod", [], registry=registry)
    with pytest.raises(ConfigError, match="no certificate directory"):
        tls_from_dir(None, "whod")


def test_the_command_line_defaults_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshkit._cli import call
    from meshkit.auth import cli

    monkeypatch.setenv("MESHKIT_CERT_DIR", "/srv/certs\n")
    monkeypatch.setenv("MESHKIT_WORKLOAD", " clientd ")
    args = call.build_parser().parse_args(["greeter/SayHello"])
    assert (args.cert_dir, args.workload) == ("/srv/certs", "clientd")
    assert cli._default_dir() == "/srv/certs"
    monkeypatch.setenv("MESHKIT_CERT_DIR", " ")
    assert cli._default_dir() == "certs"
    assert call.build_parser().parse_args(["greeter/SayHello"]).cert_dir is None
