"""A renewal (issue_into_dir(..., overwrite=True)) leaves a matching pair and keeps links.

``_write_all`` writes the key and the certificate whole, then puts them in place with
two ``os.replace`` calls, the key first. Two faults:

* the second replace failing (EBUSY on a bind-mounted file, EACCES/EPERM from an
  immutable or foreign-owned certificate, EISDIR) left the new key beside the old
  certificate on disk, a pair matching nothing, though the docstrings promise "a
  renewal never leaves a new key beside the old certificate": every later reload of
  the workload then refused it (and a restart could not start) until someone noticed.
  Now the key already replaced is put back (its old file, kept as a hard link meanwhile).
* a key or certificate path that is a symbolic link (a cert directory whose files link
  into a shared or versioned store, certbot's live/ -> archive/) was replaced by a
  regular file: the link's target kept the old, soon expired certificate for everything
  else reading it. Now the file the link names is written, the link kept.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshkit.auth import init_ca_dir, issue_into_dir

pytestmark = pytest.mark.timeout(60)

TD = "meshkit.test"


def _matches(key_file: Path, cert_file: Path) -> bool:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _failing_replace(monkeypatch: pytest.MonkeyPatch, name: str, err: int) -> list[str]:
    """``os.replace`` raising ``err`` when it would put a new file at ``name``."""
    real = os.replace
    failed: list[str] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kw: object) -> None:
        if Path(dst).name == name and Path(src).name.startswith(f".{name}.") and not failed:
            failed.append(str(dst))
            raise OSError(err, os.strerror(err), str(dst))
        real(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    return failed


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EACCES], ids=["EBUSY", "EACCES"])
def test_a_certificate_replace_that_fails_leaves_the_old_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    init_ca_dir(tmp_path, trust_domain=TD)
    files = issue_into_dir(tmp_path, "userd")
    old_key, old_cert = files.key_file.read_bytes(), files.cert_file.read_bytes()
    failed = _failing_replace(monkeypatch, "userd.pem", err)
    with pytest.raises(OSError) as exc:
        issue_into_dir(tmp_path, "userd", overwrite=True)
    assert failed and exc.value.errno == err
    monkeypatch.undo()
    assert files.key_file.read_bytes() == old_key
    assert files.cert_file.read_bytes() == old_cert
    assert _matches(files.key_file, files.cert_file)
    assert (files.key_file.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.key", "ca.pem", "userd.key", "userd.pem"]  # nothing staged left behind


def test_a_first_issue_with_overwrite_that_fails_leaves_no_lone_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_ca_dir(tmp_path, trust_domain=TD)
    _failing_replace(monkeypatch, "userd.pem", errno.EBUSY)
    with pytest.raises(OSError):
        issue_into_dir(tmp_path, "userd", overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]


def test_a_renewal_through_links_writes_their_targets_and_keeps_the_links(
        tmp_path: Path) -> None:
    store, certs = tmp_path / "store", tmp_path / "certs"
    init_ca_dir(store, trust_domain=TD)
    issue_into_dir(store, "userd")
    certs.mkdir()
    for name in ("ca.pem", "ca.key", "userd.pem", "userd.key"):
        (certs / name).symlink_to(store / name)
    old_cert = (store / "userd.pem").read_bytes()
    files = issue_into_dir(certs, "userd", overwrite=True)
    for name in ("userd.pem", "userd.key"):
        assert (certs / name).is_symlink(), name
        assert os.readlink(certs / name) == str(store / name)
    assert (store / "userd.pem").read_bytes() != old_cert  # the target renewed
    assert _matches(store / "userd.key", store / "userd.pem")
    assert _matches(files.key_file, files.cert_file)
    assert (store / "userd.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in certs.iterdir()) == [
        "ca.key", "ca.pem", "userd.key", "userd.pem"]
    assert sorted(p.name for p in store.iterdir()) == [
        "ca.key", "ca.pem", "userd.key", "userd.pem"]


def test_a_plain_renewal_still_replaces_both(tmp_path: Path) -> None:
    init_ca_dir(tmp_path, trust_domain=TD)
    files = issue_into_dir(tmp_path, "userd")
    old_key = files.key_file.read_bytes()
    issue_into_dir(tmp_path, "userd", overwrite=True)
    assert files.key_file.read_bytes() != old_key
    assert _matches(files.key_file, files.cert_file)


def test_a_dangling_link_is_replaced_itself_nothing_made_where_it_points(
        tmp_path: Path) -> None:
    init_ca_dir(tmp_path, trust_domain=TD)
    nowhere = tmp_path / "gone" / "userd.pem"
    (tmp_path / "userd.pem").symlink_to(nowhere)
    issue_into_dir(tmp_path, "userd", overwrite=True)
    assert not (tmp_path / "userd.pem").is_symlink()
    assert not (tmp_path / "gone").exists()
    assert _matches(tmp_path / "userd.key", tmp_path / "userd.pem")
