"""Peer chains the mesh CA's constraints forbid, on a real mTLS grpc.aio server (issue 12).

grpcio's BoringSSL accepts a client chain leaf → sub-CA → mesh CA although the CA is
``pathlen:0`` (it does not apply the trust anchor's path length); meshkit's server
interceptors must refuse it. Likewise a SPIFFE ID with extra path segments is no workload.
A chain through an intermediate whose constraints allow it (SPIRE under an upstream root)
is a workload's.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import structlog

import meshkit
from meshkit.auth import AuthOptions, AuthzPolicy, Rule
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.auth.chains import (
    ca_of,
    client_credentials,
    foreign_ca,
    key_pem,
    leaf,
    pem,
    secret_dir,
    secret_tls,
    sub_ca,
    svid,
)
from tests.auth.conftest import TD, Pki, StartServer, auth_handler, call, method, rpc_error

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


async def test_client_chain_through_sub_ca_is_refused(pki: Pki,
                                                      start_server: StartServer) -> None:
    """A client presenting leaf → sub-CA (signed with the mesh CA key) passes the handshake
    but gets UNAUTHENTICATED, and the refusal is logged; a proper client still gets in."""
    server = pki.issue("userd")
    ca_key, ca = ca_of(pki)
    sub_key, sub = sub_ca(ca_key, ca)
    rogue_key, rogue = leaf(sub_key, sub, service="orderd")
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    with structlog.testing.capture_logs() as logs:
        err = await rpc_error(call(port, credentials=client_credentials(pki, rogue_key, rogue, sub),
                                   options=server.channel_options("userd")))
    assert err.code() is UNAUTH
    assert err.details() == "no verified peer identity"
    refused = [e for e in logs if e["event"] == "peer certificate refused"]
    assert refused and "directly" in refused[0]["reason"]
    good = pki.issue("orderd")
    assert await call(port, credentials=good.channel_credentials(),
                      options=good.channel_options("userd")) == f"spiffe://{TD}/svc/orderd|-".encode()


async def test_sub_ca_chain_refused_on_exempt_method_by_authz(pki: Pki,
                                                              start_server: StartServer) -> None:
    """On a method exempt from the peer check, the authorization policy's own read of the
    peer identity also refuses a chain through a sub-CA."""
    server = pki.issue("userd")
    ca_key, ca = ca_of(pki)
    sub_key, sub = sub_ca(ca_key, ca)
    rogue_key, rogue = leaf(sub_key, sub, service="orderd")
    policy = AuthzPolicy(rules={method("Public"): Rule(allow_peers=("*",))})
    port = await start_server(server.server_credentials(), AuthOptions(
        policy=policy, exempt_methods=(method("Public"),)).interceptors(server))
    err = await rpc_error(call(port, "Public",
                               credentials=client_credentials(pki, rogue_key, rogue, sub),
                               options=server.channel_options("userd")))
    assert err.code() is UNAUTH
    good = pki.issue("orderd")
    assert await call(port, "Public", credentials=good.channel_credentials(),
                      options=good.channel_options("userd"))


async def test_spiffe_id_with_extra_path_is_not_a_workload(pki: Pki,
                                                           start_server: StartServer) -> None:
    """A CA-signed client certificate for spiffe://<td>/svc/orderd/extra is no workload:
    refused with every-workload defaults and by a ``/svc/*`` allow-list alike."""
    ca_key, ca = ca_of(pki)
    odd_key, odd = leaf(ca_key, ca, uris=[f"spiffe://{TD}/svc/orderd/extra"])
    creds = client_credentials(pki, odd_key, odd)
    pki.issue("userd")
    every = pki.options("userd")
    listed = pki.options("userd", allowed_peers=(f"spiffe://{TD}/svc/*",))
    for server in (every, listed):
        port = await start_server(server.server_credentials(), [server.peer_interceptor()])
        err = await rpc_error(call(port, credentials=creds,
                                   options=server.channel_options("userd")))
        assert err.code() in (UNAUTH, grpc.StatusCode.PERMISSION_DENIED), err
        assert "orderd" not in (err.details() or "")
    policy = AuthzPolicy(rules={method("Public"): Rule(allow_peers=(f"spiffe://{TD}/svc/*",))})
    port = await start_server(every.server_credentials(), AuthOptions(
        policy=policy, exempt_methods=(method("Public"),)).interceptors(every))
    err = await rpc_error(call(port, "Public", credentials=creds,
                               options=every.channel_options("userd")))
    assert err.code() in (UNAUTH, grpc.StatusCode.PERMISSION_DENIED)


async def test_svid_chain_through_an_intermediate_with_root_only_bundle_is_accepted(
        tmp_path: Path) -> None:
    """SPIRE with an UpstreamAuthority (or cert-manager under an intermediate issuer): the
    bundle holds only the upstream root (no path-length limit); the signing CA is an
    intermediate (pathlen:0) each workload presents after its leaf. BoringSSL accepts the
    chain both ways, but TLSOptions refused it ("not issued directly by a CA of the trust
    bundle"), and so did the server's peer check. X.509-SVID §3/§5 and RFC 5280 §6 allow
    intermediates: the peer check now validates the path through the certificates the
    peer presented (pathlen and name constraints enforced per CA), so this setup serves
    and the server reads the caller's identity."""
    root = foreign_ca("upstream root", path_length=None)
    inter = foreign_ca("spire signing CA", issuer=root, path_length=0)
    skey, scert = svid(inter, "userd")
    ckey, ccert = svid(inter, "orderd")
    sdir = secret_dir(tmp_path, "userd", ca=pem(root[1]), crt=pem(scert, inter[1]),
                      key=key_pem(skey))
    cdir = secret_dir(tmp_path, "orderd", ca=pem(root[1]), crt=pem(ccert, inter[1]),
                      key=key_pem(ckey))
    server_tls, client_tls = secret_tls(sdir), secret_tls(cdir)
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=2.0, poll_interval_s=0.05))

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    srv = meshkit.MeshServer("userd", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        tls=server_tls, drain_delay_s=0, grace_s=0.5))
    await srv.start()
    try:
        async with meshkit.dial("userd", registry=reg,
                                options=meshkit.DialOptions(tls=client_tls)) as ch:
            got = await ch.unary_unary(method("Whoami"))(b"", timeout=5)
        assert got == f"spiffe://{TD}/svc/orderd|-".encode()
    finally:
        await srv.drain()
        await reg.close()


async def test_chain_through_an_intermediate_under_a_pathlen_zero_root_is_refused(
        tmp_path: Path, start_server: StartServer) -> None:
    """Through intermediates the trust anchor's own path length holds, which BoringSSL
    does not apply: with a bundle of an unlimited root and a ``pathlen:0`` root, a client
    chain pathlen:0 root → sub-CA → leaf passes the handshake but is refused
    UNAUTHENTICATED (logged, the reason naming the path length), while the chain through
    the other root's intermediate gets in."""
    root = foreign_ca("upstream root", path_length=None)
    strict = foreign_ca("strict root", path_length=0)
    inter = foreign_ca("signing CA", issuer=root, path_length=0)
    rogue_ca = foreign_ca("rogue sub CA", issuer=strict, path_length=None)
    skey, scert = svid(inter, "userd")
    bundle = pem(root[1], strict[1])
    sdir = secret_dir(tmp_path, "userd", ca=bundle, crt=pem(scert, inter[1]),
                      key=key_pem(skey))
    server = secret_tls(sdir)
    port = await start_server(server.server_credentials(), [server.peer_interceptor()])
    key, cert = svid(rogue_ca, "orderd")
    creds = grpc.ssl_channel_credentials(bundle, key_pem(key), pem(cert, rogue_ca[1]))
    with structlog.testing.capture_logs() as logs:
        err = await rpc_error(call(port, credentials=creds,
                                   options=server.channel_options("userd")))
    assert err.code() is UNAUTH, err
    refused = [e for e in logs if e["event"] == "peer certificate refused"]
    assert refused and "path length" in refused[0]["reason"], logs
    key, cert = svid(inter, "orderd")
    creds = grpc.ssl_channel_credentials(bundle, key_pem(key), pem(cert, inter[1]))
    assert await call(port, credentials=creds, options=server.channel_options("userd")
                      ) == f"spiffe://{TD}/svc/orderd|-".encode()
