"""A trust domain no workload can have, given to the interceptors built by hand."""

from __future__ import annotations

import pytest

from meshkit.auth import AuthzInterceptor, AuthzPolicy, PeerIdentityInterceptor
from meshkit.errors import ConfigError

BAD = ["spiffe://meshkit.local", "Meshkit.Local", "meshkit.local/", "", " meshkit.local"]


@pytest.mark.parametrize("domain", BAD)
def test_the_peer_check_refuses_a_bad_trust_domain_when_built(domain: str) -> None:
    """It was taken, and every call was then refused ``PERMISSION_DENIED`` (no workload's
    SPIFFE ID is of such a domain): the mistake surfaced only as refused calls."""
    with pytest.raises(ConfigError, match="trust domain"):
        PeerIdentityInterceptor(domain)


@pytest.mark.parametrize("domain", BAD)
def test_the_policy_check_refuses_a_bad_trust_domain_when_built(domain: str) -> None:
    """As above, for every peer the policy check reads itself."""
    with pytest.raises(ConfigError, match="trust domain"):
        AuthzInterceptor(AuthzPolicy(), trust_domain=domain)


def test_good_trust_domains_are_taken() -> None:
    assert PeerIdentityInterceptor("meshkit.local").trust_domain == "meshkit.local"
    assert AuthzInterceptor(AuthzPolicy(), trust_domain="td").trust_domain == "td"
    assert AuthzInterceptor(AuthzPolicy()).trust_domain is None
