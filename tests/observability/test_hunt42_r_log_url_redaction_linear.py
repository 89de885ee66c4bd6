"""The URL user-info redaction of log fields (6201c58d) takes time linear in the field's
length, and covers ``bytes`` fields too.

Its regex (``[A-Za-z][A-Za-z0-9+.-]*://`` then the user info) was tried at every letter
of a long run of scheme characters, each try scanning the run to its end for ``://``:
quadratic. A string holding an ``@`` and a ``://`` anywhere (a remote caller's text
quoted in a field, a long token or base64 blob next to a URL) took ~1 s at 40,000
characters, ~2.4 s with dots, on the logging thread (the event loop's, for meshkit's
own lines), per line. A ``bytes`` field (``dsn=b"postgresql://app:pw@db"``, rendered
as its ``repr``) kept its password."""

from __future__ import annotations

import random
import re
import time

import pytest

from meshkit.observability import redact_secrets

pytestmark = pytest.mark.timeout(60)

_N = 50_000
# linear: a few ms each; quadratic (before): 1.5-4 s each at this length
_SHAPES = {
    "letters": "://@" + "a" * _N,
    "scheme-no-at": "@" + "a://" + "b" * _N,
    "dotted": "://@" + "a." * (_N // 2),
    "digits-letter": "@://" + "1" * _N + "a",
    "many-schemes": "@" + "a://" * (_N // 4),
    "many-at": "x://" + "@" * _N,
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_redaction_is_linear_in_the_length(shape: str) -> None:
    value = _SHAPES[shape]
    start = time.perf_counter()
    redact_secrets(None, "info", {"event": "e", "v": value})
    assert time.perf_counter() - start < 0.5


# the pattern 6201c58d shipped: the semantics to keep (tried on short strings only)
_BEFORE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@\s]*@")


def test_the_same_text_as_the_quadratic_pattern_gave() -> None:
    rng = random.Random(4242)
    alphabet = "ab1+.-:/@?# x"
    for _ in range(20_000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        if "@" in value and "://" in value:
            expected = _BEFORE.sub(r"\g<1>[REDACTED]@", value)
        else:
            expected = value
        assert redact_secrets(None, "info", {"event": "e", "v": value})["v"] == expected, value


def test_a_bytes_field_has_its_url_user_info_redacted() -> None:
    out = redact_secrets(None, "info", {"event": "e", "dsn": b"postgresql://app:pw@db/x",
                                        "blob": b"\xff@://"})
    assert out["dsn"] == b"postgresql://[REDACTED]@db/x"
    assert out["blob"] == b"\xff@://"
