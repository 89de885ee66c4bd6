"""A mistaken value given for a token verifier is not quoted in the ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshkit.auth import (
    AuthOptions,
    AuthzInterceptor,
    AuthzPolicy,
    JWTAuthInterceptor,
    PeerIdentityInterceptor,
)
from meshkit.errors import ConfigError

SECRET = "s3cr3t-client-secret-7f1d"


@dataclass
class _Introspection:
    """A verifier of one's own with a sync verify: refused, its repr holding a secret."""

    client_secret: str

    def verify(self, token: str) -> None:
        return None


@pytest.mark.parametrize("value", [
    SECRET,  # the secret itself (an env var read into the wrong argument)
    SECRET.encode(),
    _Introspection(SECRET),
    {"client_secret": SECRET},
], ids=["str", "bytes", "sync-verifier", "dict"])
@pytest.mark.parametrize("build", [
    lambda v: AuthOptions(verifier=v), lambda v: JWTAuthInterceptor(v)],
    ids=["AuthOptions", "JWTAuthInterceptor"])
def test_the_value_is_named_by_its_type(build: object, value: object) -> None:
    """The message quoted the value (``got 's3cr3t...'``, a dataclass's repr with its
    secret field), which went into tracebacks and logs; it now names its type only."""
    with pytest.raises(ConfigError, match="verifier must be") as err:
        build(value)  # type: ignore[operator]
    assert SECRET not in str(err.value)
    assert type(value).__qualname__ in str(err.value)


def test_a_class_and_none_are_still_named() -> None:
    with pytest.raises(ConfigError, match="the class _Introspection"):
        JWTAuthInterceptor(_Introspection)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="got None"):
        JWTAuthInterceptor(None)  # type: ignore[arg-type]


KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"


@pytest.mark.parametrize("build", [
    lambda v: AuthzInterceptor(AuthzPolicy(), verifier=v),
    lambda v: PeerIdentityInterceptor("meshkit.local", verifier=v)],
    ids=["AuthzInterceptor", "PeerIdentityInterceptor"])
@pytest.mark.parametrize("value", [KEY, KEY.encode()], ids=["str", "bytes"])
def test_a_peer_verifier_value_is_named_by_its_type(build: object, value: object) -> None:
    """Key material given for the peer verifier was quoted in the message."""
    with pytest.raises(ConfigError, match="verifier must be a PeerVerifier") as err:
        build(value)  # type: ignore[operator]
    assert "PRIVATE KEY" not in str(err.value) and "MIGHAgEA" not in str(err.value)
