"""Review of ca7a83bb (a dict's repr or a JSON object quoted in text redacted): a JSON
object quoted inside JSON text (an HTTP body that carries JSON as a string, a message
``json.dumps``-ing a document that holds one: ``{"body": "{\\"password\\": \\"x\\"}"}``)
kept every credential: after the key came ``\\"``, no quote, so no pair was read; and a
libpq string quoted in JSON (``password=\\"a b\\"``) lost only ``\\"a``, ``b\\"`` kept.

Now a key closed by ``\\"`` is a quoted key, and a value opened by ``\\"`` runs to its
``\\"`` (the inner string's own escapes, ``\\\\\\"``, read as such), the escaped quotes
kept; linear all the same."""

from __future__ import annotations

import json

import pytest

from meshkit._log import redact_text
from meshkit.observability import redact_secrets
from tests.support.redaction import N, assert_linear

pytestmark = pytest.mark.timeout(60)


def _nested(inner: dict[str, object]) -> str:
    return json.dumps({"body": json.dumps(inner)})


@pytest.mark.parametrize(("text", "want"), [
    (_nested({"password": "hunter2"}), _nested({"password": "[REDACTED]"})),
    (_nested({"user": "u", "token": 'a"b c', "n": 1}),
     _nested({"user": "u", "token": "[REDACTED]", "n": 1})),
    (_nested({"Authorization": "Bearer abcdefghijkl"}),
     _nested({"Authorization": "[REDACTED]"})),
    (_nested({"api_key": "k\\ey", "x": "y"}), _nested({"api_key": "[REDACTED]", "x": "y"})),
    ('{"v": "{\\"token\\": 12345}"}', '{"v": "{\\"token\\": [REDACTED]}"}'),
    (json.dumps({"dsn": 'host=db password="a b" dbname=x'}),
     json.dumps({"dsn": "host=db password=[REDACTED] dbname=x"})),
], ids=["password", "escaped-quote-inside", "authorization", "backslash-inside",
        "bare-number", "libpq-in-json"])
def test_json_quoted_in_json(text: str, want: str) -> None:
    """A credential of JSON quoted in JSON is redacted, the outer JSON still JSON."""
    out = redact_text(text)
    assert out == want
    json.loads(out)


def test_in_a_field_and_in_bytes() -> None:
    """redact_secrets reads it in a string field and in bytes alike."""
    text = _nested({"password": "hunter2"})
    out = redact_secrets(None, "info", {"event": "e", "v": text, "b": text.encode()})
    assert "hunter2" not in out["v"]
    assert b"hunter2" not in out["b"]


@pytest.mark.parametrize(("text", "want"), [
    ('{"a": "{\\"user\\": \\"u\\"}"}', '{"a": "{\\"user\\": \\"u\\"}"}'),
    ('say \\"hello\\" to the token', 'say \\"hello\\" to the token'),
], ids=["no-credential", "prose"])
def test_other_text_as_it_is(text: str, want: str) -> None:
    """Escaped quotes with no credential-named key before them are left as they are."""
    assert redact_text(text) == want


_SHAPES = {
    "many-openers": ('\\"token\\": \\"' * (N // 13 + 1))[:N],
    "many-openers-no-blank": ('\\"token\\":\\"' * (N // 12 + 1))[:N],
    "escapes": '\\"token\\": \\"' + "\\\\\\\"" * (N // 4),
    "backslashes": '\\"token\\": \\"' + "\\" * N,
    "unquoted-keys": ('token=\\"' * (N // 8 + 1))[:N],
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """100 KB of escaped-quote shapes take well under a CPU second, as text and bytes."""
    assert_linear(_SHAPES[shape], text=True)
