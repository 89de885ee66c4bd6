"""The auth file helpers refuse a path that is no path, ConfigError naming the argument,
as TLSOptions' files already were (check_path): ``None`` (``os.environ.get`` of an unset
variable), ``bytes`` or a number raised a bare TypeError from pathlib, and ``""`` -- which
pathlib reads as the current directory -- wrote the mesh CA's key (init_ca_dir), a
workload's (issue_into_dir: read the CA from there) or a JWT signing key
(KeySet.from_directory / rotate_directory) into whatever directory the process was
started in. A key's PEM given for KeySet.rotate_directory's directory (as
from_directory already refused it) made a directory named after the key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.auth import (
    KeySet,
    PeerVerifier,
    SigningKey,
    create_ca,
    init_ca_dir,
    issue_into_dir,
    tls_from_dir,
    write_certificate,
    write_private_key,
)
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

_BAD = {"none": None, "bytes": b"/etc/meshkit", "int": 3, "empty": ""}


def _calls() -> dict[str, tuple[str, Callable[[object], object]]]:
    key, cert = create_ca(trust_domain="mesh.test")
    return {
        "init_ca_dir": ("directory", lambda v: init_ca_dir(v, trust_domain="mesh.test")),  # type: ignore[arg-type]
        "issue_into_dir": ("directory", lambda v: issue_into_dir(v, "orderd")),  # type: ignore[arg-type]
        "write_private_key": ("path", lambda v: write_private_key(v, key)),  # type: ignore[arg-type]
        "write_certificate": ("path", lambda v: write_certificate(v, cert)),  # type: ignore[arg-type]
        "KeySet.from_directory": ("directory", lambda v: KeySet.from_directory(v)),  # type: ignore[arg-type]
        "KeySet.rotate_directory": ("directory", lambda v: KeySet.rotate_directory(v)),  # type: ignore[arg-type]
        "PeerVerifier.from_file": ("ca_file", lambda v: PeerVerifier.from_file(v)),  # type: ignore[arg-type]
        "tls_from_dir": ("cert_dir", lambda v: tls_from_dir(v, "orderd")),  # type: ignore[arg-type]
    }


_NAMES = ["init_ca_dir", "issue_into_dir", "write_private_key", "write_certificate",
          "KeySet.from_directory", "KeySet.rotate_directory", "PeerVerifier.from_file",
          "tls_from_dir"]


# tls_from_dir reads None (and "") as "use $MESHKIT_CERT_DIR", as documented
_CASES = [(c, v) for c in _NAMES for v in sorted(_BAD)
          if not (c == "tls_from_dir" and v in ("none", "empty"))]


@pytest.mark.parametrize(("call", "value"), _CASES)
def test_a_path_that_is_no_path_is_a_config_error_and_writes_nothing(
        call: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # "" would be this directory
    name, make = _calls()[call]
    with pytest.raises(ConfigError) as caught:
        make(_BAD[value])
    assert name in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_a_key_given_for_the_rotation_directory_is_refused_unquoted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pem = SigningKey.generate().private_pem().decode()
    with pytest.raises(ConfigError) as caught:
        KeySet.rotate_directory(pem)
    assert "PRIVATE KEY" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_paths_still_work(tmp_path: Path) -> None:
    files = init_ca_dir(tmp_path, trust_domain="mesh.test")
    issue_into_dir(str(tmp_path), "orderd")
    assert tls_from_dir(tmp_path, "orderd") is not None
    assert PeerVerifier.from_file(files.ca_file) is not None
    KeySet.rotate_directory(tmp_path / "jwt")
    assert KeySet.from_directory(tmp_path / "jwt", create=False).jwks()["keys"]
