"""A grpc.aio server of your own started where a call's identity is current (from a
handler): its callers must not inherit that identity."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from meshkit.auth import (
    AuthOptions,
    AuthzPolicy,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    PeerIdentity,
    Rule,
    TokenIssuer,
    VerifierOptions,
)
from meshkit.auth._context import _call, _claims, _peer, _token
from tests.auth.conftest import AUDIENCE, ISSUER, TD, StartServer, call, method, rpc_error

ADMIN = PeerIdentity(spiffe_id=f"spiffe://{TD}/svc/admin", trust_domain=TD, service="admin")


async def _start_as_admin(start_server: StartServer, keys: KeySet, issuer: TokenIssuer,
                          interceptors: Any) -> int:
    """Start the server in a task whose context holds the admin's peer, claims and token
    (what a handler of the admin's call sees: the checks that set them marked the
    variables as that call's), as a server started from that handler."""
    admin_token = issuer.issue("admin")
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    claims = await verifier.verify(admin_token)

    async def start() -> int:
        _call.set(object())  # the admin call's servicer context
        _peer.set(ADMIN)
        _claims.set(claims)
        _token.set(admin_token)
        return await start_server(interceptors=interceptors)

    return await asyncio.create_task(start())


async def test_public_method_caller_without_a_token_has_no_claims(
        start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """On a public method an anonymous caller got the starting handler's claims
    (``-|admin``; a TokenForwarder would have sent the admin's token for it): the JWT
    check now clears them when no token comes."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    chain = AuthOptions(verifier=verifier, check_peers=False, jwt=JWTAuthOptions(
        public_methods=(method("Whoami"),))).interceptors(None)
    port = await _start_as_admin(start_server, keys, issuer, chain)
    got = await call(port, "Whoami", credentials=None)
    assert got.endswith(b"|-"), got


async def test_policy_does_not_take_the_starting_handlers_peer(
        start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """A plaintext server whose policy allows only the admin workload let an anonymous
    caller in as the admin (the peer the starting handler had): the policy now reads
    the peer of the call when no peer check ran for it."""
    chain = AuthOptions(check_peers=False, policy=AuthzPolicy(
        rules={"*": Rule(allow_peers=(ADMIN.spiffe_id,))})).interceptors(None)
    port = await _start_as_admin(start_server, keys, issuer, chain)
    err = await rpc_error(call(port, "Whoami", credentials=None))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err


async def test_server_started_by_a_checked_handler_gives_its_callers_no_identity(
        start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """A server started by the handler of a call meshkit's JWT check admitted (no
    simulation: the check itself set the identity and the call's mark) gives an
    anonymous caller of its public method no claims."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    inner_chain = AuthOptions(verifier=verifier, check_peers=False, jwt=JWTAuthOptions(
        public_methods=(method("Whoami"),))).interceptors(None)

    async def start_inner(_request: bytes) -> bytes:
        return str(await start_server(interceptors=inner_chain)).encode()

    outer_chain = AuthOptions(verifier=verifier, check_peers=False).interceptors(None)
    outer = await start_server(interceptors=outer_chain, relay=start_inner)
    admin = (("authorization", f"Bearer {issuer.issue('admin')}"),)
    port = int(await call(outer, "Relay", credentials=None, metadata=admin))
    got = await call(port, "Whoami", credentials=None)
    assert got.endswith(b"|-"), got
