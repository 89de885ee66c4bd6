"""Authn and authz interceptors on a real mTLS grpc.aio server: the attacks of issue 3.

The server is ``userd`` with mTLS, JWT (keys fetched over JWKS) and an authorization
policy; callers are the ``gateway`` (an end user's token) and ``orderd`` workloads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization

import meshkit
from meshkit.auth import (
    AuthOptions,
    AuthzPolicy,
    IssuerOptions,
    JWKSClient,
    JWKSClientOptions,
    JWKSServer,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    Rule,
    SigningKey,
    TLSOptions,
    TokenForwarder,
    TokenIssuer,
    VerifierOptions,
)
from meshkit.discovery import LocalOptions, LocalRegistry
from tests.auth.conftest import (
    AUDIENCE,
    ISSUER,
    TD,
    Pki,
    StartServer,
    auth_handler,
    call,
    method,
    rpc_error,
)

ORDERD = f"spiffe://{TD}/svc/orderd"
GATEWAY = f"spiffe://{TD}/svc/gateway"
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED

POLICY = AuthzPolicy(rules={
    method("Public"): Rule(allow_peers=("*",)),
    method("Admin"): Rule(allow_peers=(ORDERD,)),  # like UserService.GetUser
    f"/{'test.Auth'}/*": Rule(allow_subjects=("*",)),
})
JWT_OPTIONS = JWTAuthOptions(
    public_methods=(method("Public"), method("Admin")),
    method_scopes={method("Write"): ("orders:write",), "/test.Auth/*": ("orders:read",)},
)


@dataclass
class Stack:
    """A secured server and what callers need to reach it."""

    port: int
    keys: KeySet
    issuer: TokenIssuer
    gateway: TLSOptions
    orderd: TLSOptions
    jwks: JWKSClient

    async def call(self, name: str, *, token: str | None = None, as_: str = "gateway",
                   metadata: list[tuple[str, str]] | None = None) -> bytes:
        """Call ``name`` as ``as_`` with an optional bearer token."""
        tls = self.gateway if as_ == "gateway" else self.orderd
        md = list(metadata or [])
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        return await call(self.port, name, credentials=tls.channel_credentials(),
                          options=tls.channel_options("userd"), metadata=md)


@pytest.fixture
async def stack(pki: Pki, start_server: StartServer) -> AsyncIterator[Stack]:
    """userd with mTLS + JWT (over a live JWKS endpoint) + policy, and two callers."""
    keys = KeySet.generate()
    jwks_server = JWKSServer(keys)
    await jwks_server.start("127.0.0.1", 0)
    client = JWKSClient(lambda: jwks_server.url,
                        JWKSClientOptions(min_refresh_interval_s=0.0, refresh_interval_s=60))
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE,
                                           max_token_bytes=2048), client)
    server = pki.issue("userd")
    port = await start_server(server.server_credentials(), AuthOptions(
        verifier=verifier, jwt=JWT_OPTIONS, policy=POLICY).interceptors(server))
    issuer = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=300))
    yield Stack(port, keys, issuer, pki.issue("gateway"), pki.issue("orderd"), client)
    await client.close()
    await jwks_server.stop()


def b64(obj: object) -> str:
    """base64url(JSON) without padding."""
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    """A complete, currently valid claim set, with overrides."""
    now = int(time.time())
    c = {"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": now, "nbf": now,
         "exp": now + 300, "jti": "j1", "scope": "orders:read orders:write"}
    c.update(over)
    return c


def signed(keys: KeySet, **over: Any) -> str:
    """A token over ``claims(**over)`` signed by the current key."""
    k = keys.current
    return jwt.encode(claims(**over), k.private_key, algorithm="ES256",
                      headers={"kid": k.kid, "typ": "at+jwt"})


def attack(name: str, keys: KeySet) -> tuple[list[tuple[str, str]], str]:
    """The metadata of attack ``name`` and the secret that must never be echoed."""
    kid = keys.current.kid
    good = signed(keys)
    if name == "alg_none":
        tok = f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{b64(claims(sub='admin'))}."
    elif name == "hs256_key_confusion":
        pem = keys.current.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{b64(claims())}"
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        tok = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    elif name == "expired":
        tok = signed(keys, exp=int(time.time()) - 120, iat=int(time.time()) - 600)
    elif name == "not_yet_valid":
        tok = signed(keys, nbf=int(time.time()) + 600)
    elif name == "wrong_iss":
        tok = signed(keys, iss="https://evil.example")
    elif name == "wrong_aud":
        tok = signed(keys, aud="billing")
    elif name == "unknown_kid":
        rogue = SigningKey.generate()
        tok = jwt.encode(claims(), rogue.private_key, algorithm="ES256",
                         headers={"kid": rogue.kid, "typ": "at+jwt"})
    elif name == "tampered":
        h, _p, s = good.split(".")
        tok = f"{h}.{b64(claims(sub='admin'))}.{s}"
    elif name == "truncated":
        tok = good[: len(good) - 20]
    elif name == "non_base64":
        tok = "%%%." + good.split(".", 1)[1]
    elif name == "huge":
        tok = good + "A" * 3000
    elif name == "wrong_key":
        return [("x-authorization", f"Bearer {good}")], good
    elif name == "basic_scheme":
        tok = base64.b64encode(b"alice:hunter2-password").decode()
        return [("authorization", f"Basic {tok}")], tok
    else:
        raise AssertionError(name)
    return [("authorization", f"Bearer {tok}")], tok


ATTACKS = ["alg_none", "hs256_key_confusion", "expired", "not_yet_valid", "wrong_iss",
           "wrong_aud", "unknown_kid", "tampered", "truncated", "non_base64", "huge",
           "wrong_key", "basic_scheme"]


@pytest.mark.parametrize("name", ATTACKS)
async def test_token_attack_refused_without_leaking(stack: Stack, name: str) -> None:
    """Each forged, stale or misplaced token gets UNAUTHENTICATED; no secret in status or logs."""
    metadata, secret = attack(name, stack.keys)
    with structlog.testing.capture_logs() as logs:
        err = await rpc_error(stack.call("Read", metadata=metadata))
    assert err.code() is UNAUTH, (name, err.details())
    text = (err.details() or "") + repr(logs) + repr(err.trailing_metadata())
    for needle in (secret, secret[:24], secret[-24:], "hunter2"):
        assert needle not in text
    assert any(e.get("event") == "call refused" for e in logs)
    assert "PRIVATE KEY" not in text


async def test_valid_token_reaches_handler_with_claims(stack: Stack) -> None:
    """A valid token with the right scope reaches the handler, which sees peer and claims."""
    token = stack.issuer.issue("user-1", scopes=("orders:read",))
    assert await stack.call("Read", token=token) == f"{GATEWAY}|user-1".encode()


async def test_missing_token_unauthenticated(stack: Stack) -> None:
    """A non-public method without a token fails with UNAUTHENTICATED."""
    err = await rpc_error(stack.call("Read"))
    assert err.code() is UNAUTH and err.details() == "missing bearer token"


async def test_missing_scope_permission_denied(stack: Stack) -> None:
    """A valid token without orders:write cannot call Write: PERMISSION_DENIED."""
    token = stack.issuer.issue("user-1", scopes=("orders:read",))
    err = await rpc_error(stack.call("Write", token=token))
    assert err.code() is DENIED and token not in (err.details() or "")
    ok = stack.issuer.issue("user-1", scopes=("orders:write",))
    assert await stack.call("Write", token=ok)


async def test_public_method_without_token(stack: Stack) -> None:
    """A public method needs no token; claims are empty there and do not leak between calls."""
    token = stack.issuer.issue("user-1", scopes=("orders:read",))
    await stack.call("Read", token=token)
    assert await stack.call("Public") == f"{GATEWAY}|-".encode()


async def test_right_ca_wrong_spiffe_id_denied(stack: Stack) -> None:
    """Only orderd may call Admin (GetUser's rule): a valid mesh peer gets PERMISSION_DENIED."""
    token = stack.issuer.issue("user-1", scopes=("orders:read", "orders:write"))
    with structlog.testing.capture_logs() as logs:
        err = await rpc_error(stack.call("Admin", token=token))
    assert err.code() is DENIED
    assert err.details() == f"caller is not allowed to call {method('Admin')}"
    assert ORDERD not in (err.details() or "") and token not in repr(logs)
    assert await stack.call("Admin", as_="orderd") == f"{ORDERD}|-".encode()


async def test_streaming_handler_sees_claims(stack: Stack) -> None:
    """Server-streaming handlers are guarded too and see the verified claims."""
    token = stack.issuer.issue("user-9", scopes=("orders:read",))
    tls = stack.gateway
    async with grpc.aio.secure_channel(f"127.0.0.1:{stack.port}", tls.channel_credentials(),
                                       options=tls.channel_options("userd")) as ch:
        mc: Any = ch.unary_stream(method("Stream"))
        got = [r async for r in mc(b"", timeout=3,
                                   metadata=(("authorization", f"Bearer {token}"),))]
        assert got == [f"{GATEWAY}|user-9".encode()] * 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [r async for r in mc(b"", timeout=3)]
        assert info.value.code() is UNAUTH


async def test_key_rotation_picked_up_through_jwks(stack: Stack) -> None:
    """After the issuer rotates, tokens with the new kid verify after one JWKS refresh."""
    old = stack.issuer.issue("user-1", scopes=("orders:read",))
    await stack.call("Read", token=old)
    fetches = stack.jwks.fetches
    stack.keys.rotate()
    new = stack.issuer.issue("user-2", scopes=("orders:read",))
    assert await stack.call("Read", token=new) == f"{GATEWAY}|user-2".encode()
    assert await stack.call("Read", token=old)
    assert stack.jwks.fetches == fetches + 1


BAD_BEARER_KEYS = ["authorization-bin", ":authority", "x token", "authorización",
                   "Authorization", "", "x\ttoken", "x@token"]


@pytest.mark.parametrize("bad", BAD_BEARER_KEYS)
def test_bearer_metadata_key_must_be_a_text_grpc_key(bad: str) -> None:
    """TokenForwarder and JWTAuthOptions refuse, quoted, a metadata key that cannot carry a
    text bearer value: a ``-bin`` binary key, a ``:`` pseudo-header, a character gRPC
    does not allow in a key (0-9 a-z _ - . only), non-ASCII, upper case, empty."""
    from meshkit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        TokenForwarder(metadata_key=bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ConfigError) as info:
        JWTAuthOptions(metadata_key=bad)
    assert repr(bad) in str(info.value)
    TokenForwarder(metadata_key="x-auth_token.v1")
    JWTAuthOptions(metadata_key="x-auth_token.v1")


async def test_token_forwarded_on_outgoing_calls(pki: Pki, start_server: StartServer,
                                                 tmp_path: Path) -> None:
    """orderd's handler calls userd through meshkit.dial; TokenForwarder carries the token."""
    keys = KeySet.generate()
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    issuer = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE))
    reg = LocalRegistry(LocalOptions(path=tmp_path / "reg", ttl_s=2.0, poll_interval_s=0.05))
    user_tls = pki.issue("userd")
    order_tls = pki.issue("orderd")

    def add(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    userd = meshkit.MeshServer("userd", [(add, None)], registry=reg, options=meshkit.ServeOptions(
        tls=user_tls, drain_delay_s=0, grace_s=0.5, auth=AuthOptions(verifier=verifier)))
    await userd.start()
    dial_opts = meshkit.DialOptions(
        credentials=order_tls.channel_credentials(),
        channel_options=order_tls.channel_options("userd"),
        interceptors=(TokenForwarder(services=("userd",)),))
    channel = meshkit.dial("userd", registry=reg, options=dial_opts)

    async def relay(_req: bytes) -> bytes:
        try:
            result: bytes = await channel.unary_unary(method("Whoami"))(b"", timeout=3)
        except grpc.aio.AioRpcError as exc:
            return f"refused:{exc.code().name}".encode()
        return result

    port = await start_server(order_tls.server_credentials(),
                              AuthOptions(verifier=verifier, jwt=JWTAuthOptions(
                                  public_methods=(method("Relay"),))).interceptors(order_tls),
                              relay=relay)
    gateway = pki.issue("gateway")
    try:
        token = issuer.issue("user-7")
        got = await call(port, "Relay", credentials=gateway.channel_credentials(),
                         options=gateway.channel_options("orderd"),
                         metadata=[("authorization", f"Bearer {token}")])
        assert got == f"{ORDERD}|user-7".encode()
        got = await call(port, "Relay", credentials=gateway.channel_credentials(),
                         options=gateway.channel_options("orderd"))
        assert got == b"refused:UNAUTHENTICATED"  # nothing to forward: userd wants a token
    finally:
        await channel.close()
        await userd.drain()
        await reg.close()


async def test_a_server_started_in_a_handler_does_not_give_callers_that_callers_identity(
        keys: KeySet, issuer: TokenIssuer, registry: LocalRegistry) -> None:
    """A control server (JWT auth) starts a tenant server from its handler ``Spawn`` (a
    hot reload, a per-tenant listener triggered by an admin RPC, or a task that handler
    created). The tenant serves ``Whoami`` publicly (``JWTAuthOptions(public_methods=)``:
    optional auth, personalised when a token comes). An anonymous caller of the tenant
    got ``current_claims()`` of the *admin who called Spawn* (``-|admin``): the handler,
    ``AuthzPolicy`` subject rules, ``by_identity`` rate-limit keys and ``TokenForwarder``
    (the admin's bearer token sent downstream for the anonymous caller) all saw the
    admin. grpc.aio runs each call in a task copied from the context ``server.start()``
    ran in, and the JWT check sets the identity only when a token comes. Now the grpc
    server starts in a fresh context: an anonymous caller has no claims (``-|-``)."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    tenants: list[meshkit.MeshServer] = []

    def add_tenant(_s: object, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((auth_handler(),))

    def add_control(_s: object, server: grpc.aio.Server) -> None:
        async def spawn(request: bytes, context: Any) -> bytes:
            tenant = meshkit.MeshServer(
                "tenant", [(add_tenant, None)], registry=registry,
                options=meshkit.ServeOptions(
                    insecure=True, drain_delay_s=0.0, grace_s=1.0, admin=None,
                    auth=AuthOptions(verifier=verifier, check_peers=False,
                                     jwt=JWTAuthOptions(public_methods=(method("Whoami"),)))))
            await tenant.start()
            tenants.append(tenant)
            return str(tenant.port).encode()

        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.Control", {"Spawn": grpc.unary_unary_rpc_method_handler(spawn)}),))

    control = meshkit.MeshServer(
        "control", [(add_control, None)], registry=registry,
        options=meshkit.ServeOptions(insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                     admin=None, auth=AuthOptions(verifier=verifier,
                                                                  check_peers=False)))
    await control.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{control.port}") as ch:
            port = int(await ch.unary_unary("/t.Control/Spawn")(
                b"", timeout=5,
                metadata=(("authorization", f"Bearer {issuer.issue('admin')}"),)))
        anonymous = await call(port, "Whoami", credentials=None)
    finally:
        for tenant in tenants:
            await tenant.drain()
        await control.drain()
    assert anonymous == b"-|-", anonymous
