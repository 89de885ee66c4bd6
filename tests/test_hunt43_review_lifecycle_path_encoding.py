"""Review of 0a35d693 (a path holding a NUL refused): a path the file system cannot encode
is the same fault.

:func:`meshkit._config.check_path` took ``"/etc/mesh/ca\\ud800.pem"`` (a lone surrogate:
a config file's ``"\\ud800"``, JSON's escape of half a UTF-16 pair): the first
``open``/``stat`` then raised a bare ``UnicodeEncodeError`` ("surrogates not allowed",
neither the ``ConfigError`` nor the ``CertificateError`` documented, naming no option)
where the path was used, as a NUL's ``ValueError`` did. It is refused by the check now,
the option named and the value quoted (escaped). A surrogate escape of a non-UTF-8 byte
(``os.environ``'s ``"\\udcff"``, a real file name) is still taken.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit._config import check_path
from meshkit.auth import PeerVerifier
from meshkit.auth._certs import load_certificates
from meshkit.errors import ConfigError

_BAD = "/etc/mesh/ca\ud800.pem"


@pytest.mark.parametrize("value", [_BAD, Path(_BAD)], ids=["str", "Path"])
def test_check_path_refuses_a_path_the_file_system_cannot_encode(value: object) -> None:
    with pytest.raises(ConfigError, match=r"ca_file.*\\ud800"):
        check_path("ca_file", value)


def test_such_a_certificate_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"path.*\\ud800"):
        load_certificates(_BAD)
    with pytest.raises(ConfigError, match=r"ca_file.*\\ud800"):
        PeerVerifier.from_file(_BAD)


def test_a_non_utf8_byte_s_escape_is_still_a_path() -> None:
    name = os.fsdecode(b"/tmp/ca\xff.pem")
    assert check_path("ca_file", name) == name
