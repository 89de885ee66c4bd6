"""``KeySet.from_directory`` with an entry that vanished or a file that is no key.

A dangling ``jwt-*.key`` symlink (a Kubernetes Secret mount between kubelet's swap of
``..data`` and its removal of a dropped key's link; a key deleted while the directory is
listed) made it fail with a bare ``FileNotFoundError`` from sorting the files: the
service did not start although a good key sat beside it. It is skipped now. A file that
does not parse was reported as "cannot parse the JWT signing key PEM" without naming
the file, leaving the operator to guess which of the keys was bad; the message names it
now (never its content).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.auth import KeySet, SigningKey
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def test_a_dangling_key_link_is_skipped(tmp_path: Path) -> None:
    good = SigningKey.generate()
    (tmp_path / "jwt-good.key").write_bytes(good.private_pem())
    os.symlink(tmp_path / "..data" / "jwt-gone.key", tmp_path / "jwt-gone.key")
    keys = KeySet.from_directory(tmp_path, create=False)
    assert [k.kid for k in keys.keys] == [good.kid]


def test_a_file_that_is_no_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "jwt-truncated.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIG")
    with pytest.raises(ConfigError, match=r"jwt-truncated\.key") as err:
        KeySet.from_directory(tmp_path, create=False)
    assert "MIG" not in str(err.value)


@pytest.mark.parametrize("bad", [-1, "2", 1.5])
def test_a_bad_keep_previous_is_named(tmp_path: Path, bad: object) -> None:
    """It was used before it was checked: ``-1`` read "a KeySet needs at least one
    signing key" (with a key in the directory), ``"2"`` raised ``TypeError``."""
    KeySet.rotate_directory(tmp_path)
    with pytest.raises(ConfigError, match="keep_previous") as err:
        KeySet.from_directory(tmp_path, keep_previous=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(err.value)


def test_a_directory_where_no_key_can_be_created_is_a_config_error(tmp_path: Path) -> None:
    """An empty read-only mount (a Secret not populated) or a path under a file: the
    creation's bare OSError (``NotADirectoryError``, ``EROFS``) went through."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="no jwt-") as err:
        KeySet.from_directory(tmp_path / "file" / "keys")
    assert "NotADirectoryError" in str(err.value)
