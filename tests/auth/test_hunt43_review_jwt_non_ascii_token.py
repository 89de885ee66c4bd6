"""A bearer token holding a lone surrogate is refused as ``malformed token``.

Review of 7e2696d4 (SpiffeId.parse let UnicodeEncodeError out for a lone surrogate):
the same fault sat in JWTVerifier. A compact JWS is base64url and dots (RFC 7515 §7.1),
ASCII only; a token read through ``surrogateescape`` (``os.environ``, an HTTP framework's
header decoding) may hold ``\\udc80``, and ``verify()`` raised ``UnicodeEncodeError`` from
its cache key (``token.encode()``) instead of its documented ``InvalidTokenError``
(``UNAUTHENTICATED``); ``cached()``, the per-call path, raised it too instead of ``None``.
"""

from __future__ import annotations

import grpc
import pytest

from meshkit.auth import (
    InvalidTokenError,
    IssuerOptions,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
)

pytestmark = pytest.mark.timeout(30)

ISSUER, AUDIENCE = "https://userd.meshkit.test", "ecom"


def _pair() -> tuple[TokenIssuer, JWTVerifier]:
    keys = KeySet.generate()
    return (TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE)),
            JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys))


TOKENS = {"lone-surrogate": "ey\udc80.e30.c2ln", "surrogate-pair": "ey\ud83d\ude00.e30.x",
          "non-ascii": "eyé.e30.c2ln"}


@pytest.mark.parametrize("name", list(TOKENS), ids=list(TOKENS))
async def test_a_token_outside_ascii_is_a_malformed_token(name: str) -> None:
    _issuer, verifier = _pair()
    with pytest.raises(InvalidTokenError) as err:
        await verifier.verify(TOKENS[name])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "malformed token"


@pytest.mark.parametrize("name", list(TOKENS), ids=list(TOKENS))
def test_cached_answers_none_for_a_token_outside_ascii(name: str) -> None:
    _issuer, verifier = _pair()
    assert verifier.cached(TOKENS[name]) is None


async def test_a_valid_token_with_a_surrogate_appended_is_refused_not_cached() -> None:
    issuer, verifier = _pair()
    token = issuer.issue("u")
    assert (await verifier.verify(token)).subject == "u"
    assert verifier.cached(token) is not None
    with pytest.raises(InvalidTokenError):
        await verifier.verify(token + "\udc80")
    assert verifier.cached(token + "\udc80") is None
