"""Policy peer patterns of a trust domain other than the server's."""

from __future__ import annotations

import pytest

from meshkit.auth import AuthOptions, AuthzInterceptor, AuthzPolicy, Rule
from meshkit.errors import ConfigError
from tests.auth.conftest import TD, Pki

TYPO = "spiffe://meshkit.tset/svc/evil"  # TD is meshkit.test


def _policy(**rule: tuple[str, ...]) -> AuthzPolicy:
    return AuthzPolicy(rules={"/pkg.Svc/*": Rule(**rule)},
                       default=Rule(allow_peers=(f"spiffe://{TD}/svc/*",)))


@pytest.mark.parametrize("rule", [
    {"allow_peers": (f"spiffe://{TD}/svc/*",), "deny_peers": (TYPO,)},
    {"allow_peers": (TYPO,)},
], ids=["deny", "allow"])
def test_a_pattern_of_another_trust_domain_is_refused_when_built(
        pki: Pki, rule: dict[str, tuple[str, ...]]) -> None:
    """The policy check refuses every peer of another trust domain before its rules,
    so such a pattern matches no one: a typo in a deny list's trust domain let the
    workload it names in (the allow list's wildcard admitted it), one in an allow list
    refused its peer at every call; both are now refused when the server is built."""
    pki.issue("userd")
    with pytest.raises(ConfigError, match=r"meshkit\.tset") as err:
        AuthOptions(policy=_policy(**rule)).interceptors(pki.options("userd"))
    assert "'/pkg.Svc/*'" in str(err.value)
    with pytest.raises(ConfigError, match=r"meshkit\.tset"):
        AuthzInterceptor(_policy(**rule), trust_domain=TD)


def test_patterns_that_can_match_the_domain_are_taken(pki: Pki) -> None:
    pki.issue("userd")
    ok = _policy(allow_peers=("*", "spiffe://*.test/svc/orderd", f"spiffe://{TD}/svc/a"),
                 deny_peers=("spiffe://meshkit.*/svc/evil",))
    assert len(AuthOptions(policy=ok).interceptors(pki.options("userd"))) == 2
    # no trust domain (a hand-built check that takes any): nothing to compare with
    assert AuthzInterceptor(_policy(deny_peers=(TYPO,))).trust_domain is None
