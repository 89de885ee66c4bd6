"""``by_peer`` keeps a unique-local IPv6 caller's full address (bc1b99b7's /64 is for
global addresses).

bc1b99b7 keyed ``fc00::/7`` callers by their /64 too, but unique-local addresses are
the site's own (RFC 4193: not routed on the internet), where a /64 is no one client's:
Kubernetes pod networks hand out ULA addresses from far smaller blocks inside one /64
(Cilium's default cluster pool ``fd00::/104`` with a /120 per node, Calico's /122
blocks of one /48 pool, Docker's ``fd00::/80``-style networks), so every pod of a
cluster, or of a node, became one rate-limit key and one noisy caller spent the budget
of all the others. Later in the session ``by_peer`` went back to every address whole (global
IPv6 pods of EKS/GKE share one subnet /64 too); a global address is keyed by its /64 only
by the opt-in ``by_peer_network()``, and a ULA one not even there.
"""

from __future__ import annotations

import pytest

from meshkit.resilience.ratelimit import RateLimitInterceptor, RateLimitOptions, by_peer
from tests.support.ratelimit import PeerContext, admitted

_METHOD = "/s.A/M"


_CASES = [
    ("ipv6:[fd00::a:1]:5000", "fd00::a:1"),  # Cilium's default pool, node A
    ("ipv6:[fd00::b:2]:5000", "fd00::b:2"),  # ... node B: same /64, another pod
    ("ipv6:[fdaa:bb:cc:dd:1::1]:1", "fdaa:bb:cc:dd:1::1"),
    ("ipv6:[2001:db8:1:2::7]:5000", "2001:db8:1:2::7"),  # global: whole too (by_peer)
]


@pytest.mark.parametrize(("peer", "key"), _CASES, ids=[f"case{i}" for i in range(len(_CASES))])
def test_a_unique_local_caller_keeps_its_address(peer: str, key: str) -> None:
    """A ULA caller is keyed by its full address (by_peer keys every address whole; only
    by_peer_network() keys a global one by its /64)."""
    assert by_peer(_METHOD, PeerContext(peer)) == key  # type: ignore[arg-type]


def test_two_pods_of_one_ula_64_have_their_own_budgets() -> None:
    """Two pods of one ULA /64 (Cilium's default pool) each have a budget of their own
    in the interceptor's inline default key: the second pod is not refused for the
    first one's calls."""
    icpt = RateLimitInterceptor(RateLimitOptions(default_rule="1/minute"))
    before = icpt._before_for(_METHOD)
    assert before is not None
    peers = ["ipv6:[fd00::a:1]:1", "ipv6:[fd00::a:1]:2", "ipv6:[fd00::b:2]:1"]
    assert [admitted(before, p) for p in peers] == [True, False, True]
