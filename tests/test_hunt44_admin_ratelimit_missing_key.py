"""``by_metadata(name, fallback=None)``'s key for calls without the header cannot be
sent on purpose: a client sending the old sentinel value does not share (and cannot
spend) the budget of the calls without the header."""

from __future__ import annotations

import pytest

from meshkit.resilience.ratelimit import by_metadata

_METHOD = "/s.A/M"


class _Ctx:
    """What by_metadata reads of a servicer context."""

    def __init__(self, md: tuple[tuple[str, str], ...] = ()) -> None:
        self._md = md

    def peer(self) -> str:
        return "ipv4:10.0.0.7:5000"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


@pytest.mark.parametrize("digest", [False, True], ids=["plain", "credential"])
def test_the_missing_header_key_cannot_be_sent(digest: bool) -> None:
    """With ``fallback=None``, a call without the header and one sending any value (the
    old sentinel ``<missing>``, the missing key itself or its tail) get different keys."""
    name = "x-api-key" if digest else "x-user"
    key = by_metadata(name, fallback=None)
    missing = key(_METHOD, _Ctx())  # type: ignore[arg-type]
    assert key(_METHOD, _Ctx()) == missing  # type: ignore[arg-type]
    for value in ("<missing>", "", missing, missing.partition("=")[2],
                  missing.removeprefix(name)):
        sent = key(_METHOD, _Ctx(md=((name, value),)))  # type: ignore[arg-type]
        assert sent != missing, (value, sent)
