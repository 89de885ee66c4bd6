"""A PEM private key in log text went out whole but its first word: an error quoting a
bad config (``private_key=-----BEGIN PRIVATE KEY-----\\nMIIE...``) had ``-----BEGIN``
redacted as the pair's value and the key's body kept; a PEM block with no credential-
named key before it (a message quoting a file's content) kept everything.

Now a ``-----BEGIN ... PRIVATE KEY-----`` block's body (its base64 lines, up to its END
line, or up to the first character that is no base64 when it has none) is
``[REDACTED]`` wherever it stands, the BEGIN and END lines kept; certificates and public
keys as they are; linear in the length."""

from __future__ import annotations

import pytest

from meshkit._log import redact_text
from meshkit.observability import redact_secrets
from tests.support.redaction import N, assert_linear, assert_redacted_in_fields

pytestmark = pytest.mark.timeout(60)

_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
_PEM = f"-----BEGIN PRIVATE KEY-----\n{_BODY}-----END PRIVATE KEY-----"
_SHOWN = "-----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY-----"
_CASES = {
    "bare": (f"bad key: {_PEM} rest", f"bad key: {_SHOWN} rest"),
    "after-key": (f"private_key={_PEM}\nnext line", f"private_key={_SHOWN}\nnext line"),
    "rsa-ec": ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----",
               "-----BEGIN EC PRIVATE KEY-----[REDACTED]-----END EC PRIVATE KEY-----"),
    "escaped-newlines": ("{'key': '-----BEGIN RSA PRIVATE KEY-----\\nMIIEow\\n-----END RSA "
                         "PRIVATE KEY-----'}",
                         "{'key': '-----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA "
                         "PRIVATE KEY-----'}"),
    "encrypted-headers": ("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
                          "DEK-Info: AES-128-CBC,0F1E\n\nMIIEow\n-----END RSA PRIVATE KEY-----",
                          "-----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA PRIVATE "
                          "KEY-----"),
    "truncated": ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN", "-----BEGIN PRIVATE KEY-----"
                  "[REDACTED]"),
    # not secrets: as they are
    "certificate": ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
    "public-key": ("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
                   "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_a_private_key_block_is_redacted(case: str) -> None:
    """A PEM private key's body is redacted in every string field."""
    value, shown = _CASES[case]
    assert redact_text(value) == shown
    assert_redacted_in_fields(value, shown, in_list=True)


def test_an_exception_quoting_a_key_is_redacted() -> None:
    """An exception field whose message holds a PEM private key is redacted."""
    out = redact_secrets(None, "info", {"event": "e", "error": ValueError(_PEM)})
    assert "MIIEvQ" not in str(out["error"])


_SHAPES = {
    "many-begins": "-----BEGIN PRIVATE KEY-----" * (N // 27),
    "long-body": "-----BEGIN PRIVATE KEY-----" + "A" * N,
    "dashes": "-" * N + "BEGIN PRIVATE KEY",
    "body-dashes": "-----BEGIN PRIVATE KEY-----" + "-" * N,
    "many-keys-dashes": "-----BEGIN PRIVATE KEY----- a-b:c," * (N // 36),
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    """A 100 KB adversarial string is redacted well under a CPU
    second (process_time: a loaded box's waiting not counted)."""
    assert_linear(_SHAPES[shape])
