"""``KeySet.from_directory`` picks the signing key by the creation time in its file name.

It took the file with the newest mtime. Copied into a Kubernetes Secret (or by ``cp``,
``rsync`` without ``-t``, a config-management run), every key file gets the mtime of
that copy, in the copier's order: after a rotation the service could sign with the old
key, which verifiers may already have dropped (``UNAUTHENTICATED 'token key id
unknown'``) or drop at the next rotation. ``rotate_directory`` now writes the creation
time into the name (``jwt-<UTC stamp>-<kid>.key``), and a stamped name is ordered by it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.auth import KeySet, SigningKey

pytestmark = pytest.mark.timeout(30)


def test_a_copy_that_reverses_the_mtimes_keeps_the_newest_key_current(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    old = KeySet.rotate_directory(d)
    new = KeySet.rotate_directory(d)
    new_kid = SigningKey.from_pem(new.read_bytes()).kid
    # the copier wrote the new key first, then the old one: the old one's mtime is newer
    os.utime(new, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    os.utime(old, ns=(1_000_000_001_000_000_000, 1_000_000_001_000_000_000))
    keys = KeySet.from_directory(d, create=False)
    assert keys.current.kid == new_kid
    assert [k.kid for k in keys.keys][1] == SigningKey.from_pem(old.read_bytes()).kid


def test_a_file_without_a_stamp_still_goes_by_its_mtime(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir()
    a, b = SigningKey.generate(), SigningKey.generate()
    (d / "jwt-a.key").write_bytes(a.private_pem())
    (d / "jwt-b.key").write_bytes(b.private_pem())
    os.utime(d / "jwt-a.key", ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    os.utime(d / "jwt-b.key", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    assert KeySet.from_directory(d, create=False).current.kid == a.kid


def test_a_stamped_key_is_newer_than_an_unstamped_one_copied_later(tmp_path: Path) -> None:
    """The first rotation after an upgrade: the old key's name has no stamp, and the
    copy into the Secret gave it a later mtime than the new key's stamp."""
    d = tmp_path / "keys"
    d.mkdir()
    old = SigningKey.generate()
    (d / f"jwt-{old.kid}.key").write_bytes(old.private_pem())
    new = KeySet.rotate_directory(d)
    later = 4_000_000_000 * 1_000_000_000  # year 2096
    os.utime(d / f"jwt-{old.kid}.key", ns=(later, later))
    keys = KeySet.from_directory(d, create=False)
    assert keys.current.kid == SigningKey.from_pem(new.read_bytes()).kid
