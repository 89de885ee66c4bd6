"""An exception whose class is named like a credential (``PasswordError: wrong
shape``, pyjwt's ``InvalidTokenError: ...``) had the first word of its message redacted
in every log line and traceback: the class name followed by ``:`` read as a
``key: value`` pair (``PasswordError: [REDACTED] shape``).

Now a ``Name: ...`` whose name is a class name ending in ``Error``, ``Exception`` or
``Warning`` (dotted or not: ``jwt.exceptions.InvalidTokenError``) is no key; the
credentials in its message are still redacted, and so are real keys (``password:``,
``token_error:``, ``TokenError=``, a quoted ``'TokenError':``)."""

from __future__ import annotations

import pytest

from meshkit._log import redact_text
from tests.support.redaction import assert_redacted_in_fields

pytestmark = pytest.mark.timeout(60)

_KEPT = {
    "password-error": "PasswordError: wrong shape",
    "invalid-token": "InvalidTokenError: bad thing here",
    "dotted": "jwt.exceptions.InvalidTokenError: Signature verification failed",
    "exception": "AuthException: no provider",
    "warning": "CredentialWarning: rotate soon",
    "in-a-line": "call failed: meshkit.errors.TokenError: audience mismatch",
    "traceback": ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                  "SecretError: vault sealed\n"),
}


@pytest.mark.parametrize("case", list(_KEPT), ids=list(_KEPT))
def test_an_exception_class_name_is_no_key(case: str) -> None:
    """A credential-named exception class before ``:`` leaves its message as it is."""
    value = _KEPT[case]
    assert_redacted_in_fields(value, value)


_REDACTED = {
    "message-credential": ("InvalidTokenError: token=abc rest",
                           "InvalidTokenError: token=[REDACTED] rest"),
    "plain-key": ("password: hunter2 rest", "password: [REDACTED] rest"),
    "snake-key": ("token_error: abc rest", "token_error: [REDACTED] rest"),
    "equals": ("TokenError=abc rest", "TokenError=[REDACTED] rest"),
    "quoted-key": ("{'TokenError': 'abc'}", "{'TokenError': '[REDACTED]'}"),
}


@pytest.mark.parametrize("case", list(_REDACTED), ids=list(_REDACTED))
def test_real_keys_are_still_redacted(case: str) -> None:
    """Credentials in the message and keys that are no class name are still redacted."""
    value, shown = _REDACTED[case]
    assert redact_text(value) == shown
