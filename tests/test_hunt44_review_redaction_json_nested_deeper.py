"""Review of b16e1d8e (JSON quoted in JSON redacted): one level of quoting only. JSON
quoted in JSON quoted in JSON (a log field holding ``json.dumps`` of an HTTP exchange
whose body is a JSON string: ``{"req": "{\\"body\\": \\"{\\\\\\"token\\\\\\": ...}\\"}"}``)
writes the innermost keys' quotes as ``\\\\\\"`` (three backslashes), so no pair was read
and the credential reached the log, as before b16e1d8e at one level.

Now a key closed by 2**k - 1 backslashes and a quote (k = 1..4: JSON quoted up to four
times) is a quoted key, and its value opened so runs to its own quote (the deeper
levels' escapes read as such), the escaped quotes kept; linear all the same."""

from __future__ import annotations

import json

import pytest

from meshkit._log import redact_text
from meshkit.observability import redact_secrets
from tests.support.redaction import N, assert_linear

pytestmark = pytest.mark.timeout(60)


def _quoted(inner: object, times: int) -> str:
    text = json.dumps(inner)
    for _ in range(times):
        text = json.dumps({"body": text})
    return text


_CASES = {
    "two-levels": ({"token": "deep secret"}, {"token": "[REDACTED]"}, 2),
    "three-levels": ({"password": "p w", "user": "u"},
                     {"password": "[REDACTED]", "user": "u"}, 3),
    "escapes-inside": ({"api_key": 'a"b\\c\nd', "x": "y"},
                       {"api_key": "[REDACTED]", "x": "y"}, 2),
    "backslash-last": ({"token": "ab\\", "x": "y"}, {"token": "[REDACTED]", "x": "y"}, 2),
    "bare-number": ({"password": 12345, "n": 1}, {"password": "[REDACTED]", "n": 1}, 2),
    "one-level-unchanged": ({"token": "a b", "x": "y"}, {"token": "[REDACTED]", "x": "y"}, 1),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_json_quoted_more_than_once(case: str) -> None:
    """A credential of JSON quoted twice or three times in JSON is redacted, every
    level still JSON."""
    inner, want, times = _CASES[case]
    out = redact_text(_quoted(inner, times))
    if case == "bare-number":  # a bare value becomes the mask, unquoted
        assert "12345" not in out
        return
    assert out == _quoted(want, times)
    for _ in range(times):
        out = json.loads(out)["body"]
    assert json.loads(out) == want


def test_in_a_field() -> None:
    """redact_secrets reads it in a string field and in bytes alike."""
    text = _quoted({"token": "deep secret"}, 2)
    out = redact_secrets(None, "info", {"event": "e", "v": text, "b": text.encode()})
    assert "deep secret" not in out["v"]
    assert b"deep secret" not in out["b"]


def test_other_text_as_it_is() -> None:
    """No credential-named key: left as it is."""
    text = _quoted({"user": "u", "note": 'say "hi"'}, 3)
    assert redact_text(text) == text


_SHAPES = {
    "many-openers": ('\\\\\\"token\\\\\\": \\\\\\"' * (N // 17 + 1))[:N],
    "deeper-quotes": '\\\\\\"token\\\\\\": \\\\\\"' + '\\\\\\\\\\\\\\"' * (N // 8),
    "backslashes": '\\\\\\"token\\\\\\": \\\\\\"' + "\\" * N,
    "mixed-levels": ('\\"token\\": \\\\\\"x \\\\\\"token\\\\\\": \\"' * (N // 30 + 1))[:N],
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """100 KB of deeper escaped-quote shapes take well under a CPU second (CPU time:
    a quadratic shape takes seconds)."""
    assert_linear(_SHAPES[shape], text=True)
