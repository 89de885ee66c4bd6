"""A storage URI whose query option the driver cannot read fails as a ConfigError.

``async+redis://127.0.0.1:6379?db=x`` passed RateLimitOptions (the scheme is all it
checks) and then raised, where the limiter is built (``serve()``), coredis' bare
``ValueError: invalid literal for int() with base 10: 'x'``: no word of the storage URI
or the option, and not meshkit's error. It is now a ConfigError quoting the URI
(password redacted) and the driver's reason (scrubbed of the password as well).
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter


@pytest.mark.parametrize("query", ["db=x", "db=1.5"])
def test_an_unreadable_query_option_is_a_config_error_quoting_the_uri(query: str) -> None:
    uri = f"async+redis://:s3cr3tpw@127.0.0.1:6379?{query}"
    with pytest.raises(ConfigError) as info:
        StorageLimiter(RateLimitOptions(default_rule="1/second", storage_uri=uri))
    text = str(info.value)
    assert "storage_uri 'async+redis://***@127.0.0.1:6379" in text, text
    assert query.partition("=")[2] in text, text  # the driver's reason names the value
    assert "s3cr3tpw" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
