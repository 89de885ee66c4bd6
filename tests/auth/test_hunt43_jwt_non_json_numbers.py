"""A token whose claims set or header is no valid JSON is refused, any claim.

RFC 7519 §7.2 (steps 3 and 10) has a verifier refuse a JOSE header or claims set that
is not "a completely valid JSON object" (RFC 8259); RFC 8259 §6 has no NaN, Infinity or
numbers beyond a double (``1e400``). Python's json reads them (as nan/inf), and only
``exp``/``nbf``/``iat`` were checked for them: ``{"tier": NaN}`` or a header member
``Infinity`` passed, into ``Claims.raw`` and every handler reading it, where Go's,
Java's and browsers' parsers refuse the token. Now they are a malformed token
(``UNAUTHENTICATED``), never cached.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshkit.auth import InvalidTokenError, JWTVerifier, KeySet, VerifierOptions

pytestmark = pytest.mark.timeout(30)

T0 = 2_000_000_000
ISSUER, AUDIENCE = "https://userd.meshkit.test", "ecom"


def _verifier(keys: KeySet) -> JWTVerifier:
    return JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys,
                       clock=lambda: T0 + 1.0)


def _token(keys: KeySet, raw: str, *, in_header: bool = False) -> str:
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": T0 + 60,
                              "iat": T0, "jti": "j"}
    header: dict[str, Any] = {"kid": keys.current.kid, "typ": "at+jwt", "alg": "ES256"}
    (header if in_header else claims)["odd"] = "@"
    body = json.dumps(claims).replace('"@"', raw).encode()
    if not in_header:
        return jwt.api_jws.encode(body, keys.current.private_key, algorithm="ES256",
                                  headers={"kid": keys.current.kid, "typ": "at+jwt"})
    # the header too as written bytes (pyjwt's encoder would write NaN itself, but the
    # member order and text are ours to set here)
    head = jwt.utils.base64url_encode(json.dumps(header).replace('"@"', raw).encode())
    payload = jwt.utils.base64url_encode(body)
    signing_input = head + b"." + payload
    private = keys.current.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # KeySet.generate(): ES256
    sig = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(
        signing_input, private)
    return (signing_input + b"." + jwt.utils.base64url_encode(sig)).decode()


RAW = ["NaN", "Infinity", "-Infinity", "1e400", '{"n": [1, NaN]}']
IDS = ["NaN", "Infinity", "-Infinity", "1e400", "nested-NaN"]


@pytest.mark.parametrize("raw", RAW, ids=IDS)
async def test_a_claim_that_is_no_json_number_is_malformed(raw: str) -> None:
    keys = KeySet.generate()
    verifier = _verifier(keys)
    with pytest.raises(InvalidTokenError) as err:
        await verifier.verify(_token(keys, raw))
    assert err.value.details() == "malformed token"
    assert len(verifier.cache) == 0


@pytest.mark.parametrize("raw", RAW, ids=IDS)
async def test_a_header_member_that_is_no_json_number_is_malformed(raw: str) -> None:
    keys = KeySet.generate()
    with pytest.raises(InvalidTokenError) as err:
        await _verifier(keys).verify(_token(keys, raw, in_header=True))
    assert err.value.details() == "malformed token"


async def test_plain_json_numbers_still_pass() -> None:
    keys = KeySet.generate()
    claims = await _verifier(keys).verify(_token(keys, '{"n": [1, 2.5e10, -0.0, null]}'))
    assert claims.raw["odd"] == {"n": [1, 2.5e10, -0.0, None]}
