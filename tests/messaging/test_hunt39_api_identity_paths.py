"""MessageSigner.from_files/from_dir and MessageVerifier.from_file given a path that is no
path (``None`` from ``os.environ.get("MESHKIT_CERT_DIR")`` unset, ``bytes``, a number)
raise ConfigError naming the argument, as their docstrings' bad arguments do, not a bare
``TypeError: expected str, bytes or os.PathLike object, not NoneType``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshkit.auth import init_ca_dir, issue_into_dir
from meshkit.errors import ConfigError
from meshkit.messaging import MessageSigner, MessageVerifier

pytestmark = pytest.mark.timeout(60)

_BAD = {"none": None, "bytes": b"/etc/meshkit", "int": 3}


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    init_ca_dir(tmp_path, trust_domain="mesh.test")
    issue_into_dir(tmp_path, "orderd")
    return tmp_path


def _calls(d: Path) -> dict[str, tuple[str, Callable[[object], object]]]:
    return {
        "from_dir": ("cert_dir", lambda v: MessageSigner.from_dir(v, "orderd")),  # type: ignore[arg-type]
        "from_files-cert": ("cert_file", lambda v: MessageSigner.from_files(
            v, d / "orderd.key")),  # type: ignore[arg-type]
        "from_files-key": ("key_file", lambda v: MessageSigner.from_files(
            d / "orderd.pem", v)),  # type: ignore[arg-type]
        "verifier-from_file": ("ca_file", lambda v: MessageVerifier.from_file(v)),  # type: ignore[arg-type]
    }


@pytest.mark.parametrize("value", sorted(_BAD))
@pytest.mark.parametrize("call", ["from_dir", "from_files-cert", "from_files-key",
                                  "verifier-from_file"])
def test_a_path_that_is_no_path_is_a_config_error(call: str, value: str,
                                                  certs: Path) -> None:
    name, make = _calls(certs)[call]
    with pytest.raises(ConfigError) as caught:
        make(_BAD[value])
    assert name in str(caught.value)


def test_paths_still_load(certs: Path) -> None:
    assert MessageSigner.from_dir(certs, "orderd", reload_interval_s=None) is not None
    assert MessageSigner.from_dir(str(certs), "orderd", reload_interval_s=None) is not None
    assert MessageVerifier.from_file(certs / "ca.pem", reload_interval_s=None) is not None
