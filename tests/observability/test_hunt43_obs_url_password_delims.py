"""A URL password holding an unencoded ``/``, ``?`` or ``#`` reached the log whole.

The log redaction (:func:`meshkit.observability.redact_secrets`) took a URL's user info
to be what stands between ``scheme://`` and an ``@`` before the first ``/``, ``?`` or
``#`` (RFC 3986 §3.2.1). A password pasted unencoded (``postgresql://u:pa/ss@h/db``,
``redis://:p?w#d@host:6379``: generated and base64 passwords hold such characters, and
users paste DSNs as they are) ends that "authority" early, so no ``@`` was found and the
whole password went to the log.

The rule now: after ``scheme://``, when the text up to the first ``/``, ``?`` or ``#``
has the shape ``user:password`` (a ``:`` not followed by a port's digits alone, the host
not a bracketed IP literal), the user info runs on to the next ``@`` (before any
whitespace), ``/``, ``?`` and ``#`` included. An ``@`` in a path after a host (with or
without a port) is left alone, and the time stays linear in the field's length.
"""

from __future__ import annotations

import time

import pytest

from meshkit.observability import redact_secrets

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "pg-slash": ("postgresql://u:pa/ss@h/db", "postgresql://[REDACTED]@h/db"),
    "redis-qmark-hash": ("redis://:p?w#d@host:6379", "redis://[REDACTED]@host:6379"),
    "in-text": ("connect to mysql://app:a/b?c#d@db:3306/x failed",
                "connect to mysql://[REDACTED]@db:3306/x failed"),
    "slash-first": ("amqp://u:/secret@rabbit/", "amqp://[REDACTED]@rabbit/"),
    "two-urls": ("a=redis://:x/y@r1:6379 b=redis://:z#w@r2:6379",
                 "a=redis://[REDACTED]@r1:6379 b=redis://[REDACTED]@r2:6379"),
    "path-after-at": ("postgresql://u:pa/ss@h/db/@x", "postgresql://[REDACTED]@h/db/@x"),
    # not credentials: left as they are
    "at-in-path": ("https://medium.com/@user", "https://medium.com/@user"),
    "port-then-at-in-path": ("https://h:8443/@scope/pkg", "https://h:8443/@scope/pkg"),
    "ipv6-at-in-path": ("http://[::1]/a@b", "http://[::1]/a@b"),
    "ipv6-port-at-in-path": ("http://[fe80::1]:80/a@b", "http://[fe80::1]:80/a@b"),
    "multi-host-at-in-query": ("mongodb://h1:27017,h2:27017/db?app=a@b",
                               "mongodb://h1:27017,h2:27017/db?app=a@b"),
    "multi-host-pg": ("postgresql://h1,h2:5432/db?x=@y", "postgresql://h1,h2:5432/db?x=@y"),
    "no-at-before-space": ("http://u:p/x and y@z", "http://u:p/x and y@z"),
    "well-formed": ("mysql://u:p@h/db", "mysql://[REDACTED]@h/db"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_a_password_with_unencoded_delimiters_is_redacted(case: str) -> None:
    value, shown = _CASES[case]
    out = redact_secrets(None, "info", {"event": value, "dsn": value,
                                        "b": value.encode(), "l": [value]})
    assert out["event"] == shown
    assert out["dsn"] == shown
    assert out["b"] == shown.encode()
    assert out["l"] == [shown]


def test_the_same_object_when_nothing_is_redacted() -> None:
    value = "https://medium.com/@user"
    assert redact_secrets(None, "info", {"event": "e", "v": value})["v"] is value


_N = 50_000
_SHAPES = {
    "many-password-shapes": "a://u:x/" * (_N // 8) + " @",
    "one-long-password": "a://u:" + "/" * _N + " @",
    "colon-runs": "a://" + ":" * _N + "/ @",
    "bytes-like": "x://u:p?" + "#" * _N + " x@",
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_still_linear_in_the_length(shape: str) -> None:
    value = _SHAPES[shape]
    start = time.perf_counter()
    redact_secrets(None, "info", {"event": "e", "v": value, "b": value.encode()})
    assert time.perf_counter() - start < 1.0
