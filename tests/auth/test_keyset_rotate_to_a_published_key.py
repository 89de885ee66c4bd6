"""``KeySet.rotate(new)`` with a key the set already publishes.

A deployment that reloads its key directory and calls ``keys.rotate(newest)`` whenever it
does (to pick up a key ``rotate_directory`` wrote) passes the current key again when
nothing changed. ``rotate`` then put the current key a second time in the previous-key
slots: the previous key, which ``keep_previous`` promises to keep publishing, was dropped
at once (its tokens refused everywhere, UNAUTHENTICATED 'token key id unknown'), the JWKS
listed the current key twice, and every verifier's token cache was cleared. Rotating to
the current key changes nothing now; rotating to an older published key makes it current
without listing it twice.
"""

from __future__ import annotations

import time

import jwt
import pytest

from meshkit.auth import JWTVerifier, KeySet, SigningKey, VerifierOptions
from tests.auth.conftest import AUDIENCE, ISSUER

pytestmark = pytest.mark.timeout(30)


def _token(key: SigningKey) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now,
                       "exp": now + 600, "jti": "j"}, key.private_key,
                      algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"})


async def test_rotate_to_the_current_key_keeps_the_previous_key() -> None:
    keys = KeySet.generate("ES256", keep_previous=1)
    previous = keys.current
    current = keys.rotate()
    version = keys.version
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    old_token = _token(previous)
    await verifier.verify(old_token)

    assert keys.rotate(current).kid == current.kid
    assert [k.kid for k in keys.keys] == [current.kid, previous.kid]
    assert [k["kid"] for k in keys.jwks()["keys"]] == [current.kid, previous.kid]
    assert keys.version == version  # nothing changed: caches kept
    assert verifier.cached(old_token) is not None
    assert (await verifier.verify(old_token)).subject == "u"


def test_rotate_to_an_older_published_key_lists_it_once() -> None:
    keys = KeySet.generate("ES256", keep_previous=3)
    a = keys.current
    b = keys.rotate()
    c = keys.rotate()
    keys.rotate(a)
    assert [k.kid for k in keys.keys] == [a.kid, c.kid, b.kid]
    kids = [k["kid"] for k in keys.jwks()["keys"]]
    assert len(kids) == len(set(kids)) == 3
