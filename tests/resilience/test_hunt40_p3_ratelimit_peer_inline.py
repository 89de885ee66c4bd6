"""The rate-limit interceptor's ``memory://`` check reads the default key (``by_peer``: the
caller's host, kept per peer string) inline, without ``by_peer``'s frame: the same keys
as ``by_peer`` gives, the same budgets; another key function is called as before."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest

from meshkit.resilience import RateLimitInterceptor, RateLimitOptions, ratelimit
from meshkit.resilience._ratelimit_policy import peer_host
from meshkit.resilience.ratelimit import by_peer
from tests.support.ratelimit import PeerContext, admitted

_METHOD = "/s.A/M"


def _before(**options: Any) -> Any:
    icpt = RateLimitInterceptor(RateLimitOptions(default_rule="2/minute", **options))
    before = icpt._before_for(_METHOD)
    assert before is not None
    return before


@pytest.mark.parametrize("given", [False, True])
def test_the_default_key_is_read_without_by_peers_frame(given: bool) -> None:
    before = _before(key=by_peer) if given else _before()
    names: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == ratelimit.__file__:
            names.append(frame.f_code.co_name)

    for peer in ("ipv4:10.0.0.7:5000", "ipv4:10.0.0.7:5000"):  # a new peer, then a known
        names.clear()
        sys.setprofile(profile)
        try:
            assert admitted(before, peer)
        finally:
            sys.setprofile(None)
        assert "by_peer" not in names and "before_now" not in names, names


@pytest.mark.parametrize(
    ("first", "same", "other"),
    [
        ("ipv4:10.0.0.7:5000", "ipv4:10.0.0.7:6000", "ipv4:10.0.0.8:5000"),
        ("ipv6:%5B::1%5D:5000", "ipv6:[::1]:6000", "ipv6:[::2]:5000"),
        ("unix:/run/a.sock", "unix:/run/a.sock", "unix:/run/b.sock"),
    ],
)
def test_budgets_are_the_hosts_as_by_peer_keys_them(first: str, same: str, other: str) -> None:
    """Two connections of one host share its budget; another host has its own; the key
    kept for a peer is by_peer's."""
    before = _before()
    assert [admitted(before, p) for p in (first, same, same, other)] == [
        True,
        True,
        False,
        True,
    ]
    for peer in (first, same, other):
        assert ratelimit._PEER_HOSTS[peer] == peer_host(peer) == by_peer(_METHOD, PeerContext(peer))


def test_a_full_peer_cache_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inline read fills the same bounded cache by_peer does."""
    monkeypatch.setattr(ratelimit, "_MAX_PEER_HOSTS", 3)
    monkeypatch.setattr(ratelimit, "_PEER_HOSTS", {})
    before = _before()
    for i in range(7):
        assert admitted(before, f"ipv4:10.0.1.{i}:5000")
        assert len(ratelimit._PEER_HOSTS) <= 3


def test_another_key_function_is_called_and_checked() -> None:
    """A key function of one's own is called per call as before, and a key that is not a
    str still fails the call with the TypeError naming it."""
    seen: list[str] = []

    def by_user(method: str, context: Any) -> str:
        seen.append(method)
        return "alice"

    before = _before(key=by_user)
    assert [admitted(before, p) for p in ("ipv4:1.1.1.1:1", "ipv4:2.2.2.2:2", "x")] == [
        True,
        True,
        False,
    ]
    assert seen == [_METHOD] * 3
    bad = _before(key=lambda method, context: 42)
    with pytest.raises(TypeError, match="returned int 42, not a caller key"):
        bad(PeerContext("ipv4:1.1.1.1:1"))
