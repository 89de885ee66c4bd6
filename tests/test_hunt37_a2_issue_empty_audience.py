"""``TokenIssuer.issue(audience="")`` is a ``ConfigError``, as an empty audience is in
``IssuerOptions``; before, the empty string was taken as "not given" and the token was
minted for the issuer's default audience (``issue(sub, audience=os.environ.get("AUD",
""))`` with the variable unset: a token for another audience than the caller named)."""

from __future__ import annotations

import jwt
import pytest

from meshkit.auth import IssuerOptions, KeySet, TokenIssuer
from meshkit.errors import ConfigError


def test_an_empty_audience_is_refused() -> None:
    """``""`` is refused; a named audience and ``None`` (the default) are taken."""
    issuer = TokenIssuer(KeySet.generate(), IssuerOptions(issuer="https://userd.meshkit.test",
                                                          audience="ecom"))
    with pytest.raises(ConfigError, match="audience"):
        issuer.issue("alice", audience="")
    for given, aud in (("billing", "billing"), (None, "ecom")):
        token = issuer.issue("alice", audience=given)
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == aud
