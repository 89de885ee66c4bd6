"""A credential's quoted value with no closing quote (``password='abc rest of line``, a
message cut short, an apostrophe) took the whole rest of the text with it: every field
after it, the rest of the line, the rest of a traceback, became ``[REDACTED]``.

Now a quote (``'``, ``"``) or ODBC brace that is not closed anywhere after it ends at
the first whitespace, as a bare value does: ``password='abc rest`` ->
``password=[REDACTED] rest``; a closed quoted value is still redacted whole, blanks
included (``password='a b'``, ``password="a b"``, ``{'token': 'a b'}``), and the time
stays linear in the length."""

from __future__ import annotations

import pytest

from tests.support.redaction import N, assert_linear, assert_redacted_in_fields

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "single": ("password='abc rest of line", "password=[REDACTED] rest of line"),
    "double": ('password="abc rest of line', "password=[REDACTED] rest of line"),
    "brace": ("Pwd={abc Database=x", "Pwd=[REDACTED] Database=x"),
    "repr-key": ("{'token': 'abc rest", "{'token': [REDACTED] rest"),
    "then-another": ("password='abc user=u token=t x",
                     "password=[REDACTED] user=u token=[REDACTED] x"),
    "header": ("Authorization: 'Bearer abc rest", "Authorization: [REDACTED] rest"),
    # closed: whole, blanks included (no regression)
    "closed-single": ("password='a b' rest", "password=[REDACTED] rest"),
    "closed-double": ('password="a b" rest', "password=[REDACTED] rest"),
    "closed-escaped": (r"password='a \' b' rest", "password=[REDACTED] rest"),
    "closed-brace": ("PWD={a;b}}c} rest", "PWD=[REDACTED] rest"),
    "closed-repr": ("{'token': 'a b'} rest", "{'token': '[REDACTED]'} rest"),
    "closed-after-unclosed": ("password='abc x=1 secret=\"p q\" y",
                              "password=[REDACTED] x=1 secret=[REDACTED] y"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_an_unclosed_quote_ends_at_whitespace(case: str) -> None:
    """An unclosed quoted credential value ends at whitespace; a closed one is whole."""
    value, shown = _CASES[case]
    assert_redacted_in_fields(value, shown)


_SHAPES = {
    "pairs-of-quotes": "password='a " * (N // 12),
    "one-quote-then-keys": "password='a" + " password=a" * (N // 11),
    "double-unclosed": 'password="a ' * (N // 12),
    "brace-unclosed": "pwd={a " * (N // 7),
    "repr-unclosed": "'secret': 'a " * (N // 13),
    "escapes": "password='\\' " * (N // 13),
    "many-quotes": "password='" * (N // 10),
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """A 100 KB adversarial string is redacted well under a CPU
    second (process_time: a loaded box's waiting not counted)."""
    assert_linear(_SHAPES[shape])
