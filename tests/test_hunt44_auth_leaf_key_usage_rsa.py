"""A peer leaf is checked as X.509-SVID §4.3 says: keyUsage MUST be present with
digitalSignature (go-spiffe and the Rust spiffe crate refuse a leaf without it), and an
RSA leaf key under 2048 bits is refused (NIST SP 800-131A, as meshkit's own workload keys
and JWKS keys are). Before, ``PeerVerifier`` checked keyUsage only when present and never
looked at the key size, so both peers were identified."""

from __future__ import annotations

import datetime as dt

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.auth import PeerVerifier
from tests.auth.chains import Issuer, auth_context, foreign_ca, key_usage, new_key, pem, svid
from tests.auth.conftest import TD

pytestmark = pytest.mark.timeout(60)


def _leaf(issuer: Issuer, *, usage: bool) -> x509.Certificate:
    """An X.509-SVID for spiffe://<TD>/svc/orderd, with or without a keyUsage extension."""
    signer_key, signer = issuer
    key = new_key("p256")
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orderd")]))
        .issuer_name(signer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/orderd"),
            x509.DNSName(f"orderd.svc.{TD}")]), critical=False)
    )
    if usage:
        b = b.add_extension(key_usage(sign_certs=False), critical=True)
    return b.sign(signer_key, hashes.SHA256())


def _refusals(logs: list[dict[str, object]]) -> list[object]:
    return [e.get("reason") for e in logs if e.get("event") == "peer certificate refused"]


def test_a_leaf_without_key_usage_is_refused_and_the_reason_logged() -> None:
    """A leaf of a bundle CA with no keyUsage extension: identify() gives None (the
    interceptor's UNAUTHENTICATED) and the log names keyUsage; the same leaf with
    keyUsage digitalSignature is the control."""
    root = foreign_ca("root")
    v = PeerVerifier(pem(root[1]))
    assert v.identify(auth_context(_leaf(root, usage=True))) is not None
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(_leaf(root, usage=False))) is None
    [reason] = _refusals(logs)
    assert "keyUsage" in str(reason) and "X.509-SVID" in str(reason)


def test_a_leaf_without_key_usage_through_an_intermediate_is_refused() -> None:
    """The same leaf reached through a presented intermediate CA is refused as well."""
    root = foreign_ca("root")
    inter = foreign_ca("signing CA", issuer=root, path_length=0)
    v = PeerVerifier(pem(root[1]))
    assert v.identify(auth_context(_leaf(inter, usage=True), inter[1])) is not None
    with structlog.testing.capture_logs() as logs:
        assert v.identify(auth_context(_leaf(inter, usage=False), inter[1])) is None
    assert any("keyUsage" in str(r) for r in _refusals(logs))


@pytest.mark.parametrize(("kind", "accepted"), [("rsa", True), ("rsa1024", False)],
                         ids=["rsa2048", "rsa1024"])
def test_an_rsa_leaf_under_2048_bits_is_refused(kind: str, accepted: bool) -> None:
    """An RSA 1024-bit SVID of a bundle CA is refused, the log naming the size and no
    key material; a 2048-bit one is identified."""
    root = foreign_ca("root")
    _key, cert = svid(root, "orderd", kind=kind)
    v = PeerVerifier(pem(root[1]))
    with structlog.testing.capture_logs() as logs:
        peer = v.identify(auth_context(cert))
    if accepted:
        assert peer is not None and peer.service == "orderd"
        return
    assert peer is None
    [reason] = _refusals(logs)
    assert "1024" in str(reason) and "2048" in str(reason)
    assert "BEGIN" not in str(logs)
