"""A credential written in text as an HTTP header or an auth scheme went out whole:
``"retrying with Authorization: Bearer eyJ..."`` (a header line quoted in a message),
``"authorization=Basic dXNlcjpwYXNz"`` (the ``key=value`` rule took the scheme word for
the value and left the credential after it), ``"x-api-key: k-123"``, or a bare
``Bearer <token>``.

Now, in every string field, a credential-named key followed by ``:`` takes its value
as one followed by ``=`` does; a value that is an auth scheme (``Bearer``, ``Basic``,
``Digest``, ``Token``, ``Negotiate``...) is redacted with the credential after it; and
``Bearer`` followed by a token of 8 or more characters (RFC 6750's b64token) is
redacted wherever it stands ("missing bearer token" is no credential)."""

from __future__ import annotations

import time

import pytest

from meshkit.observability import redact_secrets

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "header-line": ("retrying with Authorization: Bearer eyJhbGciOi.abc.def now",
                    "retrying with Authorization: [REDACTED] now"),
    "pair-with-scheme": ("authorization=Basic dXNlcjpwYXNz next",
                         "authorization=[REDACTED] next"),
    "api-key-header": ("x-api-key: k-12345 sent", "x-api-key: [REDACTED] sent"),
    "bare-bearer": ("sent Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig to h",
                    "sent Bearer [REDACTED] to h"),
    "token-colon": ("token:abc123", "token:[REDACTED]"),
    # not credentials: as they are
    "prose": ("missing bearer token; basic auth off", "missing bearer token; basic auth off"),
    "times": ("at time: 12:30 error: timeout", "at time: 12:30 error: timeout"),
    "url": ("see https://h/x?a=1 and redis://h:6379", "see https://h/x?a=1 and redis://h:6379"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_header_style_credentials_are_redacted(case: str) -> None:
    value, shown = _CASES[case]
    out = redact_secrets(None, "info", {"event": value, "v": value, "b": value.encode(),
                                        "l": [value]})
    assert out["event"] == shown
    assert out["v"] == shown
    assert out["b"] == shown.encode()
    assert out["l"] == [shown]


_N = 50_000
_SHAPES = {
    "many-bearers": "bearer " * (_N // 7),
    "bearer-spaces": "bearer" + " " * _N,
    "many-colons": "a:" * (_N // 2),
    "schemes": "authorization: basic " * (_N // 21),
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    value = _SHAPES[shape]
    start = time.perf_counter()
    redact_secrets(None, "info", {"event": "e", "v": value, "b": value.encode()})
    assert time.perf_counter() - start < 1.0
