"""An ``async+redis+unix://`` storage URI must name a socket path, and nothing else.

``async+redis+unix://`` (no path) was taken, and coredis then connected over TCP to
``localhost:6379``: the counts went to whatever Redis listens there, without a word.
``async+redis+unix:///`` was taken and failed at every connection (``/`` is no socket);
``async+redis+unix://tmp/redis.sock`` (two slashes: ``tmp`` read as a host) and
``async+redis+unix://host/tmp/redis.sock`` passed the options and failed only when the
interceptor was built ("Missing host or port in location tmp"). All are ConfigErrors at
construction now, saying how to write the URI.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter


@pytest.mark.parametrize("uri", [
    "async+redis+unix://", "async+redis+unix:///", "async+redis+unix://?db=1",
    "async+redis+unix://tmp/redis.sock", "async+redis+unix://host/tmp/redis.sock",
    "redis+unix://:pw-a12z@cache/run/redis.sock"])
def test_a_unix_uri_without_a_socket_path_is_refused(uri: str) -> None:
    """Refused at construction, showing the form to write, never the password."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second", storage_uri=uri)
    text = str(caught.value)
    assert "async+redis+unix:///" in text and "pw-a12z" not in text, text


@pytest.mark.parametrize("uri", [
    "async+redis+unix:///run/redis/redis.sock", "async+redis+unix:///tmp/r.sock?db=2",
    "async+redis+unix://:pw@/run/redis.sock"])
def test_a_unix_uri_with_a_socket_path_is_taken(uri: str) -> None:
    """Taken, and the limiter builds (no Redis contacted)."""
    StorageLimiter(RateLimitOptions(default_rule="1/second", storage_uri=uri))
