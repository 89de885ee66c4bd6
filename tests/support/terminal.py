"""A child interpreter on a pseudo-terminal, and an encrypted client key: what the tests
of "an encrypted key never makes OpenSSL prompt inside the event loop" share (the mTLS
probe's, the Consul and etcd registries')."""

from __future__ import annotations

import contextlib
import datetime
import os
import pty
import select
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["PHRASE", "encrypted_client_files", "run_on_a_terminal"]

PHRASE = b"secret-phrase"
"""The pass phrase :func:`encrypted_client_files` encrypts the key with."""


def encrypted_client_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed client certificate and its key, encrypted with :data:`PHRASE`,
    written under ``tmp_path``; (certificate path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshkit-client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PHRASE)))
    return str(cert_file), str(key_file)


def run_on_a_terminal(code: str, timeout_s: float) -> bytes:
    """What ``python -c code`` writes on its terminal (a pseudo-terminal) until it writes
    a last line ``END``, ends, or ``timeout_s`` seconds pass; the process is killed then
    if it has not ended."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the test's interpreter
        os.execv(sys.executable, [sys.executable, "-c", code])
    out, end = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the child ended (EIO)
                    break
                if not data:
                    break
                out += data
                if out.rstrip().endswith(b"END"):
                    break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return out
