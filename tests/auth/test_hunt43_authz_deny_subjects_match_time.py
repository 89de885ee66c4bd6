"""A ``deny_subjects`` wildcard pattern is matched in time linear-ish in the subject, not
by a backtracking regex: ``"a*a*a*a*b"`` against a 4,000-character ``sub`` of ``a`` s
(a token the issuer signed for a user-chosen name) took minutes of the event loop in
``re.fullmatch`` (polynomial backtracking), per call, since decisions are not cached."""

from __future__ import annotations

import fnmatch
import subprocess
import sys

import pytest

from meshkit.auth import AuthzPolicy, Claims, Rule

_PROBE = """
import time
from meshkit.auth import AuthzPolicy, Claims, Rule
policy = AuthzPolicy(default=Rule(allow_subjects=("*",), deny_subjects=("a*a*a*a*b", "x*")))
claims = Claims(subject="a" * 4000, issuer="i", audience=("a",), scopes=frozenset(),
                expires_at=4e9)
t = time.perf_counter()
for _ in range(5):
    assert policy.evaluate("/a.B/C", None, claims).allowed
print(time.perf_counter() - t)
"""


def test_a_long_subject_is_matched_quickly() -> None:
    """Five decisions on a 4,000-character subject within a generous bound."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("five decisions took over 60 s")
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 10.0


PATTERNS = ("a*a*a*a*b", "pre*", "*post", "x*y*z", "*mid*", "exact", "a**b", "*")
CASES = ["aaaab", "aXaYaZab", "a/a/a/a/b", "aaab", "aaaa", "prefix", "pre", "pr", "the/post",
         "pos", "x/y/z", "xyz", "xzy", "a/mid/b", "mid", "exact", "exact!", "ab", ""]


@pytest.mark.parametrize("subject", CASES, ids=[f"s{i}" for i in range(len(CASES))])
def test_the_same_answers_as_a_glob(subject: str) -> None:
    """Each pattern refuses exactly the subjects fnmatch's '*' (any run) matches."""
    for pattern in PATTERNS:
        policy = AuthzPolicy(default=Rule(allow_subjects=("*",), deny_subjects=(pattern,)))
        claims = Claims(subject=subject, issuer="i", audience=("a",), scopes=frozenset(),
                        expires_at=4e9)
        expected = fnmatch.fnmatchcase(subject, pattern.replace("[", "[[]").replace("?", "[?]"))
        assert policy.evaluate("/a.B/C", None, claims).allowed is not expected, (
            pattern, subject)
