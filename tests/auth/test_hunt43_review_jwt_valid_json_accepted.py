"""Review of 51f1ba9a (NaN/Infinity/1e400 refused in a JWT header or claims): the check
refuses no valid JSON another JOSE library writes, and adds nothing to a cache hit.

Valid tokens kept: integers past a double (``10**30``, ``-2**64``: JSON numbers of any
size, RFC 8259 §6), a fractional ``exp`` (``1.5`` past a second: NumericDate may be
non-integer, RFC 7519 §2), a huge exponent that still fits a double (``1e308``), ``\\u``
escapes (a surrogate pair, a lone surrogate as Go/Java write one, ``\\u0000``) in claims
and in the header. The refusal is the plain ``malformed token`` (``UNAUTHENTICATED``).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
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


def _signed(keys: KeySet, header_text: str, claims_text: str) -> str:
    """A compact JWS of exactly these JSON texts (as another library may write them)."""
    head = jwt.utils.base64url_encode(header_text.encode())
    body = jwt.utils.base64url_encode(claims_text.encode())
    signing_input = head + b"." + body
    private = keys.current.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    sig = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(
        signing_input, private)
    return (signing_input + b"." + jwt.utils.base64url_encode(sig)).decode()


def _header(keys: KeySet, extra: str = "") -> str:
    return ('{"alg":"ES256","typ":"at+jwt","kid":' + json.dumps(keys.current.kid)
            + extra + "}")


def _claims(extra: str = "", exp: str = str(T0 + 60)) -> str:
    base: dict[str, Any] = {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "iat": T0,
                            "jti": "j"}
    return json.dumps(base)[:-1] + ', "exp": ' + exp + extra + "}"


VALID = {
    "big-int": (',"n":1000000000000000000000000000000', 10**30),
    "negative-big-int": (',"n":-18446744073709551616', -(2**64)),
    "1e308": (',"n":1e308', 1e308),
    "surrogate-pair": (r',"n":"\ud83d\ude00"', "\U0001f600"),
    "lone-surrogate": (r',"n":"\udc80"', "\udc80"),
    "nul-escape": (r',"n":"a\u0000b"', "a\x00b"),
    "negative-zero": (',"n":-0.0', -0.0),
}


@pytest.mark.parametrize("case", list(VALID), ids=list(VALID))
async def test_valid_json_claims_pass(case: str) -> None:
    keys = KeySet.generate()
    text, value = VALID[case]
    claims = await _verifier(keys).verify(_signed(keys, _header(keys), _claims(text)))
    assert claims.raw["n"] == value


@pytest.mark.parametrize("case", list(VALID), ids=list(VALID))
async def test_valid_json_header_members_pass(case: str) -> None:
    keys = KeySet.generate()
    text, _value = VALID[case]
    claims = await _verifier(keys).verify(_signed(keys, _header(keys, text), _claims()))
    assert claims.subject == "u"


async def test_a_fractional_exp_passes() -> None:
    keys = KeySet.generate()
    claims = await _verifier(keys).verify(
        _signed(keys, _header(keys), _claims(exp=f"{T0 + 1.5}")))
    assert claims.expires_at == T0 + 1.5


@pytest.mark.parametrize("text", [',"n":NaN', ',"n":1e400'], ids=["NaN", "1e400"])
async def test_the_refusal_is_the_plain_malformed_token(text: str) -> None:
    keys = KeySet.generate()
    with pytest.raises(InvalidTokenError) as err:
        await _verifier(keys).verify(_signed(keys, _header(keys), _claims(text)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "malformed token"


async def test_a_cache_hit_runs_no_json_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check costs a json.dumps of the header and of the claims on a cache miss
    (about 7 us beside a 130 us ES256 verification) and nothing on a hit."""
    import meshkit.auth._jwt as jwt_mod

    calls: list[object] = []
    real = jwt_mod._valid_json

    def counted(value: object) -> bool:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(jwt_mod, "_valid_json", counted)
    keys = KeySet.generate()
    verifier = _verifier(keys)
    token = _signed(keys, _header(keys), _claims())
    await verifier.verify(token)
    assert len(calls) == 2  # the header and the claims set
    for _ in range(3):
        await verifier.verify(token)
    assert len(calls) == 2
