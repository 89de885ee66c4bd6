"""A ``bytearray`` log field gets the redaction a ``bytes`` one gets.

structlog's renderers write a ``bytearray`` as its ``repr``
(``bytearray(b'postgresql://app:pw@db/x')``), the text whole; redact_secrets read
``str`` and ``bytes`` only (a field, a dict's value, a list's item), so the password in a
buffer logged as it was read (a driver's raw reply, a socket buffer) reached the log.
Now a ``bytearray`` is redacted as ``bytes`` is and stays a ``bytearray``.
"""

from __future__ import annotations

import pytest

from meshkit.observability import redact_secrets

pytestmark = pytest.mark.timeout(60)

_CASES = {
    "url": (b"dsn postgresql://app:pw@db/x", b"dsn postgresql://[REDACTED]@db/x"),
    "pair": (b"host=db password=s3cret", b"host=db password=[REDACTED]"),
    "bearer": (b"Authorization: Bearer abcdefgh12", b"Authorization: [REDACTED]"),
}


@pytest.mark.parametrize("case", list(_CASES), ids=list(_CASES))
def test_a_bytearray_field_is_redacted_as_bytes_is(case: str) -> None:
    sent, shown = _CASES[case]
    out = redact_secrets(None, "info", {"event": "e", "v": bytearray(sent),
                                        "d": {"x": bytearray(sent)},
                                        "l": [bytearray(sent)], "b": sent})
    assert out["b"] == shown
    for got in (out["v"], out["d"]["x"], out["l"][0]):
        assert type(got) is bytearray and got == bytearray(shown)


def test_a_plain_bytearray_is_left_the_same_object() -> None:
    plain = bytearray(b"x=1 at 12:30")
    assert redact_secrets(None, "info", {"event": "e", "v": plain})["v"] is plain
