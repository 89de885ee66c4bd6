"""SpiffeId.parse refuses a str holding a lone surrogate with ConfigError.

A SPIFFE ID read from the environment or a file name of bytes that are not UTF-8 arrives
in Python with surrogate escapes (``os.environ``, ``os.fsdecode``); ``SpiffeId.parse``
documents ``ConfigError`` for every value that is no SPIFFE ID, and its callers (peer
reading, certificate inspection) catch that alone. It raised ``UnicodeEncodeError``
from its length check instead.
"""

from __future__ import annotations

import pytest

from meshkit.auth import SpiffeId
from meshkit.errors import ConfigError


@pytest.mark.parametrize("value", [
    "spiffe://meshkit.local/svc/\udcff",
    "spiffe://meshkit.local\udcc3/svc/orderd",
    "spiffe://meshkit.local/svc/orderd\ud800",
], ids=["path", "trust-domain", "trailing-high-surrogate"])
def test_a_lone_surrogate_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="SPIFFE"):
        SpiffeId.parse(value)


def test_valid_ids_still_parse() -> None:
    sid = SpiffeId.parse("spiffe://meshkit.local/svc/orderd")
    assert (sid.trust_domain, sid.path, sid.service) == ("meshkit.local", "/svc/orderd",
                                                         "orderd")
