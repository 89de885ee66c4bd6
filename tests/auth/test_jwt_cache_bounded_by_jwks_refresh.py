"""A token served from the verifier's cache is re-checked once per JWKS refresh interval.

:class:`~meshkit.auth.JWKSClient` refreshes its copy of the keys "in the background when
the copy is older than ``refresh_interval_s``", but it learns the copy's age only when a
key is asked for, and :class:`~meshkit.auth.JWTVerifier` asks for none on a cache hit.
So while every caller's token stayed cached (service tokens reused for their lifetime,
which the issuer, or whoever forged the token, chooses), the JWKS was never fetched
again: a key the issuer removed from its JWKS (a compromised one; RFC 7517 §5, RFC 8725
§3.1) kept its tokens accepted from the cache until their ``exp``, though the verifier
clears its cache as soon as the client's keys change. Now a cached token is served for
at most the source's ``refresh_interval_s`` before it is verified again (which asks the
source for its key, so a stale copy is refreshed).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest

from meshkit.auth import (
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
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


def _token(key: SigningKey) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "iat": now,
                       "exp": now + 3600, "jti": "j"}, key.private_key,
                      algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"})


@pytest.fixture
def keys() -> KeySet:
    return KeySet.generate("ES256", keep_previous=0)


@pytest.fixture
async def served(keys: KeySet) -> AsyncIterator[JWKSServer]:
    server = JWKSServer(keys)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_key_removed_from_the_jwks_revokes_a_token_only_ever_served_from_cache(
        keys: KeySet, served: JWKSServer, start_server: StartServer) -> None:
    """Only the one cached token keeps calling: after its key leaves the JWKS it is
    refused with UNAUTHENTICATED within a few refresh intervals (1 s here)."""
    token = _token(keys.current)
    metadata = [("authorization", f"Bearer {token}")]
    opts = JWKSClientOptions(refresh_interval_s=1.0, min_refresh_interval_s=0.0)
    async with JWKSClient(served.url, opts) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), client)
        port = await start_server(
            interceptors=(JWTAuthInterceptor(verifier, JWTAuthOptions()),))
        assert await call(port, credentials=None, metadata=metadata) == b"-|svc"
        assert await call(port, credentials=None, metadata=metadata) == b"-|svc"
        assert verifier.cached(token) is not None
        keys.rotate()  # the token's key leaves the published JWKS

        async def refused() -> bool:
            try:
                await call(port, credentials=None, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err.details()
                return True
            return False

        await until(refused, timeout_s=20, interval_s=0.1,
                    what="the removed key's cached token refused")
        err = await rpc_error(call(port, credentials=None, metadata=metadata))
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_cached_token_stays_a_hit_within_the_refresh_interval(
        keys: KeySet, served: JWKSServer) -> None:
    """With the default interval (300 s) a verified token is a cache hit afterwards:
    the bound costs nothing within it."""
    token = _token(keys.current)
    async with JWKSClient(served.url) as client:
        verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), client)
        await verifier.verify(token)
        assert verifier.cached(token) is not None
        assert client.fetches == 1
