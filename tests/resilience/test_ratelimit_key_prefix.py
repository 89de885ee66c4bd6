"""A key_prefix UTF-8 cannot encode is refused when the options are built.

Every storage key starts with ``key_prefix``; the Redis driver encodes keys as UTF-8, so
a prefix holding a lone surrogate (``"svc\\udc80"``, e.g. read from an environment
variable of undecodable bytes, which Python decodes with ``surrogateescape``) failed every
hit with ``UnicodeEncodeError``: the limiter limited nothing (fail open) or refused
every call ``UNAVAILABLE`` (deny), only logging a storage outage at the first call.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions


@pytest.mark.parametrize("uri", ["memory://", "async+redis://127.0.0.1:6379"])
def test_a_key_prefix_utf8_cannot_encode_is_refused_quoting_it(uri: str) -> None:
    """ConfigError naming key_prefix and quoting the value (repr: the escape shown)."""
    with pytest.raises(ConfigError, match=r"key_prefix.*'svc\\udc80'"):
        RateLimitOptions(key_prefix="svc\udc80", storage_uri=uri)


def test_a_non_ascii_key_prefix_utf8_encodes_stays_accepted() -> None:
    assert RateLimitOptions(key_prefix="dienst-ü").key_prefix == "dienst-ü"
