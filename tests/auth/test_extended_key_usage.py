"""Extended key usages grpc's TLS (BoringSSL) refuses are refused before they fail calls.

RFC 5280 §4.2.1.12: with an extendedKeyUsage extension a certificate may only be used
for the purposes it lists. grpcio's BoringSSL checks them in every handshake: a server
certificate must list serverAuth, a client certificate clientAuth, and neither takes
anyExtendedKeyUsage in their place ("unsupported certificate purpose"). A certificate
without the extension may be used for both. So:

* ``TLSOptions`` (every workload presents its certificate as a client when it dials)
  refuses, when built, a certificate whose extended key usage lacks clientAuth;
* ``check_server_identity`` (what ``serve()`` runs before starting) refuses a server
  certificate whose extended key usage lacks serverAuth;
* a server's reload skips a renewal lacking serverAuth, keeping the current pair.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from meshkit.auth import CertificateError, TLSOptions, check_server_identity
from tests.auth.chains import ca_of, key_pem, key_usage, pem
from tests.auth.conftest import TD, Pki, StartServer, call, rpc_error

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _write_leaf(pki: Pki, service: str, ekus: Sequence[x509.ObjectIdentifier] | None) -> None:
    """Write ``<service>.pem``/``.key`` into ``pki``: a workload leaf of the mesh CA (SPIFFE
    ID, identity name, localhost) with extended key usages ``ekus`` (``None``: none)."""
    ca_key, ca = ca_of(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/{service}"),
            x509.DNSName(f"{service}.svc.{TD}"), x509.DNSName("localhost")]), critical=False)
        .add_extension(key_usage(sign_certs=False), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if ekus is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    (pki.dir / f"{service}.key").write_bytes(key_pem(key))
    (pki.dir / f"{service}.pem").write_bytes(pem(cert))


def _raw_credentials(pki: Pki, service: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((pki.dir / "ca.pem").read_bytes(),
                                        (pki.dir / f"{service}.key").read_bytes(),
                                        (pki.dir / f"{service}.pem").read_bytes())


async def test_a_client_certificate_without_client_auth_is_refused_when_built(
        pki: Pki, start_server: StartServer) -> None:
    """anyExtendedKeyUsage alone: grpc's servers refuse it as a client certificate (shown
    on a real server), so TLSOptions refuses it when built, naming clientAuth."""
    server = pki.issue("userd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    _write_leaf(pki, "orderd", [EKU.ANY_EXTENDED_KEY_USAGE])
    err = await rpc_error(call(port, credentials=_raw_credentials(pki, "orderd"),
                               options=server.channel_options("userd")))
    assert err.code() is UNAVAILABLE  # what a dial() with it would get on every call
    with pytest.raises(CertificateError, match="clientAuth"):
        pki.options("orderd")
    for ekus in (None, [EKU.CLIENT_AUTH], [EKU.CLIENT_AUTH, EKU.ANY_EXTENDED_KEY_USAGE]):
        _write_leaf(pki, "orderd", ekus)
        client = pki.options("orderd")
        assert await call(port, credentials=client.channel_credentials(),
                          options=client.channel_options("userd"))


async def test_serve_check_refuses_a_server_certificate_without_server_auth(
        pki: Pki, start_server: StartServer) -> None:
    """clientAuth alone: every meshkit client refuses it as a server certificate (shown on
    a real server), so check_server_identity (serve() runs it before starting) refuses
    it, naming serverAuth; without the extension, or with serverAuth, it passes."""
    client = pki.issue("orderd")
    _write_leaf(pki, "userd", [EKU.CLIENT_AUTH])
    server = pki.options("userd")  # fine as a client certificate
    raw = grpc.ssl_server_credentials(  # server_credentials() refuses it too
        [((pki.dir / "userd.key").read_bytes(), (pki.dir / "userd.pem").read_bytes())],
        root_certificates=(pki.dir / "ca.pem").read_bytes(), require_client_auth=True)
    port = await start_server(raw, [server.peer_interceptor()])
    err = await rpc_error(call(port, credentials=client.channel_credentials(),
                               options=client.channel_options("userd")))
    assert err.code() is UNAVAILABLE
    with pytest.raises(CertificateError, match="serverAuth"):
        check_server_identity(server, "userd")
    for ekus in (None, [EKU.SERVER_AUTH, EKU.CLIENT_AUTH]):
        _write_leaf(pki, "userd", ekus)
        check_server_identity(pki.options("userd"), "userd")


async def test_server_reload_skips_a_renewal_without_server_auth(
        pki: Pki, start_server: StartServer, tmp_path: Path) -> None:
    """A renewal whose certificate lacks serverAuth is skipped (logged), the current pair
    kept: new connections keep working."""
    server: TLSOptions = pki.issue("userd")  # reload_interval_s=0.05
    client = pki.issue("orderd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    with capture_logs() as logs:
        _write_leaf(pki, "userd", [EKU.CLIENT_AUTH])
        await asyncio.sleep(0.3)
        for _ in range(3):  # new connections, each a handshake that may reload
            assert await call(port, credentials=client.channel_credentials(),
                              options=client.channel_options("userd"))
            await asyncio.sleep(0.1)
    skipped = [e for e in logs if e["event"] == "certificate reload skipped"]
    assert skipped and "serverAuth" in skipped[0]["error"], [e["event"] for e in logs]
    assert not any(e["event"] == "server certificate reloaded" for e in logs)
