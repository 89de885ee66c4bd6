"""A JWTVerifier subclass whose ``verify`` adds a check of its own (revocation, say)."""

from __future__ import annotations

import grpc

from meshkit.auth import (
    AuthOptions,
    Claims,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    UnauthenticatedError,
    VerifierOptions,
)
from tests.auth.conftest import AUDIENCE, ISSUER, StartServer, call, rpc_error


class _Revoking(JWTVerifier):
    """Refuses the tokens whose ``jti`` is revoked, after the base checks."""

    revoked: set[str] = set()

    async def verify(self, token: str) -> Claims:
        claims = await super().verify(token)
        if claims.token_id in self.revoked:
            raise UnauthenticatedError("token revoked")
        return claims


async def test_a_returning_token_goes_through_the_subclass_verify(
        start_server: StartServer, keys: KeySet, issuer: TokenIssuer) -> None:
    """The check took a returning token's claims from the base class's cache
    (``cached``) without calling the subclass's ``verify``: a revoked token, refused on
    its first call, was let in on its second; now every call of such a verifier goes
    through its ``verify``."""
    verifier = _Revoking(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    chain = AuthOptions(verifier=verifier, check_peers=False).interceptors(None)
    port = await start_server(interceptors=chain)
    token = issuer.issue("alice")
    md = [("authorization", f"Bearer {token}")]
    assert await call(port, credentials=None, metadata=md) == b"-|alice"
    claims = verifier.cached(token)
    assert claims is not None and claims.token_id is not None
    _Revoking.revoked = {claims.token_id}
    try:
        for _ in range(2):
            err = await rpc_error(call(port, credentials=None, metadata=md))
            assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "token revoked")
    finally:
        _Revoking.revoked = set()
