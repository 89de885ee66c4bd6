"""``TLSOptions(allowed_peers=...)`` on a server whose auth turns the peer check off."""

from __future__ import annotations

import pytest

from meshkit.auth import AuthOptions, AuthzPolicy, JWTVerifier, KeySet, Rule, VerifierOptions
from meshkit.errors import ConfigError
from tests.auth.conftest import TD, Pki

VERIFIER = JWTVerifier(VerifierOptions(issuer="https://userd", audience="ecom"),
                       KeySet.generate("ES256"))
ANY_PEER = AuthzPolicy(default=Rule(allow_peers=("*",)))


@pytest.mark.parametrize("auth", [
    AuthOptions(check_peers=False, verifier=VERIFIER),
    AuthOptions(check_peers=False, policy=ANY_PEER),
], ids=["verifier", "policy"])
def test_allowed_peers_with_the_peer_check_off_are_refused(pki: Pki, auth: AuthOptions) -> None:
    """``allowed_peers`` is enforced by the peer check alone: with ``check_peers=False``
    it was dropped in silence, and every workload of the trust domain got in (the
    policy's own peer read checks the trust domain, not the list)."""
    pki.issue("userd")
    tls = pki.options("userd", allowed_peers=(f"spiffe://{TD}/svc/orderd",))
    with pytest.raises(ConfigError, match="allowed_peers"):
        auth.interceptors(tls)


def test_without_allowed_peers_the_peer_check_may_be_off(pki: Pki) -> None:
    pki.issue("userd")
    chain = AuthOptions(check_peers=False, policy=ANY_PEER).interceptors(pki.options("userd"))
    assert len(chain) == 1
    listed = pki.options("userd", allowed_peers=(f"spiffe://{TD}/svc/orderd",))
    assert len(AuthOptions(policy=ANY_PEER).interceptors(listed)) == 2
