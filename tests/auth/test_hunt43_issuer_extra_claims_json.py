"""``TokenIssuer.issue`` takes only JSON claim values in ``extra_claims``.

``extra_claims`` went to pyjwt as given: a float NaN or infinity was written as the
bare word ``NaN``/``Infinity`` (Python's json default), so the token's payload was no
JSON (RFC 8259 §6; RFC 7519 §7.2 has a verifier refuse it: Go's, Java's and browsers'
parsers do, meshkit's own took it); a non-string claim name (``1``) turned silently
into ``"1"``; and a value json cannot write (a datetime, a set) or ``extra_claims`` no
mapping (a string) raised a bare ``TypeError``/``ValueError``. Each is now the
``ConfigError`` the method documents for its other bad arguments, naming the claim,
never its value.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest

from meshkit.auth import IssuerOptions, KeySet, TokenIssuer
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(KeySet.generate(), IssuerOptions(issuer="iss", audience="ecom"))


BAD: dict[str, tuple[Any, str]] = {
    "nan": ({"ratio": float("nan")}, "'ratio'"),
    "infinity": ({"limit": float("inf")}, "'limit'"),
    "nested-nan": ({"quota": {"cpu": float("-inf")}}, "'quota'"),
    "datetime": ({"when": dt.datetime(2030, 1, 1)}, "'when'"),
    "set": ({"roles": {"a", "b"}}, "'roles'"),
    "bytes": ({"blob": b"\x00"}, "'blob'"),
    "int-name": ({1: "one"}, "1"),
    "not-a-mapping": ("roles=admin", "str"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_a_claim_json_cannot_carry_is_a_config_error(issuer: TokenIssuer, case: str) -> None:
    extra, named = BAD[case]
    with pytest.raises(ConfigError, match="extra_claims") as err:
        issuer.issue("u1", extra_claims=extra)
    assert named in str(err.value)


def test_json_claims_go_into_the_token(issuer: TokenIssuer) -> None:
    token = issuer.issue("u1", extra_claims={"tenant": "t1", "n": 1.5, "tags": ["a"],
                                             "meta": {"x": None, "ok": True}})
    body = token.split(".")[1]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert payload["tenant"] == "t1" and payload["n"] == 1.5 and payload["tags"] == ["a"]
    assert payload["meta"] == {"x": None, "ok": True} and payload["sub"] == "u1"
