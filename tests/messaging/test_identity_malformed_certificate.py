"""``MessageVerifier.verify`` refuses a malformed publisher certificate as an identity error.

The ``Meshkit-Cert`` header is whatever the publisher (anyone allowed to publish on the
subject) wrote. A certificate whose DER parses lazily into an error (an X.509 version
of 122: ``InvalidVersion``; invalid UTF-8 in the issuer name: ``ValueError`` "error
parsing asn1 value", raised only when the issuer is read) escaped ``verify`` as that
error instead of :class:`MessageIdentityError`: the consumer, which dead-letters a
message on ``MessageIdentityError``, let it out of its handling instead (the message
redelivered, and failing, again and again). Both are ``"unreadable publisher
certificate"`` now.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from meshkit.auth import create_ca, issue_workload
from meshkit.messaging import MessageIdentityError, MessageSigner, MessageVerifier

pytestmark = pytest.mark.timeout(30)


def _bad_version(der: bytes, _issuer: bytes) -> bytes:
    return der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x7a", 1)


def _bad_issuer_text(der: bytes, issuer: bytes) -> bytes:
    d = bytearray(der)
    d[d.index(b"meshkit", der.index(issuer))] = 0xFF  # not UTF-8 in a UTF8String
    return bytes(d)


@pytest.mark.parametrize("spoil", [_bad_version, _bad_issuer_text])
def test_a_malformed_certificate_is_an_identity_error(spoil: object) -> None:
    ca_key, ca = create_ca(trust_domain="meshkit.test")
    key, cert = issue_workload(ca_key, ca, "orderd")
    verifier = MessageVerifier(ca.public_bytes(serialization.Encoding.PEM))
    headers: dict[str, str] = {}
    MessageSigner(cert, key).sign(headers, msg_id="e1", subject="orders.placed", payload=b"")
    der = base64.b64decode(headers["Meshkit-Cert"])
    spoiled = spoil(der, ca.subject.public_bytes())  # type: ignore[operator]
    assert spoiled != der
    headers["Meshkit-Cert"] = base64.b64encode(spoiled).decode()
    with pytest.raises(MessageIdentityError, match="unreadable publisher certificate"):
        verifier.verify(headers, msg_id="e1", subject="orders.placed", payload=b"")
