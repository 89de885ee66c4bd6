"""A credential in a dict's repr or a JSON object quoted in log text went out whole:
``{'password': 'x'}``, ``{"token": "abc"}``, ``{'Authorization': 'Basic abc'}`` in a
message or an exception's text. The pair redaction read ``key=value`` and ``key: value``
with a bare key only; a quoted key (``'password':``) was no key to it.

Now a quoted credential-named key's value is ``[REDACTED]`` too, its quotes kept (the
repr or JSON stays well-formed), a quoted value with blanks whole, a bare value up to
the ``,``/``}``/``]`` that ends it; other keys as they are; still linear in the length."""

from __future__ import annotations

import json

import pytest

from meshkit._log import redact_text
from meshkit.observability import redact_secrets
from tests.support.redaction import N, assert_linear, assert_redacted_in_fields

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "repr-single": ("{'password': 'x'}", "{'password': '[REDACTED]'}"),
    "json-double": ('{"token": "abc"}', '{"token": "[REDACTED]"}'),
    "json-compact": ('{"password":"p","a":1}', '{"password":"[REDACTED]","a":1}'),
    "repr-auth-basic": ("{'Authorization': 'Basic abc'}", "{'Authorization': '[REDACTED]'}"),
    "repr-bearer-blank": ("{'Authorization': 'Bearer a b'}",
                          "{'Authorization': '[REDACTED]'}"),
    "repr-value-blanks": ("config {'user': 'u', 'password': 'p w', 'x': 1}",
                          "config {'user': 'u', 'password': '[REDACTED]', 'x': 1}"),
    "repr-bytes": ("{b'authorization': b'xy z'}", "{b'authorization': b'[REDACTED]'}"),
    "json-number": ('{"pin_password": 1234, "a": 1}', '{"pin_password": [REDACTED], "a": 1}'),
    "json-number-compact": ('{"password":1234}', '{"password":[REDACTED]}'),
    "repr-escaped-quote": (r"{'password': 'it\'s x', 'a': 1}",
                           "{'password': '[REDACTED]', 'a': 1}"),
    "in-exception-text": ("ValueError: bad config {'api_key': 'k-1', 'host': 'h'}",
                          "ValueError: bad config {'api_key': '[REDACTED]', 'host': 'h'}"),
    # not credentials, or masked already: as they are
    "plain-keys": ("{'user': 'u', 'host': 'h:1'}", "{'user': 'u', 'host': 'h:1'}"),
    "masked": ("{'password': '[REDACTED]'}", "{'password': '[REDACTED]'}"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_quoted_credential_keys_are_redacted(case: str) -> None:
    """A credential-named quoted key's value is redacted in every string field."""
    value, shown = _CASES[case]
    assert_redacted_in_fields(value, shown, in_list=True)


def test_json_text_stays_json() -> None:
    """A JSON object's text stays JSON after its credentials are redacted."""
    text = json.dumps({"user": "u", "client_secret": "s e c", "refresh_token": "r",
                       "n": 1})
    assert json.loads(redact_text(text)) == {"user": "u", "client_secret": "[REDACTED]",
                                             "refresh_token": "[REDACTED]", "n": 1}


def test_exception_field_with_a_dict_is_redacted() -> None:
    """An exception logged as a field, its message a dict's repr, is redacted."""
    err = ValueError({"password": "hunter2 x"})
    out = redact_secrets(None, "info", {"event": "e", "error": err})
    assert "hunter2" not in str(out["error"])
    assert " x" not in str(out["error"])


_SHAPES = {
    "quoted-keys": "'password': " * (N // 12),
    "unclosed-values": "'password': '" * (N // 13),
    "double-unclosed": '"token":"' * (N // 9),
    "bytes-prefix": "'token': b" * (N // 10),
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """A 100 KB adversarial string is redacted well under a CPU
    second (process_time: a loaded box's waiting not counted)."""
    assert_linear(_SHAPES[shape])
