"""``meshkit certs`` never writes raw control characters (nor text stdout cannot encode)
to the terminal: a certificate's names and the paths it prints are escaped as
``printable()`` escapes a server's text."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.timeout(60)

_CN = "evil\x1b]0;pwned\x07\x1b[2J\u202e\x9b31m\nnot after:     2099-01-01"


def _meshkit(*args: str | bytes, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``meshkit ARGS`` in a subprocess, with no ``MESHKIT_*`` from the caller but
    ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")} | env
    return subprocess.run([sys.executable, "-m", "meshkit.cli", *args], env=full,
                          capture_output=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)


def test_inspect_escapes_a_certificates_control_characters(tmp_path: Path) -> None:
    """``certs inspect`` of a certificate whose subject and SANs hold ESC sequences (a
    peer's certificate, a downloaded bundle) printed them raw: ``ESC ]0;..BEL``
    retitled the terminal, ``ESC [2J`` cleared it, a line break in the CN forged a
    ``not after:`` line. Each line is now escaped as ``repr`` writes it; the values
    stay readable."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CN)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("a\x1b[31m.example"),
                x509.UniformResourceIdentifier("spiffe://x\x1b[2J/svc/y")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "evil.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    done = _meshkit("certs", "inspect", str(pem))
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert all(c.isprintable() or c == "\n" for c in out), repr(out)
    # (RFC 4514 writes the CN's ';' as '\;')
    assert "evil\\x1b]0\\;pwned\\x07\\x1b[2J\\u202e\\x9b31m\\nnot after:" in out, out
    assert "a\\x1b[31m.example" in out and "spiffe://x\\x1b[2J/svc/y" in out, out
    assert not any(line.startswith("not after:") and "2099" in line
                   for line in out.splitlines()), out


def test_init_and_issue_into_a_directory_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """``certs init --dir $'certs\\xff'`` (a directory name that is not UTF-8, given as
    the bytes it is) wrote the CA, then died printing its path: ``UnicodeEncodeError``
    traceback, exit 1, under a UTF-8 locale's stdout (``errors='strict'``, here
    ``PYTHONIOENCODING=utf-8:strict``); ``issue`` alike. The paths are now printed
    escaped (``\\udcff``), exit 0."""
    d = tmp_path / "certs\udcff"  # os.fsencode: the byte 0xff
    for args in (("certs", "init", "--dir", str(d)),
                 ("certs", "issue", "orderd", "--dir", str(d))):
        done = _meshkit(*args, PYTHONIOENCODING="utf-8:strict")
        assert (done.returncode, done.stderr) == (0, b""), (args, done.stderr[-800:])
        assert b"certs\\udcff" in done.stdout, (args, done.stdout)
    assert (d / "ca.pem").is_file() and (d / "orderd.pem").is_file()
