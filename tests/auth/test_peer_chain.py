"""Peer chains the mesh CA's constraints forbid, on a real mTLS grpc.aio server (issue 12).

grpcio's BoringSSL accepts a client chain leaf → sub-CA → mesh CA although the CA is
``pathlen:0`` (it does not apply the trust anchor's path length); meshkit's server
interceptors must refuse it. Likewise a SPIFFE ID with extra path segments is no workload.
"""

from __future__ import annotations

import grpc
import structlog

from meshkit.auth import AuthOptions, AuthzPolicy, Rule
from tests.auth.chains import ca_of, client_credentials, leaf, sub_ca
from tests.auth.conftest import TD, Pki, StartServer, call, method, rpc_error

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
