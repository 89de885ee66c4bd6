"""``MessageSigner`` refuses a certificate and key that are not ECDSA when it is built.

An RSA workload certificate (SPIRE issues RSA SVIDs when told to) and its key built a
signer, and every publish then failed with ``TypeError: RSAPrivateKey.sign() missing 1
required positional argument`` (an outbox relay retried each event for ever); a consumer
refuses such a signature anyway ("publisher certificate has no ECDSA key"). Now a
``ConfigError`` at construction names the key type.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from meshkit.auth import create_ca
from meshkit.errors import ConfigError
from meshkit.messaging import MessageSigner

pytestmark = pytest.mark.timeout(30)


def test_an_rsa_workload_is_refused_at_construction() -> None:
    ca_key, ca = create_ca(trust_domain="meshkit.test")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orderd")]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier("spiffe://meshkit.test/svc/orderd")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    with pytest.raises(ConfigError, match="ECDSA") as err:
        MessageSigner(cert, key)  # type: ignore[arg-type]
    assert "RSA" in str(err.value)
