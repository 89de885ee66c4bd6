"""``meshkit certs`` (and the certificate functions under it) say why a file cannot be
read, and which argument is wrong, rather than an exception's type name."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit.auth._certs import create_ca, load_certificates, load_private_key
from meshkit.auth._errors import CertificateError
from meshkit.cli import main


def _certificate_error(path: Path) -> str:
    with pytest.raises(CertificateError) as raised:
        load_certificates(path)
    return str(raised.value)


def test_certificate_file_errors_say_why(tmp_path: Path) -> None:
    """Each said only ``cannot read certificates from F: ValueError`` (or
    ``FileNotFoundError``): an empty file, a DER certificate (``openssl ... -outform
    der``, a Windows export) and a missing one looked alike."""
    _, cert = create_ca(trust_domain="meshkit.local")
    missing = tmp_path / "missing.pem"
    assert "No such file or directory" in _certificate_error(missing)
    assert "is a directory" in _certificate_error(tmp_path).lower()
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    assert "empty" in _certificate_error(empty)
    der = tmp_path / "ca.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    msg = _certificate_error(der)
    assert "DER" in msg and "openssl x509 -inform der" in msg, msg
    for content in (b"hello\n", b"0123 a text file starting with the digit 0\n"):
        text = tmp_path / "notes.txt"
        text.write_bytes(content)
        assert "no PEM certificate" in _certificate_error(text), content
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    msg = _certificate_error(broken)
    assert "cannot be parsed" in msg and "ValueError" not in msg, msg


def _key_error(path: Path) -> str:
    with pytest.raises(CertificateError) as raised:
        load_private_key(path)
    return str(raised.value)


def test_key_file_errors_say_why_and_never_quote_the_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert "No such file or directory" in _key_error(tmp_path / "missing.key")
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    msg = _key_error(encrypted)
    assert "encrypted" in msg and "TypeError" not in msg, msg
    der = tmp_path / "der.key"
    der_bytes = key.private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    der.write_bytes(der_bytes)
    msg = _key_error(der)
    assert "DER" in msg and "openssl pkey -inform der" in msg, msg
    _, cert = create_ca(trust_domain="meshkit.local")
    a_cert = tmp_path / "cert-not-key.pem"
    a_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    msg = _key_error(a_cert)
    assert "no PEM private key" in msg and "CERTIFICATE" in msg, msg
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    assert "empty" in _key_error(empty)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = pem.split(b"\n")[1]
    broken = tmp_path / "broken.key"
    broken.write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + body[:20]
                       + b"\n-----END PRIVATE KEY-----\n")
    msg = _key_error(broken)
    assert "cannot be parsed" in msg and "ValueError" not in msg, msg
    for m in (msg, _key_error(der), _key_error(encrypted)):
        assert body[:20].decode() not in m and "MII" not in m, m


def test_inspect_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, cert = create_ca(trust_domain="meshkit.local")
    der = tmp_path / "ca.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert main(["certs", "inspect", str(der)]) == 1
    err = capsys.readouterr().err
    assert "DER" in err and str(der) in err, err
