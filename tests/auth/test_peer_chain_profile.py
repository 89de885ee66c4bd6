"""Chains through presented intermediates are validated to RFC 5280's profile, not the
CA/Browser Forum's: ``PeerVerifier`` used cryptography's ``build_client_verifier()`` with
its default (WebPKI) extension policies, so a leaf with a critical extended key usage, an
intermediate without keyUsage, or a leaf without an authority key identifier (all allowed
by RFC 5280, by BoringSSL and by meshkit's own check of a leaf a bundle CA issued
directly) were refused ``UNAUTHENTICATED`` when they came through an intermediate (and
``TLSOptions`` over such files failed to build). The same certificates issued directly
are the control in each test.
"""

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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _leaf(issuer: Issuer, *, eku_critical: bool = False, aki: bool = True) -> x509.Certificate:
    """An X.509-SVID for spiffe://<TD>/svc/orderd (as tests.auth.chains.svid), with its
    extendedKeyUsage marked critical or its authorityKeyIdentifier left out."""
    signer_key, signer = issuer
    key = new_key("p256")
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orderd")]))
        .issuer_name(signer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=1))
        .not_valid_after(_now() + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(sign_certs=False, digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=eku_critical)
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/orderd"),
            x509.DNSName(f"orderd.svc.{TD}")]), critical=False)
    )
    if aki:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer_key.public_key()), critical=False)
    return b.sign(signer_key, hashes.SHA256())


def _intermediate_without_key_usage(root: Issuer) -> Issuer:
    """An intermediate CA (CA:TRUE, pathlen:0, SKI/AKI, spiffe://<TD> URI SAN) with no
    keyUsage extension."""
    root_key, root_cert = root
    key = new_key("p256")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signing CA")]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            root_key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{TD}")]), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return key, cert


def _refusals(logs: list[dict[str, object]]) -> list[object]:
    return [e.get("reason") for e in logs if e["event"] == "peer certificate refused"]


@pytest.mark.timeout(60)
def test_leaf_with_critical_eku_through_intermediate_is_identified() -> None:
    """A workload presents leaf -> intermediate (only the root in the server's trust
    bundle); its leaf marks extendedKeyUsage (serverAuth, clientAuth) critical.

    What happens: refused ('Certificate extension has incorrect criticality', 2.5.29.37),
    so every call is UNAUTHENTICATED, although the same leaf issued directly by a bundle CA
    is identified and BoringSSL accepts the handshake. Cause: _check_path
    (meshkit/auth/_identity.py, PolicyBuilder().build_client_verifier()) uses
    cryptography's CA/B-Forum WebPKI profile, which demands a non-critical EKU.

    Expected: identified. RFC 5280 §4.2.1.12: EKU 'MAY, at the option of the certificate
    issuer, be either critical or non-critical'; PeerVerifier's docstring promises the path
    is 'validated as RFC 5280 §6 says' and the leaf needs only 'extended key usage (if
    present) allowing client authentication'.
    """
    root = foreign_ca("upstream root")
    inter = foreign_ca("signing CA", issuer=root, path_length=0)
    cert = _leaf(inter, eku_critical=True)
    # the same kind of leaf, issued directly by a bundle CA, is a workload's
    assert PeerVerifier(pem(inter[1])).identify(
        auth_context(_leaf(inter, eku_critical=True))) is not None
    v = PeerVerifier(pem(root[1]))
    with structlog.testing.capture_logs() as logs:
        peer = v.identify(auth_context(cert, inter[1]))
    assert peer is not None, _refusals(logs)
    assert peer.spiffe_id == f"spiffe://{TD}/svc/orderd"


@pytest.mark.timeout(60)
def test_intermediate_without_key_usage_is_accepted_as_documented() -> None:
    """A workload presents leaf -> intermediate CA whose certificate has no keyUsage
    extension (CA:TRUE critical, pathlen:0), only the root in the bundle.

    What happens: refused ('2.5.29.15: Certificate is missing required extension'):
    UNAUTHENTICATED, while the same intermediate put in the bundle issues the leaf fine.
    Cause: cryptography's client verifier (WebPKI profile) requires keyUsage on every CA
    (meshkit/auth/_identity.py _check_path).

    Expected: identified. PeerVerifier's docstring: the leaf must be 'under CAs (every
    one on the path) that are CA:TRUE whose key usage (if present) has keyCertSign' —
    absent key usage is allowed; RFC 5280 §6.1.4 (k)/(n) checks keyUsage only if present
    (BoringSSL likewise).
    """
    root = foreign_ca("upstream root")
    inter = _intermediate_without_key_usage(root)
    _k, cert = svid(inter, "orderd")
    assert PeerVerifier(pem(inter[1])).identify(auth_context(cert)) is not None  # direct: ok
    v = PeerVerifier(pem(root[1]))
    with structlog.testing.capture_logs() as logs:
        peer = v.identify(auth_context(cert, inter[1]))
    assert peer is not None, _refusals(logs)
    assert peer.service == "orderd"


@pytest.mark.timeout(60)
def test_leaf_without_authority_key_identifier_through_intermediate_is_identified() -> None:
    """A workload presents leaf -> intermediate; the leaf carries no
    authorityKeyIdentifier (an issuer that does not set it, e.g. hand-rolled openssl CAs
    or Go's x509 under a parent without subjectKeyId).

    What happens: refused ('2.5.29.35: Certificate is missing required extension'),
    UNAUTHENTICATED, though the same leaf issued directly by a bundle CA is identified
    and BoringSSL (grpc's handshake) builds the path by name and signature without AKI.
    Cause: the WebPKI profile of cryptography's client verifier (_check_path).

    Expected: identified, as meshkit accepts it when issued directly: RFC 5280 §6 path
    validation does not use AKI (§4.2.1.1: it only 'facilitates' path construction), and
    the commit's promise is that chains BoringSSL accepts are now identified.
    """
    root = foreign_ca("upstream root")
    inter = foreign_ca("signing CA", issuer=root, path_length=0)
    assert PeerVerifier(pem(inter[1])).identify(
        auth_context(_leaf(inter, aki=False))) is not None
    v = PeerVerifier(pem(root[1]))
    with structlog.testing.capture_logs() as logs:
        peer = v.identify(auth_context(_leaf(inter, aki=False), inter[1]))
    assert peer is not None, _refusals(logs)
