"""A token's ``iss`` must equal the configured issuer, whatever pyjwt is installed.

meshkit asks for ``pyjwt>=2.9``, which admits pyjwt 2.10.0, whose issuer check compares
a configured issuer string with ``in`` (CVE-2024-53861): a token signed by a trusted key
with ``iss`` any part of the issuer (``"https://userd"``, ``"meshkit"``, ``""``) passed
``VerifierOptions(issuer="https://userd.meshkit.test")``. meshkit now compares ``iss``
itself, exactly; pyjwt 2.10.0's check is reproduced here to show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jwt
import jwt.api_jwt
import pytest

from meshkit.auth import (
    InvalidTokenError,
    IssuerOptions,
    JWTVerifier,
    KeySet,
    TokenIssuer,
    VerifierOptions,
)

ISSUER = "https://userd.meshkit.test"
AUDIENCE = "ecom"


def _validate_iss_2_10_0(self: Any, payload: dict[str, Any], issuer: Any) -> None:
    """pyjwt 2.10.0's ``PyJWT._validate_iss``, as released (a ``str`` is a Sequence)."""
    if issuer is None:
        return
    if "iss" not in payload:
        raise jwt.MissingRequiredClaimError("iss")
    if isinstance(issuer, Sequence):
        if payload["iss"] not in issuer:
            raise jwt.InvalidIssuerError("Invalid issuer")
    elif payload["iss"] != issuer:
        raise jwt.InvalidIssuerError("Invalid issuer")


@pytest.fixture(params=["installed", "2.10.0"])
def pyjwt_issuer_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The installed pyjwt, and pyjwt 2.10.0's issuer check."""
    if request.param == "2.10.0":
        monkeypatch.setattr(jwt.api_jwt.PyJWT, "_validate_iss", _validate_iss_2_10_0)
    return str(request.param)


@pytest.mark.parametrize("iss", ["https://userd", "meshkit", "", "https://userd.meshkit.tes"])
async def test_a_part_of_the_issuer_is_refused(pyjwt_issuer_check: str, iss: str) -> None:
    """A trusted key's token naming a part of the issuer is refused UNAUTHENTICATED
    ``token issuer not accepted``; the issuer itself is accepted."""
    keys = KeySet.generate()
    verifier = JWTVerifier(VerifierOptions(issuer=ISSUER, audience=AUDIENCE), keys)
    good = TokenIssuer(keys, IssuerOptions(issuer=ISSUER, audience=AUDIENCE)).issue("alice")
    assert (await verifier.verify(good)).subject == "alice"
    other = IssuerOptions(issuer=iss or "x", audience=AUDIENCE)
    forged = TokenIssuer(keys, other).issue("mallory", extra_claims=None)
    if not iss:  # IssuerOptions refuses "": sign one by hand
        payload = jwt.decode(forged, options={"verify_signature": False})
        payload["iss"] = ""
        forged = jwt.encode(payload, keys.current.private_key, algorithm="ES256",
                            headers={"kid": keys.current.kid, "typ": "at+jwt"})
    with pytest.raises(InvalidTokenError) as err:
        await verifier.verify(forged)
    assert err.value.details() == "token issuer not accepted"
