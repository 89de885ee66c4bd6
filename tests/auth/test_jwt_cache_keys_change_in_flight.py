"""Keys that change while a token is being verified: its claims must not be cached.

:class:`~meshkit.auth.JWTVerifier` forgets its verified tokens when the key source's
``version`` changes, so a key removed from the source (a compromised one) revokes the
tokens it signed at once (RFC 7517 §5: the set is the keys to trust; RFC 8725 §3.1).
The check after the signature was: "the version changed meanwhile? clear the cache, then
cache this token's claims". But the key the token was just verified with may be one of
the *old* keys: a source that read it and then awaited (an audit hook, a lock, a remote
freshness check; a JWKS fetch of another thread finishing while this one verifies), or a
source replaced meanwhile (``verifier.keys = ...``). Its claims were then cached
against the new keys, and the token of the removed key kept being accepted from the
cache until its own ``exp`` (which whoever minted it chose).

A call in flight when the keys change may still be answered (it was valid when it
began); what must not happen is caching it. Also checked: :meth:`JWTVerifier.verify`
called directly (no :meth:`cached` first, as the interceptor does) after a rotation
finds no cache hit.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from meshkit.auth import InvalidTokenError, JWTVerifier, KeySet, SigningKey, VerifierOptions
from meshkit.auth._jwt import VerificationKey
from tests.auth.conftest import AUDIENCE, ISSUER

pytestmark = pytest.mark.timeout(30)


def _token(key: SigningKey) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "iat": now,
                       "exp": now + 3600, "jti": "j1"}, key.private_key,
                      algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"})


class _AwaitingSource:
    """A key source over a real :class:`KeySet` that, once :attr:`hold` is set, reads the
    key and then awaits :attr:`release` before returning it (a source doing async work
    after its in-memory lookup); :attr:`holding` is set while it waits."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.hold = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def version(self) -> int:
        return self.keys.version

    async def get_key(self, kid: str) -> VerificationKey | None:
        key = self.keys.lookup(kid)
        if self.hold:
            self.holding.set()
            await asyncio.wait_for(self.release.wait(), 10)
        return key


def _verifier(source: object) -> JWTVerifier:
    return JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), source)  # type: ignore[arg-type]


async def test_token_verified_with_a_key_removed_meanwhile_is_not_cached() -> None:
    """The key is removed (KeySet.rotate) while the verify of its token is in flight:
    afterwards that token is no cache hit, and verifying it again refuses it."""
    keys = KeySet.generate("ES256", keep_previous=0)
    source = _AwaitingSource(keys)
    verifier = _verifier(source)
    token = _token(keys.current)
    source.hold = True
    task = asyncio.create_task(verifier.verify(token))
    await asyncio.wait_for(source.holding.wait(), 10)
    keys.rotate()  # the token's key leaves the source
    source.hold = False
    source.release.set()
    await task  # in flight when the key left: answered, but not to be remembered
    assert verifier.cached(token) is None
    with pytest.raises(InvalidTokenError, match="key id unknown"):
        await verifier.verify(token)


async def test_token_verified_while_the_source_is_replaced_is_not_cached() -> None:
    """The verifier is pointed at another key source while a token of the old one is
    being verified: the new source's verifier does not accept it from the cache."""
    keys = KeySet.generate("ES256")
    source = _AwaitingSource(keys)
    verifier = _verifier(source)
    token = _token(keys.current)
    source.hold = True
    task = asyncio.create_task(verifier.verify(token))
    await asyncio.wait_for(source.holding.wait(), 10)
    verifier.keys = KeySet.generate("ES256")  # same version (1) as the old source
    source.release.set()
    await task
    assert verifier.cached(token) is None
    with pytest.raises(InvalidTokenError, match="key id unknown"):
        await verifier.verify(token)


async def test_direct_verify_after_a_rotation_is_no_cache_hit() -> None:
    """verify() itself checks the version (callers need not call cached() first)."""
    keys = KeySet.generate("ES256", keep_previous=0)
    verifier = _verifier(keys)
    token = _token(keys.current)
    await verifier.verify(token)
    assert len(verifier.cache) == 1
    keys.rotate()
    with pytest.raises(InvalidTokenError, match="key id unknown"):
        await verifier.verify(token)
    assert len(verifier.cache) == 0


async def test_rotation_that_keeps_the_key_still_caches_its_token() -> None:
    """A rotation during the verify that keeps the token's key published (keep_previous=1):
    the source still gives that key, so the token is cached."""
    keys = KeySet.generate("ES256", keep_previous=1)
    source = _AwaitingSource(keys)
    verifier = _verifier(source)
    token = _token(keys.current)
    source.hold = True
    task = asyncio.create_task(verifier.verify(token))
    await asyncio.wait_for(source.holding.wait(), 10)
    keys.rotate()
    source.hold = False
    source.release.set()
    assert (await task).subject == "u1"
    assert verifier.cached(token) is not None


async def test_unchanged_keys_still_cache() -> None:
    """With the keys unchanged, a verified token is cached (the fix caches no less)."""
    keys = KeySet.generate("ES256")
    source = _AwaitingSource(keys)
    verifier = _verifier(source)
    token = _token(keys.current)
    await verifier.verify(token)
    assert verifier.cached(token) is not None
