"""Settings of the JWT and policy checks assigned after the interceptor was built."""

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
    Rule,
    VerifierOptions,
    default_peer_verifier,
)

VERIFIER = JWTVerifier(VerifierOptions(issuer="https://userd", audience="ecom"),
                       KeySet.generate("ES256"))
ALLOW_ALL = AuthzPolicy(default=Rule(allow_anonymous=True))


def _authz() -> AuthzInterceptor:
    return AuthzInterceptor(AuthzPolicy(), trust_domain="meshkit.local")


def _jwt() -> JWTAuthInterceptor:
    return JWTAuthInterceptor(VERIFIER)


CASES: dict[str, tuple[Callable[[], Any], str, Any]] = {
    "authz-policy": (_authz, "policy", ALLOW_ALL),
    "authz-verifier": (_authz, "verifier", default_peer_verifier()),
    "authz-trust-domain": (_authz, "trust_domain", "other.local"),
    "jwt-verifier": (_jwt, "verifier", VERIFIER),
    "jwt-options": (_jwt, "options", JWTAuthOptions(public_methods=("*",))),
}


@pytest.mark.parametrize(("build", "name", "value"), CASES.values(), ids=CASES.keys())
def test_assigning_a_setting_is_refused(build: Callable[[], Any], name: str,
                                        value: Any) -> None:
    """Each method's check holds these from the method's first call: a policy assigned
    later (``authz.policy = AuthzPolicy(...)``, to revoke a caller's access, say)
    applied to the methods not called yet and not to the others, which kept the old
    one; now assigning raises ``AttributeError`` (build another interceptor)."""
    icpt = build()
    before = getattr(icpt, name)
    with pytest.raises(AttributeError):
        setattr(icpt, name, value)
    assert getattr(icpt, name) is before


def test_the_settings_read_back() -> None:
    policy = AuthzPolicy()
    authz = AuthzInterceptor(policy, trust_domain="meshkit.local")
    assert (authz.policy, authz.trust_domain) == (policy, "meshkit.local")
    assert AuthzInterceptor(policy).trust_domain is None
    jwt = JWTAuthInterceptor(VERIFIER)
    assert (jwt.verifier, jwt.options) == (VERIFIER, JWTAuthOptions())
