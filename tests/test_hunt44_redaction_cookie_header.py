"""A ``Cookie`` header quoted in log text kept every cookie but its first: ``Cookie: a=1;
session=xyz`` -> ``Cookie: [REDACTED]; session=xyz`` (the bare value ends at ``;``, and
``session`` is no credential name), yet every cookie a client sends may be a session.

Now a ``Cookie`` pair's value runs over the whole cookie-string (RFC 6265 §4.2.1:
``name=value`` pairs joined by ``;`` and a blank): ``Cookie: [REDACTED]``; a
``Set-Cookie`` keeps its attributes (``Path=/``), as before; linear in the length."""

from __future__ import annotations

import pytest

from meshkit._log import redact_text
from tests.support.redaction import assert_linear

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "header": ("Cookie: a=1; session=xyz; csrftoken=abc", "Cookie: [REDACTED]"),
    "then-text": ("Cookie: a=1; session=xyz rest", "Cookie: [REDACTED] rest"),
    "lower": ("cookie: sid=abc;theme=dark\nnext", "cookie: [REDACTED]\nnext"),
    "one": ("Cookie: sid=abc", "Cookie: [REDACTED]"),
    "set-cookie": ("set-cookie: sid=abc; Path=/; HttpOnly",
                   "set-cookie: [REDACTED]; Path=/; HttpOnly"),
    "query": ("https://h/x?cookie=abc&y=1", "https://h/x?cookie=[REDACTED]&y=1"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_a_cookie_header_is_redacted_whole(case: str) -> None:
    """Every cookie of a Cookie header in text is redacted."""
    value, shown = _CASES[case]
    assert redact_text(value) == shown


def test_linear_in_the_length() -> None:
    """A 100 KB cookie-string is redacted well under a CPU
    second (process_time: a loaded box's waiting not counted)."""
    assert_linear("Cookie: a=1" + "; a=1" * 20_000, "Cookie: a=1" + ";a" * 50_000,
                  "cookie: a " * 10_000, text=True, fields=False)
