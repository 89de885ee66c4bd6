"""Hand-built certificates meshkit's issuer refuses to make: sub-CAs, odd leaves, odd CAs.

Built with ``cryptography`` only, to attack the verifier: a sub-CA signed with the mesh CA
key (which the CA's ``pathlen:0`` forbids), leaves it issues, leaves with SPIFFE IDs that
are not workloads, CA:TRUE leaves, and so on.

The second half is a PKI independent of meshkit's issuer, the way real meshes get their
certificates: cert-manager Secrets (``ca.crt``/``tls.crt``/``tls.key``, RSA by default,
PKCS#1 or PKCS#8 keys), SPIRE-style X.509-SVIDs (a leaf with only its SPIFFE URI SAN, an
intermediate signing CA under an upstream root), and malformed CA certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.auth import TLSOptions, load_certificate, load_private_key
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


def key_pem(key: Any, fmt: str = "pkcs8") -> bytes:
    """The key as unencrypted PEM: ``pkcs8`` (BEGIN PRIVATE KEY, default) or ``pkcs1``
    (BEGIN RSA/EC PRIVATE KEY, OpenSSL's traditional format)."""
    f = (serialization.PrivateFormat.PKCS8 if fmt == "pkcs8"
         else serialization.PrivateFormat.TraditionalOpenSSL)
    data: bytes = key.private_bytes(serialization.Encoding.PEM, f, serialization.NoEncryption())
    return data


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


# -- a PKI independent of meshkit's issuer (cert-manager, SPIRE) -------------------------------
AnyKey = Any  # an EC, RSA or Ed25519 private key
Issuer = tuple[AnyKey, x509.Certificate]


def new_key(kind: str) -> AnyKey:
    """A private key: ``p256``, ``p384``, ``p521`` (EC), ``rsa`` (2048 bits), ``rsa1024``
    or ``ed25519``."""
    if kind in ("p256", "p384", "p521"):
        curve = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}[kind]
        return ec.generate_private_key(curve())
    if kind in ("rsa", "rsa1024"):
        return rsa.generate_private_key(public_exponent=65537,
                                        key_size=1024 if kind == "rsa1024" else 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def foreign_ca(name: str, *, kind: str = "p256", issuer: Issuer | None = None,
               path_length: int | None = None, spiffe_td: str | None = TD,
               permitted_dns: Sequence[str] | None = None, ttl_h: float = 24.0) -> Issuer:
    """A CA as cert-manager or SPIRE makes one: a self-signed root, or an intermediate
    signed by ``issuer`` (with an authorityKeyIdentifier). ``spiffe_td`` puts a
    ``spiffe://<td>`` URI SAN on it (SPIRE's CAs carry one); ``permitted_dns`` adds DNS
    name constraints."""
    key = new_key(kind)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "foreign"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer = (key, None) if issuer is None else issuer
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if signer is None else signer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(hours=ttl_h))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if signer is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer_key.public_key()), critical=False)
    if spiffe_td is not None:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{spiffe_td}")]), critical=False)
    if permitted_dns is not None:
        b = b.add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(d) for d in permitted_dns],
            excluded_subtrees=None), critical=True)
    return key, b.sign(signer_key, _hash_for(signer_key))


def _hash_for(key: AnyKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def svid(issuer: Issuer, service: str, *, kind: str = "p256", td: str = TD,
         dns: Sequence[str] | None = None, ips: Sequence[str] = ("127.0.0.1",),
         key_encipherment: bool = False, ttl_h: float = 1.0) -> Issuer:
    """An X.509-SVID for ``spiffe://<td>/svc/<service>`` as cert-manager or SPIRE issues
    one: CA:FALSE, digitalSignature (plus keyEncipherment for cert-manager's RSA leaves),
    serverAuth + clientAuth, the identity DNS name unless ``dns`` says otherwise
    (``dns=()``: a SPIRE SVID with only its SPIFFE URI SAN)."""
    signer_key, signer = issuer
    key = new_key(kind)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"spiffe://{td}/svc/{service}"),
        *(x509.DNSName(d) for d in (dns if dns is not None else [f"{service}.svc.{td}"])),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
    ]
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(signer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=1))
        .not_valid_after(_now() + dt.timedelta(hours=ttl_h))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer_key.public_key()), critical=False)
        .sign(signer_key, _hash_for(signer_key))
    )
    return key, cert


def secret_dir(base: Path, name: str, *, ca: bytes, crt: bytes, key: bytes) -> Path:
    """A cert-manager-style Secret volume ``base/name``: ca.crt, tls.crt, tls.key (0600)."""
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    for fname, data in (("ca.crt", ca), ("tls.crt", crt), ("tls.key", key)):
        (d / fname).write_bytes(data)
    (d / "tls.key").chmod(0o600)
    return d


def secret_tls(d: Path, **kw: Any) -> TLSOptions:
    """TLSOptions over a :func:`secret_dir`."""
    return TLSOptions(ca_file=d / "ca.crt", cert_file=d / "tls.crt", key_file=d / "tls.key",
                      **kw)


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (as the kubelet's symlink swap does)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def ca_with_duplicate_extension(name: str) -> Issuer:
    """A self-signed CA whose subjectAltName extension appears twice (RFC 5280 §4.2: a
    certificate MUST NOT hold one extension twice; cryptography raises
    ``x509.DuplicateExtension``, no ValueError, on reading its extensions). Built with a
    placeholder OID of the same DER length, renamed in the TBS bytes, signed again."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{TD}")])
    placeholder = x509.ObjectIdentifier("2.5.29.99")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(sign_certs=True), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.UnrecognizedExtension(placeholder, san.public_bytes()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(b"\x06\x03\x55\x1d\x63") == 1
    tbs = tbs.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11")
    sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    alg = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))  # ecdsa-with-SHA256
    return key, x509.load_der_x509_certificate(
        _tlv(0x30, tbs + alg + _tlv(0x03, b"\x00" + sig)))


def leaf_with_malformed_ip_san(issuer: Issuer) -> x509.Certificate:
    """A leaf whose subjectAltName holds a one-byte iPAddress (RFC 5280 §4.2.1.6: 4 or 16
    bytes); cryptography raises ValueError on reading its extensions."""
    signer_key, signer = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    bad_san = b"\x30\x03\x87\x01\x01"  # SEQUENCE { [7] iPAddress: 1 byte }
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orderd")]))
        .issuer_name(signer.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(
            x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bad_san), critical=False)
        .sign(signer_key, hashes.SHA256())
    )
