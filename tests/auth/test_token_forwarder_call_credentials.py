"""TokenForwarder on a call that brings its own per-call credentials."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from meshkit.auth import (
    JWTAuthInterceptor,
    JWTVerifier,
    KeySet,
    TokenForwarder,
    TokenIssuer,
    VerifierOptions,
)
from meshkit.interceptors import CallKind, ClientCallDetails
from tests.auth.conftest import AUDIENCE, ISSUER, Pki, StartServer, call, method


async def test_a_call_with_its_own_credentials_gets_no_forwarded_token(
        pki: Pki, start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """A call made in a handler with ``credentials=grpc.access_token_call_credentials(...)``
    (the service's own token) is sent with that token alone: the forwarder added the
    caller's beside it, two ``authorization`` headers, which the next server refuses
    ``UNAUTHENTICATED`` (a repeated header)."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    user_tls, order_tls = pki.issue("userd"), pki.issue("orderd")
    userd = await start_server(user_tls.server_credentials(), (JWTAuthInterceptor(verifier),))
    forwarder = TokenForwarder()
    own = issuer.issue("svc-orderd")

    async def relay(_req: bytes) -> bytes:
        details = ClientCallDetails(
            service="userd", method=method("Whoami"), kind=CallKind.UNARY_UNARY,
            timeout_s=3.0, metadata=None,
            credentials=grpc.access_token_call_credentials(own))

        async def proceed(d: ClientCallDetails, request: Any) -> bytes:
            async with grpc.aio.secure_channel(
                    f"127.0.0.1:{userd}", order_tls.channel_credentials(),
                    options=order_tls.channel_options("userd")) as ch:
                try:
                    got: bytes = await ch.unary_unary(d.method)(
                        request, timeout=3, metadata=d.metadata, credentials=d.credentials)
                except grpc.aio.AioRpcError as exc:
                    return f"refused:{exc.code().name}".encode()
                return got

        result: bytes = await forwarder.intercept_unary(details, b"", proceed)
        return result

    orderd = await start_server(order_tls.server_credentials(),
                                (JWTAuthInterceptor(verifier),), relay=relay)
    gateway = pki.issue("gateway")
    got = await call(orderd, "Relay", credentials=gateway.channel_credentials(),
                     options=gateway.channel_options("orderd"),
                     metadata=[("authorization", f"Bearer {issuer.issue('user-7')}")])
    assert got == b"-|svc-orderd", got


async def test_a_token_under_its_own_key_is_forwarded_beside_call_credentials() -> None:
    """A forwarder whose ``metadata_key`` is not ``authorization`` still adds the caller's
    token to a call with its own credentials (they write ``authorization``, no clash)."""
    from meshkit.auth._context import _token

    details = ClientCallDetails(
        service="userd", method=method("Whoami"), kind=CallKind.UNARY_UNARY,
        timeout_s=3.0, metadata=None, credentials=grpc.access_token_call_credentials("svc"))
    sent: list[tuple[str, str]] = []

    async def proceed(d: ClientCallDetails, request: Any) -> bytes:
        sent.extend(d.metadata)
        return b""

    async def in_a_handler() -> None:
        _token.set("user-token")
        await TokenForwarder(metadata_key="x-user-token").intercept_unary(
            details, b"", proceed)

    await asyncio.create_task(in_a_handler())
    assert ("x-user-token", "Bearer user-token") in sent, sent
