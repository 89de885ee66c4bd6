"""Review of a0635cb7 (a ``(key, value)`` pair's repr redacted in text): the pair pass read a
credential-named key's value with the ``key=value`` reader, where ``{`` opens an ODBC
braced value read to its ``}`` (or, none after it, to the next whitespace). A pair's value
is a string's or bytes' repr, or a bare one, and its ``{`` scan never ends a pair, yet
every ``('token', {`` read on from there: 100 KB of ``('token',{`` took 2 s of CPU, with
one ``}`` at its end 5 s (quadratic: minutes for a megabyte in one log field).

Now an opener inside the last scan of its kind is closed where that scan was (or not
either): no character is scanned twice; and a pair's value opened and not closed is read
no further (it ends no pair): linear. Timed in CPU seconds (``process_time``), so
a loaded box's waiting does not count."""

from __future__ import annotations

import pytest

from meshkit._log import redact_text
from tests.support.redaction import N, assert_linear

pytestmark = pytest.mark.timeout(120)

_SHAPES = {
    "brace-never-closed": ("('token',{" * (N // 10 + 1))[:N],
    "brace-closed-at-the-end": ("('token',{" * (N // 10 + 1))[:N] + "}",
    "brace-blank-closed-at-the-end": ("('password', {" * (N // 14 + 1))[:N] + "}",
    "unclosed-double-quote-after-single-keys": ("('token','x'," * 3) + (
        "('token',\"" + "a(" * 20) * (N // 50),
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """100 KB of pair reprs opening a brace (or a quote) for a credential's value take well
    under a CPU second, as text and as bytes."""
    assert_linear(_SHAPES[shape], text=True)


@pytest.mark.parametrize(("text", "want"), [
    ("[('x-api-key', 'k-1')]", "[('x-api-key', '[REDACTED]')]"),
    ("(('cookie', b'sid=abc'),)", "(('cookie', b'[REDACTED]'),)"),
    ("('token', 12345)", "('token', [REDACTED])"),
    # a braced value (a dict's repr) whole, as any value of a credential-named key
    ("('auth', {'user': 'u', 'k': 'v'})", "('auth', [REDACTED])"),
    # a quote not closed ends no pair
    ("('token', 'abc", "('token', 'abc"),
], ids=["str", "bytes", "bare", "dict-inside", "unclosed"])
def test_pairs_as_before(text: str, want: str) -> None:
    """A pair's quoted, braced or bare value is redacted as before."""
    assert redact_text(text) == want
