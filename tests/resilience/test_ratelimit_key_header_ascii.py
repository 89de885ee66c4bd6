"""``by_metadata`` checks the header name as given, not after Unicode case folding or
Unicode whitespace stripping.

gRPC over HTTP/2, Custom-Metadata: ``Header-Name -> 1*( %x30-39 / %x61-7A / "_" / "-" /
"." )``, ASCII only. db5e690 checked the name after ``str.strip()`` and ``str.lower()``:
``"x-\\u212a"`` (KELVIN SIGN) lowercases to ASCII ``"x-k"`` and ``"\\u00a0x-user"`` (a
no-break space) strips to ``"x-user"``, so names no call can carry were accepted and
silently keyed on another header than the one written. They are refused quoting the
name; ASCII case and surrounding ASCII whitespace (``" X-User\\n"``) stay accepted.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import by_metadata

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", ["x-\u212a", "\u00a0x-user", "x-user\u2003", "\u212aey"])
def test_a_name_outside_ascii_is_refused_quoting_it(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        by_metadata(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["X-User", " x-user\n", "\tx.user_1 "])
def test_ascii_case_and_spaces_stay_accepted(name: str) -> None:
    by_metadata(name)
