"""A call whose token the verifier's cache already holds is admitted as the first one
was: its handler sees the claims and the token (``current_claims``/``current_token``,
what a token forwarder sends on), with and without scopes to check (pinned for the
check's per-call cut)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshkit.auth import (
    IssuerOptions,
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
    current_claims,
)
from meshkit.auth._context import current_token

ISSUER, AUDIENCE = "https://id.meshkit.test", "svc"
METHOD = "/test.Who/Am"

pytestmark = pytest.mark.timeout(60)


async def _who(request: bytes, context: Any) -> bytes:
    claims, token = current_claims(), current_token()
    return f"{claims.subject if claims else '-'}|{token or '-'}".encode()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[grpc.aio.Server] = []

    async def start(options: JWTAuthOptions, keys: KeySet) -> int:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
        server = grpc.aio.server(interceptors=(JWTAuthInterceptor(verifier, options),))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Who", {"Am": grpc.unary_unary_rpc_method_handler(_who)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield start
    for s in servers:
        await s.stop(0)


@pytest.mark.parametrize("scopes", [(), ("orders:read",)], ids=["no-scopes", "scoped"])
async def test_a_cached_token_is_seen_by_the_handler(serve: Any, scopes: tuple[str, ...]
                                                     ) -> None:
    keys = KeySet.generate("ES256")
    port = await serve(JWTAuthOptions(default_scopes=scopes), keys)
    token = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE, ttl_s=300)
                        ).issue("user-1", scopes=("orders:read",))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call: Any = ch.unary_unary(METHOD)
        md = (("authorization", f"Bearer {token}"),)
        got = [await call(b"", metadata=md, timeout=10) for _ in range(3)]
    assert got == [f"user-1|{token}".encode()] * 3  # the first verified, then cached
