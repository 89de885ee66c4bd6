"""The flags of the certificate and key helpers take True or False only, ConfigError
quoting anything else, as every options class's flags do (check_bool): a flag read from
the environment as text is truthy whatever it says, so
``init_ca_dir(d, trust_domain=..., overwrite=os.environ.get("FORCE", "false"))`` replaced
the mesh CA's key (every workload certificate it had issued then failed its peers'
checks), ``issue_into_dir(..., overwrite="no")`` a workload's key and certificate,
``write_private_key``/``write_certificate(..., overwrite="false")`` the file, and
``tls_from_dir(None, "svc", insecure="false")`` returned None, plaintext, where its
docstring promises None only for ``insecure=True``. ``KeySet.from_directory(create=
"false")`` created a signing key. Nothing is written or returned then."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.auth import (
    KeySet,
    create_ca,
    init_ca_dir,
    issue_into_dir,
    tls_from_dir,
    write_certificate,
    write_private_key,
)
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_TEXTS = {"false": "false", "no": "no", "zero-int": 0, "one-int": 1, "none": None}


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize("text", sorted(_TEXTS))
@pytest.mark.parametrize("call", ["init_ca_dir", "issue_into_dir", "write_private_key",
                                  "write_certificate"])
def test_overwrite_given_as_text_is_a_config_error_and_writes_nothing(
        call: str, text: str, tmp_path: Path) -> None:
    init_ca_dir(tmp_path, trust_domain="mesh.test")
    issue_into_dir(tmp_path, "orderd")
    key, cert = create_ca(trust_domain="other.test")
    calls: dict[str, Callable[[object], object]] = {
        "init_ca_dir": lambda v: init_ca_dir(tmp_path, trust_domain="mesh.test",
                                             overwrite=v),  # type: ignore[arg-type]
        "issue_into_dir": lambda v: issue_into_dir(tmp_path, "orderd",
                                                   overwrite=v),  # type: ignore[arg-type]
        "write_private_key": lambda v: write_private_key(
            tmp_path / "ca.key", key, overwrite=v),  # type: ignore[arg-type]
        "write_certificate": lambda v: write_certificate(
            tmp_path / "ca.pem", cert, overwrite=v),  # type: ignore[arg-type]
    }
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        calls[call](_TEXTS[text])
    assert "overwrite" in str(caught.value) and repr(_TEXTS[text]) in str(caught.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("text", sorted(_TEXTS))
def test_insecure_given_as_text_is_a_config_error_not_plaintext(
        text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHKIT_CERT_DIR", raising=False)
    with pytest.raises(ConfigError) as caught:
        tls_from_dir(None, "orderd", insecure=_TEXTS[text])  # type: ignore[arg-type]
    assert "insecure" in str(caught.value) and repr(_TEXTS[text]) in str(caught.value)


@pytest.mark.parametrize("text", sorted(_TEXTS))
def test_create_given_as_text_is_a_config_error_and_creates_no_key(text: str,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        KeySet.from_directory(tmp_path / "jwt", create=_TEXTS[text])  # type: ignore[arg-type]
    assert "create" in str(caught.value) and repr(_TEXTS[text]) in str(caught.value)
    assert not (tmp_path / "jwt").exists() or not os.listdir(tmp_path / "jwt")


def test_the_flags_as_bools_work_as_before(tmp_path: Path) -> None:
    init_ca_dir(tmp_path, trust_domain="mesh.test")
    ca_key = (tmp_path / "ca.key").read_bytes()
    init_ca_dir(tmp_path, trust_domain="mesh.test", overwrite=True)
    assert (tmp_path / "ca.key").read_bytes() != ca_key
    issue_into_dir(tmp_path, "orderd", overwrite=False)
    assert tls_from_dir(tmp_path, "orderd", insecure=False) is not None
    assert tls_from_dir(None, "orderd", insecure=True) is None
    assert KeySet.from_directory(tmp_path / "jwt", create=True).jwks()["keys"]
