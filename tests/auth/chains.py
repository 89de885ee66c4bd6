"""Hand-built certificates meshkit's issuer refuses to make: sub-CAs, odd leaves, odd CAs.

Built with ``cryptography`` only, to attack the verifier: a sub-CA signed with the mesh CA
key (which the CA's ``pathlen:0`` forbids), leaves it issues, leaves with SPIFFE IDs that
are not workloads, CA:TRUE leaves, and so on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.auth import load_certificate, load_private_key
from tests.auth.conftest import TD, Pki

Key = ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_usage(*, sign_certs: bool, digital_signature: bool | None = None) -> x509.KeyUsage:
    """A key usage extension: CA style (keyCertSign, cRLSign) or leaf style."""
    return x509.KeyUsage(
        digital_signature=(not sign_certs) if digital_signature is None else digital_signature,
        content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=sign_certs, crl_sign=sign_certs,
        encipher_only=False, decipher_only=False,
    )


def ca_of(pki: Pki) -> tuple[Key, x509.Certificate]:
    """The mesh CA's key and certificate from a ``Pki`` directory."""
    return load_private_key(pki.dir / "ca.key"), load_certificate(pki.dir / "ca.pem")


def sub_ca(issuer_key: Key, issuer: x509.Certificate, *, name: str = "rogue sub CA",
           path_length: int | None = None, ttl_h: float = 2.0) -> tuple[Key, x509.Certificate]:
    """An intermediate CA (CA:TRUE, keyCertSign) signed with ``issuer_key``; no name
    constraints of its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=ttl_h))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def leaf(issuer_key: Key, issuer: x509.Certificate, *, service: str = "orderd",
         uris: Sequence[str] | None = None, dns: Sequence[str] | None = None,
         ips: Sequence[str] = (), ca: bool | None = False,
         usage: x509.KeyUsage | None = None, eku: bool = True,
         not_before: dt.datetime | None = None,
         ttl_h: float = 1.0) -> tuple[Key, x509.Certificate]:
    """A leaf signed with ``issuer_key``: by default a proper X.509-SVID for ``service``
    (SPIFFE URI, identity DNS name, CA:FALSE, digitalSignature, server+client auth).

    ``uris``/``dns`` replace the SANs; ``ca=None`` leaves basicConstraints out.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    names: list[x509.GeneralName] = [
        *(x509.UniformResourceIdentifier(u)
          for u in (uris if uris is not None else [f"spiffe://{TD}/svc/{service}"])),
        *(x509.DNSName(d) for d in (dns if dns is not None else [f"{service}.svc.{TD}"])),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
    ]
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=ttl_h))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(usage or key_usage(sign_certs=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, b.sign(issuer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    """The certificates as one PEM blob, in order."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key) -> bytes:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def client_credentials(pki: Pki, key: Key, *chain: x509.Certificate) -> grpc.ChannelCredentials:
    """Client credentials trusting ``pki``'s CA and presenting ``chain`` (leaf first)."""
    return grpc.ssl_channel_credentials((pki.dir / "ca.pem").read_bytes(), key_pem(key),
                                        pem(*chain))


def auth_context(leaf_cert: x509.Certificate,
                 *chain: x509.Certificate) -> dict[str, list[bytes]]:
    """What ``context.auth_context()`` holds for a TLS peer presenting ``leaf_cert`` and
    ``chain`` (grpc lists the extra certificates, without the leaf, only when there are
    any)."""
    ctx = {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem(leaf_cert)]}
    if chain:
        ctx["x509_pem_cert_chain"] = [pem(*chain)]
    return ctx
