"""A renewal keeps the owner, group and permissions of the files it replaces.

A workload that does not run as the user renewing its certificate reads its key through
the file's group or owner (``orderd.key`` 0640 ``root:orderd``, or 0600 ``orderd``, set
by the operator, a Helm chart or an init container). ``meshkit certs issue orderd
--force`` (run as root by a renewal job) replaced both files with new ones, 0600 / 0644
owned by the renewing user: the workload could no longer read its key, every reload was
skipped ("Permission denied") and its certificate expired in force a day later, every
handshake then refused. A file replaced now keeps its owner and group (as far as the
renewing user may give them) and its permission bits, a private key never readable by
others; a new file is written 0600 / 0644 as before.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from meshkit.auth._certs import init_ca_dir, issue_into_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_renewal_keeps_the_files_mode(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain="meshkit.test")
    files = issue_into_dir(d, "orderd", ttl_h=1)
    assert (_mode(files.key_file), _mode(files.cert_file)) == (0o600, 0o644)
    files.key_file.chmod(0o640)  # read by the workload's group
    files.cert_file.chmod(0o640)
    before = files.key_file.read_bytes()
    issue_into_dir(d, "orderd", ttl_h=1, overwrite=True)
    assert files.key_file.read_bytes() != before  # renewed
    assert (_mode(files.key_file), _mode(files.cert_file)) == (0o640, 0o640)
    files.key_file.chmod(0o644)  # a key others could read: not kept so
    issue_into_dir(d, "orderd", ttl_h=1, overwrite=True)
    assert _mode(files.key_file) == 0o640


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a file to another user needs root")
def test_a_renewal_by_root_keeps_the_files_owner_and_group(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain="meshkit.test")
    files = issue_into_dir(d, "orderd", ttl_h=1)
    for p in (files.key_file, files.cert_file):
        os.chown(p, 4321, 8765)  # the workload's user and group
    issue_into_dir(d, "orderd", ttl_h=1, overwrite=True)
    for p in (files.key_file, files.cert_file):
        assert (p.stat().st_uid, p.stat().st_gid) == (4321, 8765), p
    assert _mode(files.key_file) == 0o600
