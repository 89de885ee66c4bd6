"""Certificates the mesh must refuse, made with the mesh CA's own key.

* :func:`sub_ca_workload`: a leaf for a real workload identity, issued by an intermediate
  CA that the mesh CA signed. The mesh CA is ``CA:TRUE, pathlen:0``: no CA may sit below
  it, so the chain ``leaf <- sub-CA <- mesh CA`` is invalid (RFC 5280 §4.2.1.9).
* :func:`odd_id_workload`: a leaf straight from the mesh CA whose SPIFFE ID has extra
  path segments (``spiffe://<td>/svc/edge/extra``): not a meshkit workload identity
  (``/svc/<service>``), even though the CA's name constraints (URI host ``<td>``) let it
  through the handshake.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.auth import identity_dns_name, load_certificate, load_private_key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                         decipher_only=False)


def _leaf(issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate,
          names: list[x509.GeneralName], cn: str) -> tuple[ec.EllipticCurvePrivateKey,
                                                           x509.Certificate]:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert


def _ca(cert_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return load_private_key(cert_dir / "ca.key"), load_certificate(cert_dir / "ca.pem")


def sub_ca_workload(cert_dir: Path, service: str, trust_domain: str) -> tuple[bytes, bytes]:
    """``(chain PEM leaf + sub-CA, key PEM)`` of a ``service`` workload issued by a sub-CA
    that the mesh CA in ``cert_dir`` signed."""
    ca_key, ca_cert = _ca(cert_dir)
    now = dt.datetime.now(dt.UTC)
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshkit"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "rogue sub-CA")]))
        .issuer_name(ca_cert.subject)
        .public_key(sub_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub_key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/svc/{service}"),
        x509.DNSName(identity_dns_name(trust_domain, service)),
    ]
    key, leaf = _leaf(sub_key, sub, names, service)
    return _pem(leaf) + _pem(sub), _key_pem(key)


def odd_id_workload(cert_dir: Path, spiffe_id: str) -> tuple[bytes, bytes]:
    """``(certificate PEM, key PEM)`` issued by the mesh CA for an arbitrary SPIFFE ID."""
    ca_key, ca_cert = _ca(cert_dir)
    key, leaf = _leaf(ca_key, ca_cert, [x509.UniformResourceIdentifier(spiffe_id)], "odd")
    return _pem(leaf), _key_pem(key)
