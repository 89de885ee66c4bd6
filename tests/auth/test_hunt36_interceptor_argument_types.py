"""Arguments of the wrong type given to the server interceptors built by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshkit.auth import (
    AuthzInterceptor,
    AuthzPolicy,
    JWTAuthInterceptor,
    JWTAuthOptions,
    JWTVerifier,
    KeySet,
    PeerIdentityInterceptor,
    Rule,
    VerifierOptions,
    default_peer_verifier,
)
from meshkit.errors import ConfigError

OPTS = VerifierOptions(issuer="https://userd", audience="ecom")


class _Sync:
    def verify(self, token: str) -> None:
        return None


BAD: dict[str, Callable[[], Any]] = {
    "policy-rules-mapping": lambda: AuthzInterceptor({"*": Rule()}),  # type: ignore[arg-type]
    "policy-none": lambda: AuthzInterceptor(None),  # type: ignore[arg-type]
    "authz-verifier-string": lambda: AuthzInterceptor(
        AuthzPolicy(), verifier="ca.pem"),  # type: ignore[arg-type]
    "peer-verifier-object": lambda: PeerIdentityInterceptor(
        "meshkit.local", verifier=object()),  # type: ignore[arg-type]
    "jwt-verifier-options": lambda: JWTAuthInterceptor(OPTS),  # type: ignore[arg-type]
    "jwt-verifier-none": lambda: JWTAuthInterceptor(None),  # type: ignore[arg-type]
    "jwt-verifier-sync": lambda: JWTAuthInterceptor(_Sync()),  # type: ignore[arg-type]
    "jwt-options-dict": lambda: JWTAuthInterceptor(
        JWTVerifier(OPTS, KeySet.generate("ES256")),
        {"public_methods": ("*",)}),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("build", BAD.values(), ids=BAD.keys())
def test_a_wrong_type_is_refused_when_built(build: Callable[[], Any]) -> None:
    """Each was taken, and then every call crashed at its check (``policy.evaluate`` of
    a dict, ``identify`` of a string, ``options.is_public`` of a dict) or was refused
    (``None.verify``: "token could not be verified" for every token)."""
    with pytest.raises(ConfigError, match="must be"):
        build()


def test_the_right_types_are_taken() -> None:
    verifier = JWTVerifier(OPTS, KeySet.generate("ES256"))
    assert JWTAuthInterceptor(verifier, JWTAuthOptions()).verifier is verifier
    assert JWTAuthInterceptor(verifier).options == JWTAuthOptions()
    peer_verifier = default_peer_verifier()
    assert AuthzInterceptor(AuthzPolicy(), verifier=peer_verifier).verifier is peer_verifier
    assert PeerIdentityInterceptor("meshkit.local", verifier=peer_verifier).verifier \
        is peer_verifier


def test_exempt_methods_none_is_a_config_error() -> None:
    """``PeerIdentityInterceptor(td, exempt_methods=None)`` raised ``TypeError`` ('NoneType'
    object is not iterable) where ``AuthOptions(exempt_methods=None)`` raises
    ``ConfigError``."""
    with pytest.raises(ConfigError, match="exempt_methods"):
        PeerIdentityInterceptor("meshkit.local", exempt_methods=None)  # type: ignore[arg-type]
    assert PeerIdentityInterceptor("meshkit.local", exempt_methods=["/a.B/C"]) is not None
