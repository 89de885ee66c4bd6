"""Rate limits keyed by verified identity: JWT subject first, then SPIFFE ID."""

from __future__ import annotations

import grpc

from meshkit.auth import (
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
)
from meshkit.resilience import RateLimitInterceptor, RateLimitOptions, by_identity
from tests.auth.conftest import AUDIENCE, ISSUER, StartServer, call, method, rpc_error


async def test_limit_is_per_token_subject(start_server: StartServer, keys: KeySet,
                                          issuer: TokenIssuer) -> None:
    """Each verified user has their own budget; the same peer address does not share it."""
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    limiter = RateLimitInterceptor(RateLimitOptions(rules={method("Whoami"): "2/minute"},
                                                    key=by_identity))
    port = await start_server(interceptors=(JWTAuthInterceptor(verifier, JWTAuthOptions()),
                                            limiter))

    def bearer(sub: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {issuer.issue(sub)}")]

    alice, bob = bearer("alice"), bearer("bob")
    for _ in range(2):
        await call(port, credentials=None, metadata=alice)
    err = await rpc_error(call(port, credentials=None, metadata=alice))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "alice" not in (err.details() or "")  # keys are not revealed
    await call(port, credentials=None, metadata=bob)
    await limiter.aclose()
