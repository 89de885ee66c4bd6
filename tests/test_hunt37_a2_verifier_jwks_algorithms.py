"""A ``JWTVerifier`` whose accepted algorithms share none with those its ``JWKSClient``
keeps keys for (``VerifierOptions()``'s ES256/EdDSA over
``JWKSClientOptions(algorithms=("RS256",))``) is a ``ConfigError`` when it is built or
given that source: before, it was taken and refused every token, ``UNAUTHENTICATED``
("token algorithm not accepted" for the IdP's RS256 tokens, "token key id unknown" for
any other). Sets that share one are taken."""

from __future__ import annotations

import pytest

from meshkit.auth import JWKSClient, JWKSClientOptions, JWTVerifier, KeySet, VerifierOptions
from meshkit.errors import ConfigError

URL = "https://idp.meshkit.test/.well-known/jwks.json"
OPTS = VerifierOptions(issuer="https://idp.meshkit.test", audience="ecom")


def test_disjoint_algorithms_are_refused() -> None:
    """Built with such a source, or given one later: ``ConfigError`` naming both sets."""
    rs_only = JWKSClient(URL, JWKSClientOptions(algorithms=("RS256",)))
    with pytest.raises(ConfigError, match=r"RS256.*ES256|ES256.*RS256"):
        JWTVerifier(OPTS, rs_only)
    verifier = JWTVerifier(OPTS, KeySet.generate())
    with pytest.raises(ConfigError, match="RS256"):
        verifier.keys = rs_only


def test_overlapping_algorithms_are_taken() -> None:
    """One algorithm in common (or the client's default, every one) is enough."""
    JWTVerifier(OPTS, JWKSClient(URL))
    JWTVerifier(OPTS, JWKSClient(URL, JWKSClientOptions(algorithms=("RS256", "ES256"))))
    JWTVerifier(VerifierOptions(issuer="https://idp.meshkit.test", audience="ecom",
                                algorithms=("RS256",)),
                JWKSClient(URL, JWKSClientOptions(algorithms=("RS256",))))
