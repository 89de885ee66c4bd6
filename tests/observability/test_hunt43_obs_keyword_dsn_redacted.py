"""A password written as ``key=value`` in a log field went out whole: a libpq keyword DSN
(``dsn="host=db user=app password=s3cret dbname=x"``, what psycopg takes), an ODBC
connection string (``Server=db;Uid=app;Pwd=s3cret;``) or a URL's query
(``redis://cache:6379/0?password=s3cret``). The redaction read credential-like field
*names* and a URL's user info, not ``key=value`` pairs inside a string.

Now in every string field (the event's text too, and one level deep, as URL user info)
the value after a credential-named key (:func:`is_sensitive_key`, and ODBC's ``pwd``)
and ``=`` is ``[REDACTED]``: up to whitespace, ``&`` or ``;``, or a whole quoted value
(libpq's ``'...'`` with ``\\'`` escapes, ODBC's ``{...}``); other keys are left alone,
in time linear in the field's length."""

from __future__ import annotations

import time

import pytest

from meshkit.observability import redact_secrets

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "libpq": ("host=db user=app password=s3cret dbname=x",
              "host=db user=app password=[REDACTED] dbname=x"),
    "libpq-quoted": (r"host=db password = 's3 cr\'et' dbname=x",
                     "host=db password = [REDACTED] dbname=x"),
    "libpq-equals-in-value": ("password=ab=cd== port=5432",
                              "password=[REDACTED] port=5432"),
    "odbc": ("Server=db;Uid=app;Pwd=s3cret;Database=x",
             "Server=db;Uid=app;Pwd=[REDACTED];Database=x"),
    "odbc-braced": ("Server=db;PWD={s3;cr}}et};Database=x",
                    "Server=db;PWD=[REDACTED];Database=x"),
    "url-query": ("redis://cache:6379/0?db=1&password=s3cret&x=2",
                  "redis://cache:6379/0?db=1&password=[REDACTED]&x=2"),
    "token-in-text": ("callback failed: access_token=abc.def.ghi expired",
                      "callback failed: access_token=[REDACTED] expired"),
    "after-another-key": ("a=password=s3cret", "a=password=[REDACTED]"),
    "unterminated-quote": ("password='s3cret dbname=x", "password=[REDACTED] dbname=x"),
    # not credentials: as they are
    "plain-keys": ("host=db user=app dbname=x port=5432", "host=db user=app dbname=x port=5432"),
    "inside-a-word": ("monkey=banana keyboard=qwerty author=me",
                      "monkey=banana keyboard=qwerty author=me"),
    "no-value-key": ("2+2=4, a==b", "2+2=4, a==b"),
    "masked-already": ("redis://h/0?password=***&token=[REDACTED]",
                       "redis://h/0?password=***&token=[REDACTED]"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_credential_pairs_in_text_are_redacted(case: str) -> None:
    value, shown = _CASES[case]
    out = redact_secrets(None, "info", {"event": value, "dsn": value, "b": value.encode(),
                                        "l": [value], "d": {"x": value}})
    assert out["event"] == shown
    assert out["dsn"] == shown
    assert out["b"] == shown.encode()
    assert out["l"] == [shown]
    assert out["d"] == {"x": shown}


def test_the_same_object_when_nothing_is_redacted() -> None:
    value = "host=db user=app"
    assert redact_secrets(None, "info", {"event": "e", "v": value})["v"] is value


_N = 50_000
_SHAPES = {
    "many-keys": "a=" * (_N // 2),
    "long-key-no-equals": "a" * _N + " =",
    "spaces": ("a" + " " * 50) * (_N // 50) + "=",
    "many-quotes": "password='" * (_N // 10),
    "many-escapes": "password='" + "\\'" * (_N // 2),
}


@pytest.mark.parametrize("shape", list(_SHAPES), ids=list(_SHAPES))
def test_linear_in_the_length(shape: str) -> None:
    value = _SHAPES[shape]
    start = time.perf_counter()
    redact_secrets(None, "info", {"event": "e", "v": value, "b": value.encode()})
    assert time.perf_counter() - start < 1.0
