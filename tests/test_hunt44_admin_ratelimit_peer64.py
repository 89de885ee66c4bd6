"""Rate-limit keys of IPv6 callers: ``by_peer`` (the default) keys every address whole,
as a mesh's callers inside a cluster each have their own (EKS and GKE IPv6 pods take
global addresses out of one subnet /64); ``by_peer_network()`` keys a global IPv6 caller
by its /64, for callers from the internet (one client owning a /64 cannot spread over
2^64 budgets)."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience import by_peer_network as exported
from meshkit.resilience.ratelimit import (
    RateLimitInterceptor,
    RateLimitOptions,
    by_identity,
    by_peer,
    by_peer_network,
)
from tests.support.ratelimit import PeerContext, admitted

_METHOD = "/s.A/M"


# (peer, by_peer's key, by_peer_network()'s key)
_CASES = [
    ("ipv6:[2001:db8:1:2::7]:5000", "2001:db8:1:2::7", "2001:db8:1:2::/64"),
    ("ipv6:%5B2001:db8:1:2:ffff:ffff:ffff:ffff%5D:6000", "2001:db8:1:2:ffff:ffff:ffff:ffff",
     "2001:db8:1:2::/64"),
    ("ipv6:[fd00:aa:bb:cc:1::1]:1", "fd00:aa:bb:cc:1::1", "fd00:aa:bb:cc:1::1"),  # ULA
    ("ipv6:[::1]:5000", "::1", "::1"),  # loopback: the host itself
    ("ipv6:[fe80::1%25eth0]:1", "fe80::1%eth0", "fe80::1%eth0"),  # link-local
    ("ipv6:[::ffff:10.0.0.7]:1", "10.0.0.7", "10.0.0.7"),  # IPv4-mapped: the IPv4 address
    ("ipv4:10.0.0.7:5000", "10.0.0.7", "10.0.0.7"),
    ("unix:/run/a.sock", "unix:/run/a.sock", "unix:/run/a.sock"),
]


@pytest.mark.parametrize(("peer", "whole", "network"), _CASES,
                         ids=[f"case{i}" for i in range(len(_CASES))])
def test_by_peer_keys_addresses_whole_and_by_peer_network_global_ipv6_by_its_64(
        peer: str, whole: str, network: str) -> None:
    """by_peer (and by_identity's fallback) keys every address whole; by_peer_network()
    a global IPv6 one by its /64, the others as by_peer."""
    ctx: Any = PeerContext(peer)
    assert by_peer(_METHOD, ctx) == whole
    assert by_peer(_METHOD, ctx) == whole  # from the cache too
    assert by_identity(_METHOD, ctx) == whole
    key = by_peer_network()
    assert key(_METHOD, ctx) == network
    assert key(_METHOD, ctx) == network  # from its cache too


def test_by_peer_network_takes_a_prefix_length_and_refuses_bad_ones() -> None:
    ctx: Any = PeerContext("ipv6:[2001:db8:1:2:3:4:5:6]:1")
    assert by_peer_network(ipv6_prefix_len=48)(_METHOD, ctx) == "2001:db8:1::/48"
    assert by_peer_network(ipv6_prefix_len=128)(_METHOD, ctx) == "2001:db8:1:2:3:4:5:6"
    assert exported is by_peer_network
    for bad in (0, 129, -1, True, 64.0, "64", None):
        with pytest.raises(ConfigError, match="ipv6_prefix_len") as info:
            by_peer_network(ipv6_prefix_len=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)


def test_the_default_key_gives_each_address_of_a_64_its_own_budget() -> None:
    """Pods of one cloud subnet (global addresses of one /64) each have a budget of their
    own under the interceptor's inline default key."""
    icpt = RateLimitInterceptor(RateLimitOptions(default_rule="1/minute"))
    before = icpt._before_for(_METHOD)
    assert before is not None
    peers = ["ipv6:[2001:db8:5::1]:1", "ipv6:[2001:db8:5::1]:2", "ipv6:[2001:db8:5::2]:1"]
    assert [admitted(before, p) for p in peers] == [True, False, True]


def test_one_64_shares_one_budget_under_by_peer_network() -> None:
    """Two addresses of one /64 spend one budget under by_peer_network(); another /64 has
    its own."""
    icpt = RateLimitInterceptor(RateLimitOptions(default_rule="2/minute",
                                                 key=by_peer_network()))
    before = icpt._before_for(_METHOD)
    assert before is not None
    peers = ["ipv6:[2001:db8:5::1]:1", "ipv6:[2001:db8:5::2]:1", "ipv6:[2001:db8:5::3]:1",
             "ipv6:[2001:db8:6::1]:1"]
    assert [admitted(before, p) for p in peers] == [True, True, False, True]
