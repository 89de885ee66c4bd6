"""``Claims`` (a frozen dataclass, so hashable by its contract) hashes.

Its generated ``__hash__`` took every compared field, ``raw`` included, a read-only
mapping (``MappingProxyType``, or the default ``dict``), so ``hash(claims)`` raised
``TypeError: unhashable type``: claims as a dict key, in a set or as an argument of a
``functools.lru_cache``-decorated authorization helper failed in the handler. ``raw``
is left out of the hash now (still compared: equal claims hash alike).
"""

from __future__ import annotations

import functools
from types import MappingProxyType

import pytest

from meshkit.auth import Claims, IssuerOptions, JWTVerifier, KeySet, TokenIssuer, VerifierOptions

pytestmark = pytest.mark.timeout(30)


def _claims(**raw: object) -> Claims:
    return Claims(subject="u1", issuer="iss", audience=("ecom",), scopes=frozenset({"r"}),
                  expires_at=2e9, raw=MappingProxyType(dict(raw)))


def test_claims_hash_and_equal_claims_hash_alike() -> None:
    a, b = _claims(sub="u1", x=[1]), _claims(sub="u1", x=[1])
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert _claims(x=1) != _claims(x=2)  # raw still compared
    assert hash(Claims(subject="u", issuer="i", audience=(), scopes=frozenset(),
                       expires_at=1.0)) is not None  # the default raw too


async def test_verified_claims_serve_as_a_cache_argument() -> None:
    keys = KeySet.generate()
    token = TokenIssuer(keys, IssuerOptions(issuer="iss", audience="ecom")).issue(
        "u1", scopes=("r",))
    claims = await JWTVerifier(VerifierOptions(issuer="iss", audience="ecom"),
                               keys).verify(token)

    @functools.lru_cache(maxsize=8)
    def allowed(c: Claims) -> bool:
        return c.has_scopes(("r",))

    assert allowed(claims) and allowed(claims)
    assert allowed.cache_info().hits == 1
