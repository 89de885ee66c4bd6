"""A path holding a NUL character is refused as a ConfigError, quoted.

:func:`meshkit._config.check_path` (every file and directory path option's check:
``PeerVerifier.from_file``'s ``ca_file``, ``load_certificates``, ``init_ca_dir``...)
took ``"/etc/mesh/ca\\x00.pem"`` (a config file's ``"\\u0000"``, a C string's
leftover): the first ``open``/``stat`` then raised a bare ``ValueError: embedded null
byte`` (neither the ``ConfigError`` nor the ``CertificateError`` documented, and naming
no option) where the path was used. It is refused by the check now, the option named
and the value quoted (escaped), as the local registry's ``path`` already was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit._config import check_path
from meshkit.auth import PeerVerifier
from meshkit.auth._certs import load_certificates
from meshkit.errors import ConfigError

_BAD = "/etc/mesh/ca\x00.pem"


@pytest.mark.parametrize("value", [_BAD, Path(_BAD)], ids=["str", "Path"])
def test_check_path_refuses_a_nul(value: object) -> None:
    with pytest.raises(ConfigError, match=r"ca_file.*\\x00"):
        check_path("ca_file", value)


def test_a_nul_in_a_certificate_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"path.*\\x00"):
        load_certificates(_BAD)
    with pytest.raises(ConfigError, match=r"ca_file.*\\x00"):
        PeerVerifier.from_file(_BAD)
