"""``VerificationKey`` (a frozen dataclass, hashable by its contract) hashes.

Its generated ``__hash__`` took ``key``, a ``cryptography`` public key, which defines
``==`` but no hash: ``hash(VerificationKey(...))`` raised ``TypeError``, so keys from a
``KeySet`` or a ``JWKSClient`` could not be kept in a set or a dict (a custom key
source's cache of the keys it handed out). The hash is now of ``kid`` and
``algorithm``; equality still compares the key material too.
"""

from __future__ import annotations

import pytest

from meshkit.auth import KeySet, VerificationKey, parse_jwks

pytestmark = pytest.mark.timeout(30)


def test_verification_keys_hash_and_equal_keys_hash_alike() -> None:
    keys = KeySet.generate()
    mine = keys.current.verification_key()
    parsed = parse_jwks(keys.jwks())[mine.kid]  # the same key, read back from its JWK
    assert parsed == mine and hash(parsed) == hash(mine)
    assert len({mine, parsed}) == 1
    other = KeySet.generate("EdDSA").current.verification_key()
    assert {mine: 1, other: 2}[other] == 2
    # another key under the same kid and algorithm: equal hashes, not equal keys
    impostor = VerificationKey(mine.kid, mine.algorithm,
                               KeySet.generate().current.verification_key().key)
    assert impostor != mine and len({mine, impostor}) == 2
