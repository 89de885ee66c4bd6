"""IdentityMatcher (allow_subjects, allow_peers/deny_peers, TLSOptions.allowed_peers) matches
its ``*`` patterns in time linear in the identity, not by a backtracking regex.

Fault (review of 43015fcd, which fixed only deny_subjects): ``IdentityMatcher`` compiled its
wildcard patterns into one regex, ``[^/]*`` per ``*``, whose ``fullmatch`` backtracks
polynomially: ``allow_subjects=("a*a*a*b",)`` against a 2,000-character ``sub`` (a token
the issuer signed for a user-chosen name) took ~1.4 s of the event loop per decision, and
decisions are not cached. The fix matches '/'-segment by '/'-segment with the linear
piece search, ``*`` still never crossing a ``/``; the answers stay those of the regex
(property-checked here against a copy of it)."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest

from meshkit.auth import IdentityMatcher

_PROBE = """
import time
from meshkit.auth import AuthzPolicy, Claims, IdentityMatcher, Rule
policy = AuthzPolicy(default=Rule(allow_subjects=("a*a*a*b", "x*")))
claims = Claims(subject="a" * 2000, issuer="i", audience=("a",), scopes=frozenset(),
                expires_at=4e9)
peers = IdentityMatcher(("spiffe://meshkit.local/svc/a*a*a*b",), peers=True)
peer = "spiffe://meshkit.local/svc/" + "a" * 2000
t = time.perf_counter()
for _ in range(10):
    assert not policy.evaluate("/a.B/C", None, claims).allowed
    assert not peers.matches(peer)
print(time.perf_counter() - t)
"""


def test_a_long_identity_is_matched_quickly() -> None:
    """Ten decisions and ten peer matches on 2,000-character identities within a generous
    bound (each took over a second before)."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("ten decisions and ten peer matches took over 60 s")
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 10.0


def _reference(patterns: tuple[str, ...], identity: str) -> bool:
    """The matcher before the fix: one regex, ``[^/]*`` per ``*``, ``"*"`` alone any."""
    if "*" in patterns or identity in {p for p in patterns if "*" not in p}:
        return True
    wild = ["[^/]*".join(re.escape(part) for part in p.split("*"))
            for p in patterns if "*" in p]
    regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild else None
    return regex is not None and regex.fullmatch(identity) is not None


@pytest.mark.parametrize("alphabet", ["ab/*", "a/*.?[\n", "aé/*-:"],
                         ids=["plain", "regex-chars", "unicode"])
def test_the_same_answers_as_the_regex(alphabet: str) -> None:
    """Random short pattern sets and identities: the same answer as the old regex."""
    rnd = random.Random(f"identity-{alphabet}")
    chars = alphabet.replace("*", "")
    for _ in range(6000):
        patterns = tuple(
            "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 7)))
            for _ in range(rnd.randint(1, 3)))
        matcher = IdentityMatcher(patterns)
        for _ in range(4):
            identity = "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 9)))
            assert matcher.matches(identity) is _reference(patterns, identity), (
                patterns, identity)


CASES = [
    (("spiffe://meshkit.local/svc/*",), "spiffe://meshkit.local/svc/orderd", True),
    (("spiffe://meshkit.local/svc/*",), "spiffe://meshkit.local/svc/orderd/extra", False),
    (("spiffe://meshkit.local/svc/*",), "spiffe://meshkit.local/svc/", True),
    (("spiffe://*/svc/orderd",), "spiffe://a.b/svc/orderd", True),
    (("spiffe://*/svc/orderd",), "spiffe://a/b/svc/orderd", False),
    (("ab*ba",), "aba", False),
    (("ab*ba",), "abba", True),
    (("a**b",), "a/b", False),
    (("a**b",), "axxb", True),
    (("**",), "", True),
    (("**",), "a/b", False),
    (("*",), "a/b", True),
    (("*/*",), "a/b", True),
    (("*/*",), "a/b/c", False),
    (("x*", "*/y"), "q/y", True),
    (("exact",), "exact", True),
]


@pytest.mark.parametrize(("patterns", "identity", "expected"), CASES,
                         ids=[f"c{i}" for i in range(len(CASES))])
def test_edge_cases(patterns: tuple[str, ...], identity: str, expected: bool) -> None:
    """Overlapping prefix and suffix, empty pieces, '**', '*' alone, segment counts."""
    assert IdentityMatcher(patterns).matches(identity) is expected
    assert _reference(patterns, identity) is expected
