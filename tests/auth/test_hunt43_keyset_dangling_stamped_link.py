"""``KeySet.from_directory`` skips a dangling ``jwt-<stamp>Z-<kid>.key`` link.

A Kubernetes Secret mount holding the key files ``KeySet.rotate_directory`` names
(``jwt-20261206T231500.123456Z-<kid>.key``) leaves a dropped key's link dangling between
kubelet's swap of ``..data`` and its removal of the link. The docstring says such an
entry is skipped, and an unstamped one was (tests/auth/test_keyset_directory_bad_entries.py);
a stamped one was ordered by the time in its name without a ``stat``, so it was kept in
the list and, being the newest, read first: ``ConfigError: cannot read ...
FileNotFoundError`` — the service did not start although a good key sat beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshkit.auth import KeySet, SigningKey

pytestmark = pytest.mark.timeout(30)


def test_a_dangling_stamped_key_link_is_skipped(tmp_path: Path) -> None:
    good = KeySet.rotate_directory(tmp_path)  # stamped with now
    kid = SigningKey.from_pem(good.read_bytes()).kid
    # newer by its name than the good key, and gone (its ..data target removed)
    os.symlink(tmp_path / "..data" / "jwt-29991231T235959.000000Z-gone.key",
               tmp_path / "jwt-29991231T235959.000000Z-gone.key")
    keys = KeySet.from_directory(tmp_path, create=False, keep_previous=0)
    assert [k.kid for k in keys.keys] == [kid]


def test_a_dangling_stamped_link_among_previous_keys_is_skipped(tmp_path: Path) -> None:
    os.symlink(tmp_path / "..data" / "jwt-20000101T000000.000000Z-gone.key",
               tmp_path / "jwt-20000101T000000.000000Z-gone.key")
    good = KeySet.rotate_directory(tmp_path)
    keys = KeySet.from_directory(tmp_path, create=False, keep_previous=2)
    assert [k.kid for k in keys.keys] == [SigningKey.from_pem(good.read_bytes()).kid]


def test_a_directory_of_dangling_stamped_links_only_gets_a_new_key(tmp_path: Path) -> None:
    """Listed as holding a key, nothing was created, and loading it failed."""
    os.symlink(tmp_path / "..data" / "jwt-20000101T000000.000000Z-gone.key",
               tmp_path / "jwt-20000101T000000.000000Z-gone.key")
    keys = KeySet.from_directory(tmp_path)
    written = sorted(p.name for p in tmp_path.glob("jwt-*.key") if p.exists())
    assert len(written) == 1
    assert [k.kid for k in keys.keys] == [
        SigningKey.from_pem((tmp_path / written[0]).read_bytes()).kid]


def test_a_key_file_gone_after_the_listing_is_skipped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Removed between the listing and its read (the swap's race): the next one loads."""
    good = KeySet.rotate_directory(tmp_path)
    gone = tmp_path / "jwt-29991231T235959.000000Z-gone.key"
    monkeypatch.setattr(KeySet, "_key_files", staticmethod(lambda d: [gone, good]))
    keys = KeySet.from_directory(tmp_path, create=False, keep_previous=0)
    assert [k.kid for k in keys.keys] == [SigningKey.from_pem(good.read_bytes()).kid]
