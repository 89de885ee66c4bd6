"""mTLS against real in-process grpc.aio servers: what the handshake accepts and refuses."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from cryptography import x509

import meshkit
from meshkit.auth import (
    AuthOptions,
    CertificateError,
    ChannelCredentialsReloader,
    TLSOptions,
    check_server_identity,
    tls_from_dir,
)
from meshkit.discovery import LocalRegistry
from tests.auth.chains import (
    ca_of,
    ca_with_duplicate_extension,
    client_credentials,
    foreign_ca,
    key_pem,
    leaf,
    pem,
    replace_file,
    secret_dir,
    secret_tls,
    svid,
)
from tests.auth.conftest import SERVICE, TD, Pki, StartServer, call, rpc_error
from tests.support.wait import until

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_call_sees_verified_peer(pki: Pki, start_server: StartServer) -> None:
    """A client with a mesh certificate reaches a server that verifies it, which sees its ID."""
    server = pki.issue("userd")
    client = pki.issue("orderd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    got = await call(port, credentials=client.channel_credentials(),
                     options=client.channel_options("userd"))
    assert got == f"spiffe://{TD}/svc/orderd|-".encode()


async def test_client_cert_from_another_ca_refused(pki: Pki, other_pki: Pki,
                                                   start_server: StartServer) -> None:
    """A client certificate signed by another CA fails the handshake."""
    server = pki.issue("userd")
    rogue = other_pki.issue("orderd")
    port = await start_server(server.server_credentials())
    creds = grpc.ssl_channel_credentials(server.read().ca_pem, rogue.read().key_pem,
                                         rogue.read().cert_pem)
    err = await rpc_error(call(port, credentials=creds, options=server.channel_options("userd")))
    assert err.code() is UNAVAILABLE


async def test_expired_client_cert_refused(pki: Pki, start_server: StartServer) -> None:
    """A client certificate that expired an hour ago fails the handshake."""
    server = pki.issue("userd")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = pki.issue("orderd", ttl_h=1, now=past)
    port = await start_server(server.server_credentials())
    err = await rpc_error(call(port, credentials=expired.channel_credentials(),
                               options=expired.channel_options("userd")))
    assert err.code() is UNAVAILABLE


async def test_plaintext_client_refused(pki: Pki, start_server: StartServer) -> None:
    """A plaintext client cannot talk to an mTLS server."""
    port = await start_server(pki.issue("userd").server_credentials())
    err = await rpc_error(call(port, credentials=None))
    assert err.code() is UNAVAILABLE


async def test_tls_client_without_certificate_refused(pki: Pki,
                                                      start_server: StartServer) -> None:
    """A TLS client that presents no certificate is refused: client auth is required."""
    server = pki.issue("userd")
    port = await start_server(server.server_credentials())
    creds = grpc.ssl_channel_credentials(server.read().ca_pem)
    err = await rpc_error(call(port, credentials=creds, options=server.channel_options("userd")))
    assert err.code() is UNAVAILABLE


async def test_client_refuses_server_with_wrong_identity(pki: Pki,
                                                         start_server: StartServer) -> None:
    """A client expecting 'billing' refuses a server holding the 'userd' certificate."""
    server = pki.issue("userd")
    client = pki.issue("orderd")
    port = await start_server(server.server_credentials())
    err = await rpc_error(call(port, credentials=client.channel_credentials(),
                               options=client.channel_options("billing")))
    assert err.code() is UNAVAILABLE
    assert await call(port, credentials=client.channel_credentials(),
                      options=client.channel_options("userd"))


async def test_client_cert_with_a_second_uri_san_refused(pki: Pki,
                                                         start_server: StartServer) -> None:
    """X.509-SVID section 2 allows exactly one URI SAN: a CA-signed client certificate with
    orderd's SPIFFE ID plus an https URI (inside the CA's name constraints, so the
    handshake passes) is no SVID, and the call is UNAUTHENTICATED, not served as orderd."""
    server = pki.issue("userd")
    ca_key, ca = ca_of(pki)
    odd_key, odd = leaf(ca_key, ca, uris=[f"spiffe://{TD}/svc/orderd", f"https://{TD}/x"])
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    err = await rpc_error(call(port, credentials=client_credentials(pki, odd_key, odd),
                               options=server.channel_options("userd")))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_allowed_peers_refuses_other_workloads(pki: Pki, start_server: StartServer) -> None:
    """A valid mesh peer outside allowed_peers gets PERMISSION_DENIED, not its data."""
    pki.issue("userd")
    server = pki.options("userd", allowed_peers=(f"spiffe://{TD}/svc/orderd",))
    gateway = pki.issue("gateway")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    err = await rpc_error(call(port, credentials=gateway.channel_credentials(),
                               options=gateway.channel_options("userd")))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "gateway" not in (err.details() or "") and "orderd" not in (err.details() or "")


def _served_serial(port: int, client: TLSOptions) -> int:
    ctx = ssl.create_default_context(cafile=str(client.ca_file))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(str(client.cert_file), str(client.key_file))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock, \
            ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_server_picks_up_renewed_certificate(pki: Pki, start_server: StartServer) -> None:
    """After renewal on disk, new connections get the new certificate without a restart."""
    server = pki.issue("userd")
    client = pki.issue("orderd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    first = await asyncio.to_thread(_served_serial, port, client)
    pki.issue("userd", overwrite=True)
    renewed = server.read()
    new_serial = x509.load_pem_x509_certificate(renewed.cert_pem).serial_number
    assert new_serial != first

    async def serving_new() -> bool:
        return await asyncio.to_thread(_served_serial, port, client) == new_serial

    await until(serving_new, timeout_s=5, what="renewed certificate served")
    assert await call(port, credentials=client.channel_credentials(),
                      options=client.channel_options("userd"))


async def test_channel_reloader_bumps_generation(pki: Pki) -> None:
    """The client reloader notices renewed files and bumps its generation once."""
    client = pki.issue("orderd")
    reloader = ChannelCredentialsReloader(client)
    assert not reloader.check(force=True)
    fp = client.certificate_fingerprint()
    pki.issue("orderd", overwrite=True)
    assert client.certificate_fingerprint() != fp
    assert reloader.check(force=True) and reloader.generation == 2
    assert not reloader.check(force=True)


@pytest.mark.parametrize("uri", [f"spiffe://{TD}/svc//orderd", f"spiffe://{TD}/svc/orderd/",
                                 f"spiffe://{TD.upper()}/svc/orderd"])
def test_channel_reloader_skips_renewed_certificate_with_malformed_spiffe_id(
        pki: Pki, uri: str) -> None:
    """check(): "Unreadable or inconsistent files are logged and skipped": a renewed
    certificate whose one URI SAN is a malformed SPIFFE ID (SPIFFE ID §2) is a
    CertificateError to the reader, so the old credentials stay (not a ConfigError out of
    the channel's maintenance loop)."""
    client = pki.issue("orderd")
    reloader = client.channel_reloader()
    ca_key, ca = ca_of(pki)
    key, cert = leaf(ca_key, ca, uris=[uri])
    (pki.dir / "orderd.key").write_bytes(key_pem(key))
    (pki.dir / "orderd.pem").write_bytes(pem(cert))
    with pytest.raises(CertificateError, match="malformed SPIFFE ID"):
        client.read()
    assert reloader.check(force=True) is False
    assert reloader.generation == 1


def test_construction_checks_files(pki: Pki, tmp_path: Path) -> None:
    """A mismatched key, a missing file or no directory fail at construction, not per call."""
    pki.issue("userd")
    pki.issue("orderd")
    with pytest.raises(CertificateError, match="does not match"):
        TLSOptions(ca_file=pki.dir / "ca.pem", cert_file=pki.dir / "userd.pem",
                   key_file=pki.dir / "orderd.key")
    with pytest.raises(CertificateError, match="certs issue billing"):
        tls_from_dir(pki.dir, "billing")
    assert tls_from_dir(None, "billing", insecure=True) is None
    opts = tls_from_dir(pki.dir, "userd")
    assert opts is not None and opts.spiffe_id == f"spiffe://{TD}/svc/userd"
    assert opts.domain == TD


def _userd(reg: LocalRegistry, **opts: Any) -> meshkit.MeshServer:
    """A MeshServer "userd" answering the auth test service's Whoami."""
    from tests.auth.conftest import auth_handler

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    return meshkit.MeshServer("userd", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        drain_delay_s=0, grace_s=0.5, **opts))


def _registry(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(meshkit.discovery.LocalOptions(path=tmp_path / "reg", ttl_s=2.0,
                                                        poll_interval_s=0.05))


async def test_mesh_server_and_dial_over_mtls(pki: Pki, tmp_path: Path) -> None:
    """meshkit.MeshServer and meshkit.dial talk mTLS with identity checks on both sides."""
    server_tls = pki.issue("userd")
    client_tls = pki.issue("orderd")
    reg = _registry(tmp_path)
    srv = _userd(reg, tls=server_tls, auth=AuthOptions())
    await srv.start()
    try:
        opts = meshkit.DialOptions(credentials=client_tls.channel_credentials(),
                                   channel_options=client_tls.channel_options("userd"))
        async with meshkit.dial("userd", registry=reg, options=opts) as ch:
            got = await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=3)
        assert got == f"spiffe://{TD}/svc/orderd|-".encode()
    finally:
        await srv.drain()
        await reg.close()


async def test_mesh_server_expiry_gauge_follows_renewal(pki: Pki, tmp_path: Path) -> None:
    """serve()'s meshkit_certificate_expiry_timestamp_seconds moves to the renewed
    certificate's notAfter once a new connection picks the renewal up."""
    from meshkit.observability import default_registry

    server_tls = pki.issue("userd")
    client_tls = pki.issue("orderd")
    reg = _registry(tmp_path)

    def gauge() -> float | None:
        return default_registry().get_sample_value(
            "meshkit_certificate_expiry_timestamp_seconds", {"service": "userd"})

    srv = _userd(reg, tls=server_tls)
    await srv.start()
    try:
        assert gauge() == server_tls.read().not_after
        pki.issue("userd", ttl_h=5, overwrite=True)
        renewed = server_tls.read().not_after
        assert renewed != gauge()

        async def new_connection_sees_renewal() -> bool:
            async with meshkit.dial("userd", registry=reg,
                                    options=meshkit.DialOptions(tls=client_tls)) as ch:
                await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=3)
            return gauge() == renewed

        await until(new_connection_sees_renewal, timeout_s=5, what="gauge on renewed cert")
    finally:
        await srv.drain()
        await reg.close()


async def test_mesh_server_counts_tls_handshakes_refused_ones_included(
        pki: Pki, other_pki: Pki, tmp_path: Path) -> None:
    """serve() counts every TLS handshake started (ServerStats.tls_handshakes,
    meshkit_server_tls_handshakes_total): a refused client's handshakes are counted though
    no call follows them, which is how refused handshakes show (grpcio reports no outcome)."""
    server_tls = pki.issue("userd")
    client_tls = pki.issue("orderd")
    rogue = other_pki.issue("orderd")
    reg = _registry(tmp_path)
    srv = _userd(reg, tls=server_tls)
    await srv.start()
    try:
        assert srv.stats().tls_handshakes == 0
        async with meshkit.dial("userd", registry=reg,
                                options=meshkit.DialOptions(tls=client_tls)) as ch:
            await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=3)
        good = srv.stats().tls_handshakes
        assert good >= 1
        assert srv.instance is not None
        creds = grpc.ssl_channel_credentials(server_tls.read().ca_pem, rogue.read().key_pem,
                                             rogue.read().cert_pem)
        err = await rpc_error(call(srv.instance.port, credentials=creds,
                                   options=server_tls.channel_options("userd")))
        assert err.code() is UNAVAILABLE
        assert srv.stats().tls_handshakes > good
        from meshkit.observability import MeshCollector

        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in MeshCollector().collect() for s in fam.samples}
        assert samples[("meshkit_server_tls_handshakes_total", (("service", "userd"),))] == \
            srv.stats().tls_handshakes
    finally:
        await srv.drain()
        await reg.close()


# -- certificates meshkit did not issue (cert-manager, SPIRE) ---------------------------------
async def test_rsa_workload_certificates_from_cert_manager_are_accepted(tmp_path: Path) -> None:
    """cert-manager's default key is RSA 2048: each workload's Secret holds an RSA leaf
    (digitalSignature + keyEncipherment, serverAuth + clientAuth, SPIFFE URI SAN and the
    identity DNS name) under an RSA CA, the key in PKCS#1 (``BEGIN RSA PRIVATE KEY``) or
    PKCS#8. ``TLSOptions`` refused to be built ("is not an ECDSA key": the loader took EC
    keys only) though grpcio's BoringSSL does mTLS with RSA keys; now such workloads serve
    and call each other like ECDSA ones, and the server reads the caller's identity."""
    root = foreign_ca("cert-manager RSA CA", kind="rsa")
    skey, scert = svid(root, "userd", kind="rsa", key_encipherment=True)
    ckey, ccert = svid(root, "orderd", kind="rsa", key_encipherment=True)
    sdir = secret_dir(tmp_path, "userd", ca=pem(root[1]), crt=pem(scert),
                      key=key_pem(skey, "pkcs1"))
    cdir = secret_dir(tmp_path, "orderd", ca=pem(root[1]), crt=pem(ccert),
                      key=key_pem(ckey, "pkcs8"))
    server_tls, client_tls = secret_tls(sdir), secret_tls(cdir)
    assert server_tls.spiffe_id == f"spiffe://{TD}/svc/userd"
    reg = _registry(tmp_path)
    srv = _userd(reg, tls=server_tls)
    await srv.start()
    try:
        async with meshkit.dial("userd", registry=reg,
                                options=meshkit.DialOptions(tls=client_tls)) as ch:
            got = await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=5)
        assert got == f"spiffe://{TD}/svc/orderd|-".encode()
    finally:
        await srv.drain()
        await reg.close()


@pytest.mark.parametrize(("kind", "accepted", "reason"), [
    ("p256", True, ""),
    ("p384", True, ""),
    ("rsa", True, ""),
    ("p521", False, "P-521"),
    ("ed25519", False, "Ed25519"),
    ("rsa1024", False, "2048"),
])
def test_workload_key_types_grpc_can_use_are_accepted_others_named(
        tmp_path: Path, kind: str, accepted: bool, reason: str) -> None:
    """TLSOptions takes the keys grpcio's BoringSSL completes an mTLS handshake with (EC
    P-256 and P-384, RSA of 2048 bits or more); a P-521 or Ed25519 key (BoringSSL's
    handshake fails NO_COMMON_SIGNATURE_ALGORITHMS, every call UNAVAILABLE) or an RSA key
    under 2048 bits (NIST SP 800-131A) is refused when built, the message naming the key."""
    root = foreign_ca("root")
    key, cert = svid(root, "orderd", kind=kind)
    d = secret_dir(tmp_path, kind, ca=pem(root[1]), crt=pem(cert), key=key_pem(key))
    if accepted:
        assert secret_tls(d).spiffe_id == f"spiffe://{TD}/svc/orderd"
    else:
        with pytest.raises(CertificateError, match=reason):
            secret_tls(d)


def test_chain_file_in_the_wrong_order_is_named_as_such(tmp_path: Path) -> None:
    """A certificate file concatenated by hand as ``intermediate + leaf`` (RFC 8446 §4.4.2
    wants the sender's certificate first), with the leaf's key and a bundle holding the
    root and the intermediate: TLSOptions said "private key ... does not match
    certificate", sending the user to regenerate keys. Now it says the file is in the
    wrong order and the leaf must come first (it does not reorder it silently); the same
    files in the right order are accepted."""
    root = foreign_ca("root")
    inter = foreign_ca("issuing CA", issuer=root, path_length=0)
    lkey, lcert = svid(inter, "orderd")
    bundle = pem(root[1], inter[1])
    good = secret_dir(tmp_path, "ok", ca=bundle, crt=pem(lcert, inter[1]), key=key_pem(lkey))
    assert secret_tls(good).spiffe_id == f"spiffe://{TD}/svc/orderd"
    bad = secret_dir(tmp_path, "reversed", ca=bundle, crt=pem(inter[1], lcert),
                     key=key_pem(lkey))
    with pytest.raises(CertificateError) as err:
        secret_tls(bad)
    msg = str(err.value)
    assert "does not match" not in msg and "order" in msg and "first" in msg, msg
    # a key of no certificate in the file is still named a mismatch
    other = secret_dir(tmp_path, "other", ca=bundle, crt=pem(inter[1], lcert),
                       key=key_pem(svid(inter, "orderd")[0]))
    with pytest.raises(CertificateError, match="does not match"):
        secret_tls(other)


async def test_bundle_update_with_a_malformed_ca_does_not_fail_calls(tmp_path: Path) -> None:
    """A running server's trust bundle is replaced (a trust-manager update) by one that
    also holds a CA certificate with a duplicated subjectAltName (malformed, RFC 5280
    §4.2). From the peer verifier's next poll on, every call failed UNKNOWN ("Unexpected
    DuplicateExtension"), at each reload interval for as long as the file stayed. Now the
    bundle is taken with the malformed CA unusable: calls on the open connection and on a
    new one (whose handshake uses the new bundle) keep succeeding."""
    root = foreign_ca("mesh CA")
    skey, scert = svid(root, "userd")
    ckey, ccert = svid(root, "orderd")
    sdir = secret_dir(tmp_path, "userd", ca=pem(root[1]), crt=pem(scert), key=key_pem(skey))
    cdir = secret_dir(tmp_path, "orderd", ca=pem(root[1]), crt=pem(ccert), key=key_pem(ckey))
    server_tls = secret_tls(sdir, reload_interval_s=0.05)
    client_tls = secret_tls(cdir, reload_interval_s=60.0)
    reg = _registry(tmp_path)
    srv = _userd(reg, tls=server_tls)
    await srv.start()
    want = f"spiffe://{TD}/svc/orderd|-".encode()
    try:
        async with meshkit.dial("userd", registry=reg,
                                options=meshkit.DialOptions(tls=client_tls)) as ch:
            whoami = ch.unary_unary(f"/{SERVICE}/Whoami")
            assert await whoami(b"", timeout=5) == want
            replace_file(sdir / "ca.crt", pem(root[1], ca_with_duplicate_extension("odd")[1]))
            failures: list[str] = []
            with structlog.testing.capture_logs() as logs:
                async def reloaded() -> bool:
                    try:
                        assert await whoami(b"", timeout=5) == want
                    except grpc.aio.AioRpcError as exc:
                        failures.append(f"{exc.code().name} {exc.details()!r}")
                    return any(e["event"] == "CA bundle reloaded for peer verification"
                               for e in logs)

                await until(reloaded, timeout_s=10, what="the peer verifier's bundle reload")
                for _ in range(5):  # and calls after it, over several reload intervals
                    await asyncio.sleep(server_tls.reload_interval_s)
                    await reloaded()
            assert not failures, failures
        async with meshkit.dial("userd", registry=reg,
                                options=meshkit.DialOptions(tls=client_tls)) as ch:
            assert await ch.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=5) == want
    finally:
        await srv.drain()
        await reg.close()


@pytest.mark.parametrize("case", ["svid_with_only_its_uri_san", "another_workloads_svid"])
async def test_serve_refuses_a_certificate_every_client_would_refuse(tmp_path: Path,
                                                                     case: str) -> None:
    """serve("userd") over a SPIRE-style SVID carrying only its SPIFFE URI SAN (X.509-SVID
    §2 asks no more; SPIRE adds DNS names only when asked), or over another workload's
    SVID mounted by mistake, started, reported SERVING and registered, and then every
    dial("userd") failed UNAVAILABLE: meshkit clients verify a server as the TLS host
    name userd.svc.<td>, which neither certificate carries. The server is now refused
    when built, with CertificateError naming the missing DNS name or the SPIFFE ID the
    certificate is for; check_server_identity() says the same for any TLSOptions."""
    root = foreign_ca("spire CA")
    key, cert = (svid(root, "userd", dns=(), ips=()) if case == "svid_with_only_its_uri_san"
                 else svid(root, "orderd"))
    tls = secret_tls(secret_dir(tmp_path, "userd", ca=pem(root[1]), crt=pem(cert),
                                key=key_pem(key)))
    expected = (f"userd.svc.{TD}" if case == "svid_with_only_its_uri_san"
                else f"spiffe://{TD}/svc/orderd")
    with pytest.raises(CertificateError, match=expected.replace(".", r"\.")):
        check_server_identity(tls, "userd")
    reg = _registry(tmp_path)
    try:
        with pytest.raises(CertificateError, match=expected.replace(".", r"\.")):
            _userd(reg, tls=tls)
    finally:
        await reg.close()
    good_key, good = svid(root, "userd")
    check_server_identity(secret_tls(secret_dir(tmp_path, "good", ca=pem(root[1]),
                                                crt=pem(good), key=key_pem(good_key))),
                          "userd")
