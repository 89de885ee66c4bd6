"""``meshkit certs issue`` on a host whose ``ca.pem`` is a bundle issues with the CA
certificate of ``ca.key``.

The README's rotation: "A CA renewed with its key can sit beside the old one in ca.pem";
a trust bundle may also hold another CA (a second mesh during a migration) before the
mesh CA. The issuer took the first certificate of ``ca.pem`` whatever it was, so it
refused to issue ("would outlive the CA") a certificate the renewed CA vouches for, or
refused the mesh CA's own key ("does not match the CA certificate"). It now issues with
the certificate of ``ca.pem`` that matches ``ca.key`` and is valid the longest.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshkit.auth import TLSOptions, issue_into_dir, load_certificate
from meshkit.auth.cli import main
from meshkit.errors import ConfigError
from tests.auth.chains import ca_of, foreign_ca, pem
from tests.auth.conftest import Pki


def _renewed(pki: Pki, days: float) -> x509.Certificate:
    """The mesh CA certificate renewed with its key: same subject, key and extensions,
    valid ``days`` days from now."""
    key, old = ca_of(pki)
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=days)))
    for ext in old.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    return b.sign(key, hashes.SHA256())


def test_issue_uses_the_renewed_ca_certificate_of_the_bundle(pki: Pki) -> None:
    """ca.pem = the old CA certificate (2 days left) + the one renewed with its key (30
    days): a 72 h certificate is issued, and verifies against the bundle."""
    _, old = ca_of(pki)
    (pki.dir / "ca.pem").write_bytes(pem(old, _renewed(pki, 30)))
    files = issue_into_dir(pki.dir, "orderd", ttl_h=72, dns=("localhost",))
    leaf = load_certificate(files.cert_file)
    assert leaf.not_valid_after_utc > old.not_valid_after_utc
    TLSOptions(ca_file=files.ca_file, cert_file=files.cert_file, key_file=files.key_file)


def test_cli_issue_with_another_ca_first_in_the_bundle(
        pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    _, mesh = ca_of(pki)
    (pki.dir / "ca.pem").write_bytes(pem(foreign_ca("another mesh")[1], mesh))
    assert main(["certs", "issue", "orderd", "--dir", str(pki.dir)]) == 0, \
        capsys.readouterr().err
    assert load_certificate(pki.dir / "orderd.pem").issuer == mesh.subject


def test_a_bundle_without_the_keys_certificate_is_still_refused(pki: Pki) -> None:
    """No certificate of ca.pem matches ca.key: refused as before, nothing written."""
    (pki.dir / "ca.pem").write_bytes(pem(foreign_ca("another mesh")[1]))
    with pytest.raises(ConfigError, match="does not match"):
        issue_into_dir(pki.dir, "orderd")
    assert not (pki.dir / "orderd.pem").exists() and not (pki.dir / "orderd.key").exists()
