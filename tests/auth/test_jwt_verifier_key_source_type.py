"""``JWTVerifier`` refuses a key source that is none when it is built.

``JWTVerifier(options, "https://issuer/.well-known/jwks.json")`` (a URL where a
``JWKSClient`` belongs), ``None``, the ``KeySet`` class or a JWKS dict was taken, and then
every call of the server was refused ``UNAUTHENTICATED 'token could not be verified'``
(``verifier raised AttributeError`` in the log), valid tokens included. Now a
``ConfigError`` at construction (and on assigning ``keys``) quotes the value; so does
options that are no ``VerifierOptions`` (the arguments swapped).
"""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.auth import JWTVerifier, KeySet, VerificationKey, VerifierOptions
from meshkit.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

_OPTS = VerifierOptions(issuer="https://userd.test", audience="meshkit")


@pytest.mark.parametrize("bad", ["https://userd.test/.well-known/jwks.json", None, KeySet,
                                 {"keys": []}])
def test_a_key_source_that_is_none_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="keys") as err:
        JWTVerifier(_OPTS, bad)
    assert repr(bad) in str(err.value)
    verifier = JWTVerifier(_OPTS, KeySet.generate())
    with pytest.raises(ConfigError, match="keys"):
        verifier.keys = bad


def test_swapped_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="VerifierOptions"):
        JWTVerifier(KeySet.generate(), _OPTS)  # type: ignore[arg-type]


async def test_a_key_source_of_ones_own_is_taken() -> None:
    class One:
        async def get_key(self, kid: str) -> VerificationKey | None:
            return None

    verifier = JWTVerifier(_OPTS, One())
    assert isinstance(verifier.keys, One)
