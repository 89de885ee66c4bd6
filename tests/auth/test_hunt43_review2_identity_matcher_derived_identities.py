"""IdentityMatcher gives the old regex's answers on identities built from its patterns.

Review of 9320d68a/8f9caa9e (the ``*`` patterns matched per ``/``-segment in linear time
instead of by a regex): their property test draws identities at random, which rarely
match a pattern with several ``*`` or segments, so a wrong *accept* (an authorization
bypass) or a wrong *refusal* there could go unseen. Here each identity is made from one
of the patterns -- every ``*`` replaced by a random run (sometimes holding a ``/``), then
sometimes one character changed, added or dropped -- over adversarial alphabets
(``/``, ``*``-free regex metacharacters, ``%``, ``:``, newline, NUL, full-width solidus U+FF0F,
``ß``/``ẞ``, dotless i U+0131 / U+0130, a combining accent), plus long identities. No fault
was found; this keeps the equivalence checked where it matters.
"""

from __future__ import annotations

import random
import re

import pytest

from meshkit.auth import IdentityMatcher


def _reference(patterns: tuple[str, ...], identity: str) -> bool:
    """The matcher before 9320d68a: one regex, ``[^/]*`` per ``*``, ``"*"`` alone any."""
    if "*" in patterns or identity in {p for p in patterns if "*" not in p}:
        return True
    wild = ["[^/]*".join(re.escape(part) for part in p.split("*"))
            for p in patterns if "*" in p]
    regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild else None
    return regex is not None and regex.fullmatch(identity) is not None


_ALPHABETS = {
    "narrow": ["a", "b", "/"],
    "spiffe": ["spiffe://td/", "svc", "/", "a", ".", ":", "%", "-"],
    "control": ["a", "/", "\n", "\x00", "$", "^", "\\", ".", "(", "["],
    "unicode": ["ß", "ẞ", "\u0131", "İ", "i", "I", "\uff0f", "e\u0301", "é", "/", "a"],
}


def _text(rnd: random.Random, alphabet: list[str], most: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, most)))


def _derived(rnd: random.Random, pattern: str, alphabet: list[str]) -> str:
    """``pattern`` with each ``*`` replaced, then perhaps one character changed."""
    fill = [*alphabet, "/"] if rnd.random() < 0.3 else [c for c in alphabet if c != "/"]
    text = "".join(_text(rnd, fill or ["a"], 4) if c == "*" else c for c in pattern)
    roll = rnd.random()
    if text and roll < 0.15:  # drop one
        i = rnd.randrange(len(text))
        text = text[:i] + text[i + 1:]
    elif roll < 0.3:  # add one
        i = rnd.randint(0, len(text))
        text = text[:i] + rnd.choice(alphabet) + text[i:]
    return text


@pytest.mark.parametrize("name", sorted(_ALPHABETS), ids=sorted(_ALPHABETS))
def test_identities_made_from_the_patterns(name: str) -> None:
    alphabet = _ALPHABETS[name]
    pattern_chars = [*alphabet, "*", "*", "*", "/"]
    rnd = random.Random(f"review2-{name}")
    matched = 0
    for _ in range(4000):
        patterns = tuple(_text(rnd, pattern_chars, 9) or "*x"
                         for _ in range(rnd.randint(1, 3)))
        matcher = IdentityMatcher(patterns)
        for _ in range(4):
            identity = _derived(rnd, rnd.choice(patterns), alphabet)
            expected = _reference(patterns, identity)
            matched += expected
            assert matcher.matches(identity) is expected, (patterns, identity)
    assert matched > 4000  # positive answers are well represented


_EDGES = [
    (("spiffe://td/svc/*",), "spiffe://td/svc/" + "a" * 5000),
    (("spiffe://td/svc/*",), "spiffe://td/svc/" + "a" * 5000 + "/b"),
    (("*/*/*",), "a" * 3000 + "/" + "b" * 3000 + "/c"),
    (("*/*/*",), "a" * 3000 + "//"),
    (("*/*/*",), "a" * 3000 + "///"),
    (("a*b*a/*",), "a" + "ba" * 3000 + "/x"),
    (("a*b*a/*",), "a" + "ab" * 3000 + "/x"),
    (("ab*b",), "ab"),
    (("ab*b",), "abb"),
    (("a*b*c",), "abc"),
    (("a*b*c",), "ac"),
    (("a*/",), "a/"),
    (("a*/",), "a//"),
    (("/*",), "/"),
    (("*/",), "/"),
    (("*//*",), "a//b"),
    (("*//*",), "a/b"),
    (("*", "zz*zz"), "a/b/c"),
    (("td\uff0fsvc\uff0f*",), "td\uff0fsvc\uff0fx\uff0fy"),
    (("spiffe://td/svc/*",), "spiffe://td\uff0fsvc\uff0fx"),
    (("spiffe://td/svc/ß*",), "spiffe://td/svc/ẞx"),
    (("spiffe://td/svc/i*",), "spiffe://td/svc/\u0131x"),
    (("x*",), "x\ny"),
    (("x*",), "x\x00/"),
]


@pytest.mark.parametrize(("patterns", "identity"), _EDGES,
                         ids=[f"e{i}" for i in range(len(_EDGES))])
def test_edge_identities(patterns: tuple[str, ...], identity: str) -> None:
    assert IdentityMatcher(patterns).matches(identity) is _reference(patterns, identity)
