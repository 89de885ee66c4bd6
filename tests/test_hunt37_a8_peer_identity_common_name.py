"""``peer_from_identities`` on a real mTLS call whose client certificate has no SAN.

grpc's ``context.peer_identities()`` falls back to the certificate's subject CN when the
certificate has no subject alternative name (``peer_identity_key()`` is then
``x509_common_name``). A CA that copies a CSR's CN (a corporate or cert-manager root in
the bundle) thus let a client whose CN reads ``spiffe://<td>/svc/admin`` be taken for the
``admin`` workload; the X.509-SVID spec has a SPIFFE ID only in a URI SAN.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshkit.auth import PeerIdentity
from meshkit.auth._identity import peer_from_identities

_Key = ec.EllipticCurvePrivateKey
_Echo = tuple[int, bytes, tuple[_Key, x509.Certificate], list[dict[str, object]]]
_SERVICE, _METHOD = "test.Echo", "Who"


def _cert(subject_cn: str, issuer: tuple[_Key, x509.Certificate] | None, *,
          san: list[x509.GeneralName] | None, ca: bool = False
          ) -> tuple[_Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer[1].subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, b.sign(issuer[0] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key: _Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
async def echo() -> AsyncIterator[_Echo]:
    """A grpc.aio server with mTLS (client certificates required, a plain CA) whose
    handler records what the user's code reads of the peer."""
    ca = _cert("corporate root", None, san=None, ca=True)
    server_key, server_cert = _cert("localhost", ca, san=[x509.DNSName("localhost")])
    seen: list[dict[str, object]] = []

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append({
            "key": context.peer_identity_key(),
            "identities": context.peer_identities(),
            "plain": peer_from_identities(context.peer_identities()),
            "context": peer_from_identities(context),
            "keyed": peer_from_identities(context.peer_identities(),
                                          identity_key=context.peer_identity_key()),
        })
        return b"ok"

    handler = grpc.method_handlers_generic_handler(_SERVICE, {
        _METHOD: grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(_key(server_key), _pem(server_cert))],
                                        root_certificates=_pem(ca[1]),
                                        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield port, _pem(ca[1]), ca, seen
    finally:
        await server.stop(None)


async def _call(port: int, ca_pem: bytes, client: tuple[_Key, x509.Certificate]) -> None:
    creds = grpc.ssl_channel_credentials(ca_pem, _key(client[0]), _pem(client[1]))
    async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", creds,
            options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        assert await ch.unary_unary(f"/{_SERVICE}/{_METHOD}")(b"", timeout=10) == b"ok"


async def test_a_spiffe_id_in_the_common_name_is_no_identity(echo: _Echo) -> None:
    """A client certificate with no SAN and CN ``spiffe://meshkit.test/svc/admin``: grpc
    reports the CN as the peer's identity; given the context (or the identities with
    ``identity_key=context.peer_identity_key()``), peer_from_identities returns None. A
    URI SAN is read as before, through both."""
    port, ca_pem, ca, seen = echo
    await _call(port, ca_pem, _cert("spiffe://meshkit.test/svc/admin", ca, san=None))
    [cn] = seen
    assert cn["key"] == "x509_common_name"  # grpc's fallback, the fault's source
    assert cn["identities"] == [b"spiffe://meshkit.test/svc/admin"]
    assert cn["context"] is None
    assert cn["keyed"] is None
    await _call(port, ca_pem, _cert("orderd", ca, san=[
        x509.UniformResourceIdentifier("spiffe://meshkit.test/svc/orderd")]))
    san = seen[1]
    assert san["key"] == "x509_subject_alternative_name"
    orderd = PeerIdentity("spiffe://meshkit.test/svc/orderd", "meshkit.test", "orderd")
    assert san["context"] == san["keyed"] == san["plain"] == orderd


def test_an_identity_key_other_than_the_san_one_yields_no_identity() -> None:
    """``identity_key`` as bytes or str; only grpc's SAN key admits the names."""
    sid = [b"spiffe://td/svc/a"]
    assert peer_from_identities(sid, identity_key=b"x509_common_name") is None
    assert peer_from_identities(sid, identity_key="x509_common_name") is None
    assert peer_from_identities(sid, identity_key=None) is None
    for key in ("x509_subject_alternative_name", b"x509_subject_alternative_name"):
        peer = peer_from_identities(sid, identity_key=key)
        assert peer is not None and peer.service == "a"
