"""Rate-limit keys: ``by_peer`` keys a global IPv6 caller by its /64 (one client owning a /64
cannot spread over 2^64 budgets)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from meshkit.resilience.ratelimit import (
    RateLimitInterceptor,
    RateLimitOptions,
    by_identity,
    by_peer,
)

_METHOD = "/s.A/M"


class _Ctx:
    """What the key functions read of a servicer context."""

    def __init__(self, peer: str = "ipv4:10.0.0.7:5000",
                 md: tuple[tuple[str, str], ...] = ()) -> None:
        self._peer = peer
        self._md = md

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


_CASES = [
    ("ipv6:[2001:db8:1:2::7]:5000", "2001:db8:1:2::/64"),
    ("ipv6:%5B2001:db8:1:2:ffff:ffff:ffff:ffff%5D:6000", "2001:db8:1:2::/64"),
    ("ipv6:[fd00:aa:bb:cc:1::1]:1", "fd00:aa:bb:cc:1::1"),  # unique local: whole
    ("ipv6:[::1]:5000", "::1"),  # loopback: the host itself
    ("ipv6:[fe80::1%25eth0]:1", "fe80::1%eth0"),  # link-local: fe80::/64 is every host
    ("ipv6:[::ffff:10.0.0.7]:1", "10.0.0.7"),  # IPv4-mapped: the IPv4 address
    ("ipv4:10.0.0.7:5000", "10.0.0.7"),
    ("unix:/run/a.sock", "unix:/run/a.sock"),
]


@pytest.mark.parametrize(("peer", "key"), _CASES, ids=[f"case{i}" for i in range(len(_CASES))])
def test_by_peer_keys_global_ipv6_by_its_64(peer: str, key: str) -> None:
    """A global IPv6 caller is keyed by its /64; unique-local, loopback, link-local,
    IPv4-mapped and other peers by their address (the same through by_identity)."""
    ctx: Any = _Ctx(peer)
    assert by_peer(_METHOD, ctx) == key
    assert by_peer(_METHOD, ctx) == key  # from the cache too
    assert by_identity(_METHOD, ctx) == key


def _admitted(before: Any, peer: str) -> bool:
    got = before(_Ctx(peer))
    if got is None:
        return True
    assert inspect.iscoroutine(got)
    got.close()
    return False


def test_one_64_shares_one_budget_in_the_interceptor() -> None:
    """Two addresses of one /64 spend one budget (the interceptor's inline default key);
    another /64 has its own."""
    icpt = RateLimitInterceptor(RateLimitOptions(default_rule="2/minute"))
    before = icpt._before_for(_METHOD)
    assert before is not None
    peers = ["ipv6:[2001:db8:5::1]:1", "ipv6:[2001:db8:5::2]:1", "ipv6:[2001:db8:5::3]:1",
             "ipv6:[2001:db8:6::1]:1"]
    assert [_admitted(before, p) for p in peers] == [True, True, False, True]
