"""Token issuing parts given the wrong types fail when built, naming what is wrong.

``TokenIssuer(options, keys)`` (swapped) or with ``VerifierOptions`` was built and failed
at the first ``issue`` (an ``AttributeError`` in a login handler: ``INTERNAL`` for the
user); ``JWKSServer("...")`` started and answered every JWKS fetch HTTP 500, so every
verifier kept refusing the tokens it issued; ``KeySet`` of PEM bytes or a string, and
``rotate(pem)``, raised ``AttributeError``; ``issue(ttl_s="60")`` raised ``TypeError`` and
``issue(ttl_s=True)`` minted a 1 s token, ``issue(audience=["a"])`` a token no
configured verifier names. Each is a ``ConfigError`` quoting the value now.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.auth import IssuerOptions, JWKSServer, KeySet, TokenIssuer, VerifierOptions
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

_KEYS = KeySet.generate()
_OPTS = IssuerOptions(issuer="https://userd.test", audience="meshkit")


@pytest.mark.parametrize(("keys", "options"), [
    (_OPTS, _KEYS), (_KEYS, VerifierOptions(issuer="i", audience="a")), (None, _OPTS)])
def test_a_token_issuer_of_wrong_parts_is_refused(keys: Any, options: Any) -> None:
    with pytest.raises(ConfigError):
        TokenIssuer(keys, options)


@pytest.mark.parametrize("keys", ["https://userd.test", None, KeySet])
def test_a_jwks_server_of_no_key_set_is_refused(keys: Any) -> None:
    with pytest.raises(ConfigError, match="keys") as err:
        JWKSServer(keys)
    assert repr(keys) in str(err.value)


@pytest.mark.parametrize("keys", ["abc", [_KEYS.current.private_pem()]])
def test_a_key_set_of_no_signing_keys_is_refused(keys: Any) -> None:
    with pytest.raises(ConfigError, match="SigningKey"):
        KeySet(keys)
    with pytest.raises(ConfigError, match="SigningKey"):
        KeySet.generate().rotate(_KEYS.current.private_pem())  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [{"ttl_s": "60"}, {"ttl_s": True}, {"audience": ["a"]}])
def test_issue_with_a_wrong_type_is_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        TokenIssuer(_KEYS, _OPTS).issue("u", **kw)
    assert repr(next(iter(kw.values()))) in str(err.value)
