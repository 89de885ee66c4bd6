"""A method that ``JWTAuthOptions.public_methods`` makes public while a ``method_scopes``
pattern at least as specific requires scopes of it (``public_methods=("Orders/*",)``
for browsing, ``method_scopes={"/meshkit.test.Orders/PlaceOrder": ("orders:write",)}``)
is a ``ConfigError`` naming both when the server starts: before, the method was public
and its scopes were never checked, with or without a token (a caller without
``orders:write`` placed orders). A less specific scopes pattern (``"*"``, as
``default_scopes``) beside a public method is what public means, and is taken."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import meshkit
from meshkit.auth import (
    AuthOptions,
    IssuerOptions,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
)
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError

APP = "meshkit.test.Orders"
ISSUER = "https://userd.meshkit.test"
AUDIENCE = "ecom"


async def _ok(request: bytes, context: Any) -> bytes:
    return b"ok"


def _add_orders(_servicer: Any, server: Any) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(APP, {
        name: grpc.unary_unary_rpc_method_handler(_ok)
        for name in ("PlaceOrder", "GetOrder")}),))


def _server(registry: LocalRegistry, keys: KeySet, jwt: JWTAuthOptions) -> meshkit.MeshServer:
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    return meshkit.MeshServer("orders", [(_add_orders, None)], registry=registry,
                              options=meshkit.ServeOptions(
                                  insecure=True, drain_delay_s=0.0, grace_s=1.0,
                                  telemetry=None, auth=AuthOptions(
                                      verifier=verifier, jwt=jwt, check_peers=False)))


@pytest.mark.parametrize("public, scoped", [
    ("Orders/*", "/meshkit.test.Orders/PlaceOrder"),
    ("*", "Orders/Place*"),
    ("Orders/*", "/meshkit.test.Orders/Place*"),
])
async def test_scopes_of_a_public_method_fail_the_start(registry: LocalRegistry, public: str,
                                                       scoped: str) -> None:
    """The start raises ``ConfigError`` naming the method and both patterns."""
    keys = KeySet.generate()
    srv = _server(registry, keys, JWTAuthOptions(public_methods=(public,),
                                                 method_scopes={scoped: ("orders:write",)}))
    try:
        with pytest.raises(ConfigError) as err:
            await srv.start()
    finally:
        await srv.drain()
    text = str(err.value)
    assert f"/{APP}/PlaceOrder" in text and repr(public) in text and repr(scoped) in text


@pytest.mark.parametrize("public, scoped", [
    ("/meshkit.test.Orders/PlaceOrder", "meshkit.test.Orders/PlaceOrder"),
    ("*", "*/*"),
])
def test_one_pattern_public_and_scoped_is_refused_at_once(public: str, scoped: str) -> None:
    """The same pattern (in any spelling) in both is refused when the options are built."""
    with pytest.raises(ConfigError, match="both public"):
        JWTAuthOptions(public_methods=(public,), method_scopes={scoped: ("orders:write",)})
    JWTAuthOptions(public_methods=(public,), method_scopes={scoped: ()})  # no scopes: taken


async def test_what_the_conflict_let_through(registry: LocalRegistry) -> None:
    """Before: a token without the scope (and no token at all) placed an order; a server
    whose public pattern is the more specific one starts, and there the scoped method
    still needs its scope."""
    keys = KeySet.generate()
    token = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE)).issue(
        "alice", scopes=("orders:read",))
    srv = _server(registry, keys, JWTAuthOptions(
        public_methods=("/meshkit.test.Orders/GetOrder",),
        method_scopes={"*": ("orders:write",)}))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            assert await ch.unary_unary(f"/{APP}/GetOrder")(b"x", timeout=10) == b"ok"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary(f"/{APP}/PlaceOrder")(
                    b"x", timeout=10, metadata=(("authorization", f"Bearer {token}"),))
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await srv.drain()
