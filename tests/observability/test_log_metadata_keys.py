"""TelemetryOptions(log_metadata=...) refuses a key no request metadata can carry.

A key with a blank (``"x user"``, ``"x-user "`` from a config file), a ``:``
pseudo-header, a non-ASCII letter, or a header grpc consumes itself (``grpc-timeout``)
never appears in a call's metadata: it was accepted and the access log's ``md`` silently
never showed it.
"""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.observability import TelemetryOptions


@pytest.mark.parametrize("key", ["x user", "x-user ", ":authority", "x-\u00fcser", "grpc-timeout",
                                 "x/user", ""])
def test_a_key_no_metadata_can_carry_is_refused(key: str) -> None:
    """A ConfigError naming log_metadata and quoting the key."""
    with pytest.raises(ConfigError, match="log_metadata") as caught:
        TelemetryOptions(log_metadata=(key,))
    assert repr(key) in str(caught.value)


@pytest.mark.parametrize("key", ["x-user", "user-agent", "x_user.id", "x-request-id"])
def test_a_metadata_key_is_taken(key: str) -> None:
    """Keys gRPC metadata carries are kept."""
    assert TelemetryOptions(log_metadata=(key,)).log_metadata == (key,)
