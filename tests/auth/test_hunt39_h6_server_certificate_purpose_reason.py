"""A server certificate without serverAuth: the probe's reason says so, not "no CA".

A server presenting a certificate whose extended key usage lists clientAuth only (a
client certificate mounted on a server, a cert-manager Certificate with
``usages: [client auth]``): grpc's handshake refuses it, the endpoint fails, and the
channel's TLS probe (:mod:`meshkit.auth._probe`) read ``certificate verify failed:
unsupported certificate purpose; the server's certificate ... is issued by '<CA>', which
no CA of <ca.pem> verifies``: the second half false (the mesh CA issued it) and sending
the operator to the trust bundle. Now a refusal that is not about the issuer names the
certificate's purpose (or only names the certificate), and "no CA verifies" is said
only when verification could not find its issuer.
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import meshkit
from meshkit.discovery import Instance, LocalRegistry
from tests.auth.chains import ca_of, key_pem, key_usage, pem
from tests.auth.conftest import TD, Pki, StartServer
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


def _client_only_server_certificate(pki: Pki) -> tuple[bytes, bytes]:
    """whod's SVID (SPIFFE ID and identity name) by ``pki``'s CA, its extended key usage
    clientAuth only: (key PEM, certificate PEM)."""
    ca_key, ca = ca_of(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whod")]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/whod"),
            x509.DNSName(f"whod.svc.{TD}")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key_pem(key), pem(cert)


async def test_a_server_certificate_without_server_auth_is_named_for_its_purpose(
        pki: Pki, registry: LocalRegistry, start_server: StartServer) -> None:
    key, cert = _client_only_server_certificate(pki)
    port = await start_server(grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=(pki.dir / "ca.pem").read_bytes(),
        require_client_auth=True))
    await registry.register(Instance(service="whod", instance_id="w1", host="127.0.0.1",
                                     port=port))
    opts = meshkit.DialOptions(tls=pki.issue("clientd"), retry=None, outlier=None)
    async with meshkit.dial("whod", registry=registry, options=opts) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary("/test.Auth/Whoami")(b"", timeout=5)
        await until(lambda: ch.stats().endpoints[0].connect_error is not None,
                    timeout_s=30, what="the endpoint's connect_error")
        why = ch.stats().endpoints[0].connect_error
    # (OpenSSL's words: "unsuitable certificate purpose" in 3.x, "unsupported ..." before)
    assert why is not None and why.startswith("certificate verify failed: "), why
    assert why.endswith(f"; the server's certificate spiffe://{TD}/svc/whod has an "
                        "extended key usage without serverAuth"), why
