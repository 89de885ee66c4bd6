"""``by_peer`` keeps each peer string's host (a connection's calls share it): the same keys
as parsing every call, for every kind of peer, first and later calls, and the dict stays
bounded under many connections (pinned for its per-call cut)."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.resilience import ratelimit
from meshkit.resilience._ratelimit_policy import peer_host
from meshkit.resilience.ratelimit import by_identity, by_peer
from tests.support.ratelimit import PeerContext

pytestmark = pytest.mark.timeout(60)


PEERS = ["ipv4:10.0.0.7:51234", "ipv6:%5B::1%5D:51234", "ipv6:[::1]:4",
         "unix:/run/x.sock", "ipv4:10.0.0.7", "odd", "", "ipv6:[fe80::1%25eth0]:1"]


@pytest.mark.parametrize("peer", PEERS, ids=range(len(PEERS)))
def test_the_same_key_as_parsing_each_call(peer: str) -> None:
    ctx: Any = PeerContext(peer)
    want = peer_host(peer)
    assert [by_peer("/s/M", ctx) for _ in range(3)] == [want] * 3
    assert by_identity("/s/M", ctx) == want  # no claims, no peer identity: the address


def test_bounded_under_many_connections() -> None:
    n = ratelimit._MAX_PEER_HOSTS + 50
    for i in range(n):
        peer = f"ipv4:10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:{1000 + i % 50000}"
        assert by_peer("/s/M", PeerContext(peer)) == peer_host(peer)  # type: ignore[arg-type]
        assert len(ratelimit._PEER_HOSTS) <= ratelimit._MAX_PEER_HOSTS
