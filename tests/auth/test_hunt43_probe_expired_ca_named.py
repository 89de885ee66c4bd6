"""The mTLS probe names an expired CA as such, not the server's valid certificate.

OpenSSL reports ``certificate has expired`` (``X509_V_ERR_CERT_HAS_EXPIRED``) for any
certificate of the chain. The probe's reason then always read "the server's certificate
<id> expired at <its notAfter>", even when that certificate is valid for hours yet and
the CA of the client's bundle that issued it is what expired: the date it gave lay in
the future, sending the operator to renew a server that needs nothing. Likewise for a
CA not valid yet. The reason now names the CA certificate (its subject and date) and
says the server's own certificate is valid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.auth import create_ca, issue_into_dir
from meshkit.auth._probe import handshake_problem
from tests.auth.conftest import TD, Pki

pytestmark = pytest.mark.timeout(60)

NOW = dt.datetime.now(dt.UTC)


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, service: str,
          not_before: dt.datetime, not_after: dt.datetime
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A workload leaf of ``ca`` valid from ``not_before`` to ``not_after`` (outliving
    the CA, which meshkit's issuer refuses to write)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/{service}"),
            x509.DNSName(f"{service}.svc.{TD}")]), critical=False)
        .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, d: Path, name: str
         ) -> tuple[Path, Path]:
    key_file, cert_file = d / f"{name}.key", d / f"{name}.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


async def _tls_server(key_file: Path, cert_file: Path) -> AsyncGenerator[int, None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


@pytest.mark.parametrize("period", ["expired", "not_valid_yet"],
                         ids=["ca-expired", "ca-not-valid-yet"])
async def test_a_ca_out_of_its_period_is_named_not_the_valid_leaf(
        period: str, tmp_path: Path, pki: Pki) -> None:
    if period == "expired":  # the CA: valid until 2 h ago; the leaf: for 2 h more
        ca_key, ca = create_ca(trust_domain=TD, ttl_days=1, now=NOW - dt.timedelta(days=1,
                                                                                   hours=2))
    else:  # the CA: valid from 2 days on (its 5 min backdating aside)
        ca_key, ca = create_ca(trust_domain=TD, ttl_days=3, now=NOW + dt.timedelta(days=2))
    leaf_until = NOW + dt.timedelta(hours=2)
    key, leaf = _leaf(ca_key, ca, "whod", NOW - dt.timedelta(hours=1), leaf_until)
    key_file, cert_file = _pem(key, leaf, tmp_path, "whod")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    client = issue_into_dir(pki.dir, "clientd", ttl_h=1.0)
    served = _tls_server(key_file, cert_file)
    port = await anext(served)
    try:
        why = await handshake_problem(
            "127.0.0.1", port, ca_file=str(bundle), cert_file=str(client.cert_file),
            key_file=str(client.key_file), server_name=f"whod.svc.{TD}",
            expected_id=f"spiffe://{TD}/svc/whod", client_id=f"spiffe://{TD}/svc/clientd",
            timeout_s=10)
    finally:
        await served.aclose()
    assert why is not None
    ca_name = ca.subject.rfc4514_string()
    if period == "expired":
        assert "certificate has expired" in why, why
        assert f"{leaf_until:%Y-%m-%dT%H:%M:%S}Z" not in why.split("valid until")[0], why
        assert f"the CA certificate {ca_name!r}" in why, why
        assert f"expired at {ca.not_valid_after_utc:%Y-%m-%dT%H:%M:%S}Z" in why, why
    else:
        assert "certificate is not yet valid" in why, why
        assert f"the CA certificate {ca_name!r}" in why, why
        assert f"not valid until {ca.not_valid_before_utc:%Y-%m-%dT%H:%M:%S}Z" in why, why
    assert f"the server's certificate spiffe://{TD}/svc/whod is valid" in why, why
