"""A Redis storage URI option with which no hit can succeed is refused when the options
are built.

The Redis driver (coredis) reads the URI's query options at the first connection, or
drops one it cannot parse with a ``UserWarning`` only: ``?noreply=false`` (any value
turns replies off: every hit then read ``None``), ``?connect_timeout=0`` or ``-1``,
``?stream_timeout=-1``, ``?max_connections=-5``, ``?db=-1`` (or ``/-1``),
``?client_name=a b`` (Redis refuses a name with a space) passed RateLimitOptions and
made every call a storage failure (measured: ``UNAVAILABLE, UNAVAILABLE`` under
``deny``, unlimited under ``allow``, the breaker opened), and ``?protocol_version=5``
raised a bare ``AssertionError`` where the limiter was built. Each is now a ConfigError
quoting the URI (password redacted) and naming the option.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter

BASE = "async+redis://:s3cr3tpw@127.0.0.1:6379"


@pytest.mark.parametrize("tail", [
    "?noreply=false", "?noreply=1", "?connect_timeout=0", "?connect_timeout=-1",
    "?connect_timeout=nan", "?connect_timeout=soon", "?stream_timeout=-1",
    "?stream_timeout=x", "?max_connections=-5", "?max_connections=many", "?db=-1", "/-1",
    "/one", "?client_name=a%20b", "?client_name=caf%C3%A9", "?protocol_version=5",
    "?protocol_version=two", "?max_idle_time=x", "?idle_check_interval=1.5",
])
def test_an_option_no_hit_can_work_with_is_refused(tail: str) -> None:
    with pytest.raises(ConfigError) as info:
        StorageLimiter(RateLimitOptions(default_rule="1/second", storage_uri=BASE + tail))
    text = str(info.value)
    assert "storage_uri 'async+redis://***@127.0.0.1:6379" in text, text
    assert "s3cr3tpw" not in text, text
    name = tail.lstrip("?/").partition("=")[0] if "=" in tail else "db"
    assert name in text, text


@pytest.mark.parametrize("tail", [
    "", "/0", "/3", "?db=2", "?connect_timeout=0.5", "?stream_timeout=0",
    "?stream_timeout=2.5", "?max_connections=0",  # =10: refused (a12 max_connections test)
    "?protocol_version=3", "?client_name=orders-1",
    "?max_idle_time=5&idle_check_interval=1", "?noevict=1",
])
def test_options_that_work_are_taken(tail: str) -> None:
    StorageLimiter(RateLimitOptions(default_rule="1/second", storage_uri=BASE + tail))
