"""A SPIFFE ID whose trust domain is longer than 255 bytes is no SPIFFE ID.

SPIFFE ID §2.3: the trust domain is the URI's host, which RFC 3986 bounds to 255
characters, "therefore a maximum length of a trust domain name is 255 bytes" (java-spiffe
and the Rust SPIFFE crates refuse longer ones). ``SpiffeId.parse`` bounded only the whole
ID (2048 bytes): a 256-byte trust domain parsed, and ``meshkit certs inspect``
(:func:`describe_certificate`) showed such a URI SAN as the certificate's SPIFFE ID.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.auth import SpiffeId, describe_certificate
from meshkit.errors import ConfigError

_LONG_TD = ".".join(["a" * 63] * 4) + "b"  # 256 bytes: four labels of 63, dots, one more
_MAX_TD = ".".join(["a" * 63] * 4)[:-1] + "b"  # 255 bytes


def test_a_trust_domain_of_256_bytes_is_refused() -> None:
    """256 bytes: refused (quoted, cut); 255 bytes: a SPIFFE ID."""
    assert len(_LONG_TD) == 256 and len(_MAX_TD) == 255
    with pytest.raises(ConfigError, match="trust domain"):
        SpiffeId.parse(f"spiffe://{_LONG_TD}/svc/orderd")
    with pytest.raises(ConfigError):
        SpiffeId.parse(f"spiffe://{_LONG_TD}".encode())
    assert SpiffeId.parse(f"spiffe://{_MAX_TD}/svc/orderd").trust_domain == _MAX_TD


@pytest.mark.parametrize("td", ["long", "max"])
def test_inspect_shows_no_spiffe_id_for_a_trust_domain_over_255_bytes(td: str) -> None:
    """A certificate whose only URI SAN has a 256-byte trust domain has no SPIFFE ID."""
    host = _LONG_TD if td == "long" else _MAX_TD
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orderd")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{host}/svc/orderd")]),
                critical=False)
            .sign(key, hashes.SHA256()))
    info = describe_certificate(cert)
    assert info.spiffe_id == (None if td == "long" else f"spiffe://{host}/svc/orderd")
