"""Removing a key from the key set revokes the tokens it signed, cached ones included.

Taking a (compromised) signing key out of the JWKS is how an issuer stops its tokens
being accepted (RFC 7517 §5: the set *is* the keys to trust; RFC 8725 §2.7/§3.1 a
verifier must use only keys it trusts). The verifier's verified-token cache kept
answering for a token checked before the removal until that token's own ``exp`` — which
whoever minted it chose — so a forged token, once used, outlived the key's revocation
for as long as it kept being used. These tests check that a cache hit is never served
once the key source's keys changed, on the per-call path of a real grpc.aio server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest

from meshkit.auth import (
    InvalidTokenError,
    JWKSClient,
    JWKSClientOptions,
    JWKSServer,
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    SigningKey,
    VerifierOptions,
)
from tests.auth.conftest import AUDIENCE, ISSUER, StartServer, call, rpc_error

pytestmark = pytest.mark.timeout(60)


def _token(key: SigningKey, sub: str = "u1") -> str:
    """A token signed with ``key`` directly (not through a TokenIssuer, so the key set
    has no record of it and ``rotate`` drops the key at once with keep_previous=0)."""
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now,
                       "exp": now + 3600, "jti": sub}, key.private_key,
                      algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"})


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def keys() -> KeySet:
    """A key set that keeps no previous key on rotation."""
    return KeySet.generate("ES256", keep_previous=0)


@pytest.fixture
async def served(keys: KeySet) -> AsyncIterator[JWKSServer]:
    """A JWKS server for ``keys`` on a free 127.0.0.1 port."""
    server = JWKSServer(keys)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_removed_jwks_key_revokes_cached_tokens_on_a_real_server(
        keys: KeySet, served: JWKSServer, start_server: StartServer) -> None:
    """A token accepted (and cached) before its key left the JWKS is refused with
    UNAUTHENTICATED after the client fetched the new document; tokens of the new key
    are accepted."""
    old = keys.current
    old_token = _token(old)
    async with JWKSClient(served.url, JWKSClientOptions(fetch_timeout_s=5)) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), client)
        port = await start_server(
            interceptors=(JWTAuthInterceptor(verifier, JWTAuthOptions()),))
        assert await call(port, credentials=None, metadata=_bearer(old_token)) == b"-|u1"
        assert len(verifier.cache) == 1

        new = keys.rotate()
        assert old.kid not in {k.kid for k in keys.keys}
        await client.refresh()
        assert client.kids == {new.kid}

        err = await rpc_error(call(port, credentials=None, metadata=_bearer(old_token)))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, (err.code(), err.details())
        assert await call(port, credentials=None,
                          metadata=_bearer(_token(new, "u2"))) == b"-|u2"


async def test_removed_key_set_key_revokes_cached_tokens(keys: KeySet) -> None:
    """The same with a KeySet as the key source (the issuing process's own verifier)."""
    old = keys.current
    old_token = _token(old)
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    assert (await verifier.verify(old_token)).subject == "u1"
    assert verifier.cached(old_token) is not None
    keys.rotate()
    assert verifier.cached(old_token) is None
    with pytest.raises(InvalidTokenError, match="key id unknown"):
        await verifier.verify(old_token)


async def test_replaced_key_source_revokes_cached_tokens(keys: KeySet) -> None:
    """Pointing the verifier at another key source forgets what the old one verified."""
    old_token = _token(keys.current)
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    await verifier.verify(old_token)
    verifier.keys = KeySet.generate("ES256")
    assert verifier.cached(old_token) is None
    with pytest.raises(InvalidTokenError, match="key id unknown"):
        await verifier.verify(old_token)


async def test_an_unchanged_refresh_keeps_the_cache(
        keys: KeySet, served: JWKSServer) -> None:
    """A refresh that brings the same keys (every refresh_interval_s) forgets nothing:
    a cached token stays a cache hit."""
    token = _token(keys.current)
    async with JWKSClient(served.url) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), client)
        await verifier.verify(token)
        await client.refresh()
        await client.refresh()
        assert verifier.cached(token) is not None
        assert client.fetches == 3
