"""A Redis storage URI option whose value has a second pair run into it
(``?connect_timeout=5;password=pw``: ``urllib.parse`` reads ``5;password=pw`` as the
option's value) is refused without quoting that value, as ``mask_query`` masks it in the
URI shown beside it: the password never reaches a log."""
from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter

SECRET = "hunter2"


@pytest.mark.parametrize("tail", [
    f"?connect_timeout=5;password={SECRET}",
    f"?db=1;password={SECRET}",
    f"?client_name=a;password={SECRET}%20x",
    f"?protocol_version=2;password={SECRET}",
    f"?noreply=x;password={SECRET}",
])
def test_a_refused_option_value_with_a_pair_run_into_it_is_not_quoted(tail: str) -> None:
    with pytest.raises(ConfigError) as info:
        StorageLimiter(RateLimitOptions(default_rule="1/second",
                                        storage_uri="async+redis://127.0.0.1:6379" + tail))
    assert SECRET not in str(info.value), str(info.value)


def test_a_plain_bad_value_is_still_quoted() -> None:
    with pytest.raises(ConfigError, match="connect_timeout='soon'"):
        StorageLimiter(RateLimitOptions(default_rule="1/second",
                                        storage_uri="async+redis://127.0.0.1:6379"
                                                    "?connect_timeout=soon"))
