"""Review of 181d203a (a PEM private key's body redacted wherever it stands): the body took
a line break raw or as one repr writes it (``\\n``), not as a repr of text that held
``\\n`` already: an exception quoting a JSON document (``json.dumps`` writes a key's line
breaks ``\\n``; the exception's repr, which the renderers write for ``error=e``, doubles
the backslash) stopped the body at once, so the whole key, BEGIN line to END line, went
to the log.

Now a line break escaped any number of times (a run of backslashes then ``n`` or ``r``)
is part of the body; linear all the same."""

from __future__ import annotations

import json

import pytest

from meshkit._log import redact_text
from meshkit.observability import redact_secrets
from tests.support.redaction import assert_linear

pytestmark = pytest.mark.timeout(60)

_BODY = ("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "BKcwggSjAgEAAoIBAQC7xyz")
_PEM = ("-----BEGIN PRIVATE KEY-----\n" + "\n".join(_BODY)
        + "\n-----END PRIVATE KEY-----\n")


def test_an_exception_quoting_json_with_a_key() -> None:
    """``error=ValueError(json.dumps({'pem': key}))``: the key's body is redacted, its
    BEGIN and END lines kept."""
    out = redact_secrets(None, "error", {"event": "e",
                                         "error": ValueError(json.dumps({"pem": _PEM}))})
    text = out["error"]
    assert isinstance(text, str)
    assert not any(part in text for part in _BODY), text
    assert "-----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY-----" in text


@pytest.mark.parametrize("times", [1, 2, 3], ids=["once", "twice", "three-times"])
def test_escaped_line_breaks(times: int) -> None:
    """A key's text escaped once, twice, three times as JSON: its body is redacted."""
    text = _PEM
    for _ in range(times):
        text = json.dumps(text)
    out = redact_text(text)
    assert not any(part in out for part in _BODY), out


def test_a_backslash_ends_the_body_when_no_line_break_follows() -> None:
    """A run of backslashes not before ``n`` or ``r`` ends the body, as any character no
    base64 line has."""
    assert redact_text("-----BEGIN PRIVATE KEY-----\\\\\\x rest") == (
        "-----BEGIN PRIVATE KEY-----\\\\\\x rest")


def test_linear_in_the_length() -> None:
    """100 KB of backslash runs in a key's body (or of BEGIN lines) take well under a CPU
    second."""
    values = ["-----BEGIN PRIVATE KEY-----" + "\\" * 100_000,
              "-----BEGIN PRIVATE KEY-----" + "\\\\\\n\\\\x" * 15_000,
              "-----BEGIN PRIVATE KEY-----\\\\" * 3_500]
    assert_linear(*values)
