"""A renewal (``certs issue --force``, ``certs init --force``) that cannot write its files
leaves the pair in force whole.

The key was written and put in place before the certificate was written: when writing
the certificate then failed (a full disk, a file size limit, a quota), the directory
held the new key beside the old certificate, a pair that no longer matched: the
workload could not restart (``TLSOptions``: "private key ... does not match"), and for
``certs init --force`` the old CA key was gone. Both files are now written (and synced)
before either is put in place. The failure is real: a child process whose file size
limit (``RLIMIT_FSIZE``) lets the key (241 bytes) be written but not the certificate.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.auth import TLSOptions
from meshkit.auth._certs import init_ca_dir, issue_into_dir

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ")

_ROOT = Path(__file__).resolve().parents[2]

_RENEW = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails EFBIG instead
from meshkit.auth._certs import init_ca_dir, issue_into_dir
resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))  # a key fits, a certificate not
try:
    if sys.argv[2] == "ca":
        init_ca_dir(sys.argv[1], trust_domain="meshkit.test", overwrite=True)
    else:
        issue_into_dir(sys.argv[1], "orderd", ttl_h=1, overwrite=True)
except OSError as exc:
    print(exc.errno)
"""


def _renew_failing(d: Path, what: str) -> None:
    out = subprocess.run([sys.executable, "-c", _RENEW, str(d), what], cwd=_ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "27", out  # EFBIG: the certificate could not be written


def test_a_workload_renewal_that_cannot_write_keeps_the_pair(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain="meshkit.test")
    issue_into_dir(d, "orderd", ttl_h=1)
    before = {n: (d / n).read_bytes() for n in ("orderd.key", "orderd.pem")}
    _renew_failing(d, "orderd")
    assert {n: (d / n).read_bytes() for n in before} == before  # the key was replaced
    TLSOptions(ca_file=d / "ca.pem", cert_file=d / "orderd.pem", key_file=d / "orderd.key")
    assert sorted(p.name for p in d.iterdir()) == ["ca.key", "ca.pem", "orderd.key",
                                                    "orderd.pem"]  # no temporary file left


def test_a_ca_renewal_that_cannot_write_keeps_the_ca(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    init_ca_dir(d, trust_domain="meshkit.test")
    before = {n: (d / n).read_bytes() for n in ("ca.key", "ca.pem")}
    _renew_failing(d, "ca")
    assert {n: (d / n).read_bytes() for n in before} == before  # the CA key was lost
    issue_into_dir(d, "orderd", ttl_h=1)  # the CA still issues
