"""``VerifierOptions.typ`` must be a media type (RFC 8725 §3.11, RFC 7515 §4.1.9).

Before: any string was accepted. ``typ=""`` (an unset setting read from the environment,
meant as "no type") became ``application/`` and a header without ``typ`` compared equal
to it, so the verifier silently accepted untyped tokens (ID tokens, anything) while the
configuration looked as if it required a type; ``"at+jwt "`` or ``"at + jwt"`` refused
every token. Now a ``typ`` that is no ``type/subtype`` media type name (RFC 6838 §4.2
restricted-name characters; ``application/`` optional) is a ``ConfigError`` quoting it.
"""

from __future__ import annotations

import time

import jwt
import pytest

from meshkit.auth import InvalidTokenError, JWTVerifier, KeySet, VerifierOptions
from meshkit.errors import ConfigError
from tests.auth.conftest import AUDIENCE, ISSUER

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("typ", ["", " ", "at+jwt ", " at+jwt", "at + jwt", "application/",
                                 "/at+jwt", "at+jwt/x/y", "at+jwt;q=1", "at\u00e9jwt",
                                 "at+jw\u212a"])
def test_typ_that_is_no_media_type_refused_quoted(typ: str) -> None:
    """Refused when the options are built, the value quoted."""
    with pytest.raises(ConfigError, match="typ") as err:
        VerifierOptions(issuer=ISSUER, audience=AUDIENCE, typ=typ)
    assert repr(typ) in str(err.value)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "JWT",
                                 "application/jwt", "secevent+jwt"])
def test_media_type_typ_accepted(typ: str) -> None:
    """Media type names, with or without ``application/``, any case, are accepted."""
    assert VerifierOptions(issuer=ISSUER, audience=AUDIENCE, typ=typ).typ == typ


async def test_untyped_token_refused_by_the_default_typ() -> None:
    """The default (at+jwt) still refuses a token without typ."""
    keys = KeySet.generate("ES256")
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now,
                        "exp": now + 60, "jti": "j"}, keys.current.private_key,
                       algorithm="ES256", headers={"kid": keys.current.kid})
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    with pytest.raises(InvalidTokenError, match="type"):
        await verifier.verify(token)
