"""JWT and authz method patterns on a real mTLS grpc.aio server: short, slash-less and glob
keys, and MethodMatcher's precedence (exact > longest glob > default), end to end."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import pytest

from meshkit.auth import (
    AuthOptions,
    AuthzPolicy,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    Rule,
    TLSOptions,
    TokenIssuer,
    VerifierOptions,
)
from tests.auth.conftest import AUDIENCE, ISSUER, TD, Pki, StartServer, call, rpc_error

ORDERD = f"spiffe://{TD}/svc/orderd"

# The service is /test.Auth/<Method>; no key below uses that full spelling.
JWT_OPTIONS = JWTAuthOptions(
    public_methods=("Auth/Public", "test.Auth/Admin"),  # short, slash-less
    method_scopes={
        "Auth/*": ("orders:read",),  # glob, 5 literal characters
        "Auth/Write": ("orders:write",),  # exact beats the glob
        "*/Whoami": ("admin",),  # 7 literal characters: beats Auth/*
    },
)
POLICY = AuthzPolicy(rules={
    "Auth/Admin": Rule(allow_peers=(ORDERD,)),  # exact beats test.*/*
    "test.*/*": Rule(allow_subjects=("*",)),  # 6 literal characters
    "*/Public": Rule(allow_peers=("*",)),  # 7: beats test.*/* for Public
})


async def test_short_and_glob_patterns_with_exact_over_longest_glob(
        pki: Pki, start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """Each precedence rule decides one call on a real server with JWT and authz."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    server = pki.issue("userd")
    port = await start_server(server.server_credentials(), AuthOptions(
        verifier=verifier, jwt=JWT_OPTIONS, policy=POLICY).interceptors(server))
    gateway, orderd = pki.issue("gateway"), pki.issue("orderd")

    async def as_(tls: TLSOptions, name: str, scopes: Iterable[str] | None = None) -> bytes:
        md = None if scopes is None else [
            ("authorization", f"Bearer {issuer.issue('user-1', scopes=scopes)}")]
        return await call(port, name, credentials=tls.channel_credentials(),
                          options=tls.channel_options("userd"), metadata=md)

    # Public: JWT-public through "Auth/Public"; authz "*/Public" (7) beats "test.*/*" (6).
    assert await as_(gateway, "Public") == f"spiffe://{TD}/svc/gateway|-".encode()
    # Admin: JWT-public through "test.Auth/Admin"; the exact authz key beats test.*/*.
    assert await as_(orderd, "Admin") == f"{ORDERD}|-".encode()
    err = await rpc_error(as_(gateway, "Admin", ["orders:read", "orders:write", "admin"]))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    # Read: not public; scopes from the glob "Auth/*"; authz from "test.*/*".
    assert (await rpc_error(as_(gateway, "Read"))).code() is grpc.StatusCode.UNAUTHENTICATED
    assert await as_(gateway, "Read", ["orders:read"]) == f"spiffe://{TD}/svc/gateway|user-1" \
        .encode()
    # Write: the exact "Auth/Write" beats the glob "Auth/*".
    err = await rpc_error(as_(gateway, "Write", ["orders:read"]))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert await as_(gateway, "Write", ["orders:write"])
    # Whoami: the longer glob "*/Whoami" beats "Auth/*".
    err = await rpc_error(as_(gateway, "Whoami", ["orders:read", "orders:write"]))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert await as_(gateway, "Whoami", ["admin"])


@pytest.mark.parametrize("key", ["/test.Auth/Public", "test.Auth/Public", "Auth/Public",
                                 "Auth/Pub*", "*/Public", "/test.Auth/*"])
async def test_every_spelling_on_a_real_server(pki: Pki, start_server: StartServer,
                                               keys: KeySet, key: str) -> None:
    """A key in any spelling makes Public callable without a token, and only it."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    server = pki.issue("userd")
    port = await start_server(server.server_credentials(), AuthOptions(
        verifier=verifier, jwt=JWTAuthOptions(public_methods=(key,)),
        policy=AuthzPolicy(rules={key: Rule(allow_peers=("*",))})).interceptors(server))
    gateway = pki.issue("gateway")
    creds, opts = gateway.channel_credentials(), gateway.channel_options("userd")
    assert await call(port, "Public", credentials=creds, options=opts)
    if not key.endswith("/*"):
        err = await rpc_error(call(port, "Read", credentials=creds, options=opts))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
