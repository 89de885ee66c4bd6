"""``TokenIssuer.issue`` refuses nested ``extra_claims`` whose member names JSON would
write twice.

Only the top-level claim names were checked to be strings: a nested mapping such as
``{"ctx": {1: "a", "1": "b"}}`` went to pyjwt, whose json writes the int name ``1`` as
``"1"``, so the payload held the member ``"1"`` twice (RFC 7519 §4: claim names MUST be
unique; RFC 8259 §4: a parser may keep either, so verifiers disagree on the value).
A non-string member name at any depth is now the ``ConfigError`` a top-level one is,
quoting the name and the claim it is under.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from meshkit.auth import IssuerOptions, KeySet, TokenIssuer
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def issuer() -> TokenIssuer:
    """An ES256 issuer."""
    return TokenIssuer(KeySet.generate(), IssuerOptions(issuer="iss", audience="ecom"))


BAD: dict[str, tuple[Any, str, str]] = {
    "int-and-str": ({"ctx": {1: "a", "1": "b"}}, "'ctx'", "1"),
    "bool-and-str": ({"ctx": {True: 1, "true": 2}}, "'ctx'", "True"),
    "none-and-str": ({"ctx": {"null": 1, None: 2}}, "'ctx'", "None"),
    "in-a-list": ({"grants": [{"x": 1}, {2.5: "a", "2.5": "b"}]}, "'grants'", "2.5"),
    "deep": ({"a": {"b": {"c": {7: 0}}}}, "'a'", "7"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_a_nested_name_json_would_rewrite_is_refused(issuer: TokenIssuer, case: str) -> None:
    """Each nested non-string member name (a duplicate once JSON writes it) is a
    ConfigError naming the claim and the member name."""
    extra, claim, member = BAD[case]
    with pytest.raises(ConfigError, match="extra_claims") as err:
        issuer.issue("u1", extra_claims=extra)
    assert claim in str(err.value) and member in str(err.value)
    assert "RFC 7519" in str(err.value)


def test_nested_string_names_are_issued_as_given(issuer: TokenIssuer) -> None:
    """Nested objects with string names (lists of them too) go into the token unchanged."""
    extra = {"ctx": {"1": "a", "b": [{"c": None}]}}
    token = issuer.issue("u1", extra_claims=extra)
    body = token.split(".")[1]
    seen: list[list[str]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen.append([k for k, _ in items])
        return dict(items)

    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)),
                         object_pairs_hook=pairs)
    assert payload["ctx"] == extra["ctx"]
    assert all(len(names) == len(set(names)) for names in seen)
