"""A Redis storage URI whose ``host:port`` the driver misreads or cannot parse is refused
when :class:`RateLimitOptions` is built, not when the interceptor is.

``async+redis://cache:0`` was taken: coredis reads port 0 as 6379 (``int(port or
6379)``), so the counts went to whatever Redis listens there, another service's maybe,
without a word. A port above 65535, a port that is not a number, a missing port,
unbalanced IPv6 brackets, several hosts for a single server, or a password holding an
unencoded ``/``, ``?`` or ``#`` (where the URI's host part ends for ``limits``) passed
``RateLimitOptions`` and failed only when ``serve()`` built the interceptor.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter


@pytest.mark.parametrize(("uri", "said"), [
    ("async+redis://127.0.0.1:0", "port 0"),
    ("redis://:hunter22@127.0.0.1:0/1", "port 0"),
    ("async+rediss://cache.internal:0", "port 0"),
    ("async+redis+sentinel://127.0.0.1:0/primary", "port 0"),
    ("async+redis+cluster://127.0.0.1:7000,127.0.0.1:0", "port 0"),
    ("async+redis://127.0.0.1:70000", "out of range"),
    ("async+redis://:hunter22@127.0.0.1:99999", "out of range"),
    ("async+redis://127.0.0.1:-1", "could not be cast"),
    ("async+redis://127.0.0.1:six", "could not be cast"),
    ("async+redis://[::1:6379", "IPv6"),
    ("async+redis://::1]:6379", "IPv6"),
    ("async+redis://127.0.0.1", "needs a host and a port"),
    ("async+redis://127.0.0.1:", "needs a host and a port"),
    ("async+redis://[::1]", "needs a host and a port"),
    ("async+redis+cluster://127.0.0.1:7000,127.0.0.2", "needs a host and a port"),
    ("async+redis://127.0.0.1:6379,127.0.0.2:6379", "one host:port"),
    ("async+redis://:hunter/22@127.0.0.1:6379", "user info"),
    ("async+redis://:hunter?22@127.0.0.1:6379", "user info"),
    ("async+redis://:hunter#22@127.0.0.1:6379", "user info"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_location_the_driver_misreads_is_refused_at_construction(uri: str,
                                                                   said: str) -> None:
    """The options refuse the URI, naming what is wrong and never the password."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second", storage_uri=uri)
    text = str(caught.value)
    assert said in text, text
    assert "hunter" not in text and "22@" not in text, text


@pytest.mark.parametrize("uri", [
    "async+redis://127.0.0.1:6379",
    "redis://:hunter22@cache.internal:6380/2",
    "async+redis://u:p@ss@127.0.0.1:6379/0?db=1",
    "async+redis://[::1]:6379",
    "async+rediss://cache.internal:6380",
    "async+redis+unix:///run/redis.sock",
    "async+redis+sentinel://127.0.0.1:26379,127.0.0.2:26380/primary",
    "async+redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    "memory://",
])
def test_a_location_the_driver_reads_is_taken_and_builds(uri: str) -> None:
    """A well-formed URI is taken, and the limiter builds from it (no Redis contacted)."""
    options = RateLimitOptions(default_rule="1/second", storage_uri=uri)
    StorageLimiter(options)
