"""The user cache never quotes a Redis password, however the URI spells it.

``cache._shown`` dropped the user info up to the last ``@`` of what ``urlsplit`` took for
the host part, which ends at the first ``/``, ``?`` or ``#``: a password holding one of
them (``redis://:s3cr/et@host``, unencoded, as such passwords are often pasted) was
quoted, whole or in part, in the ConfigError of a wrong scheme and in the ``user cache
unavailable`` warning of every outage; a query (``?password=...``) was quoted too. The
store's URLs already had this fixed (eb35505); the cache now shows URIs the same way.
"""

from __future__ import annotations

import traceback

import pytest
import structlog
from prometheus_client import CollectorRegistry

from examples.ecom.cache import CachedUsers, Lookup, UserCacheOptions, open_user_cache
from meshkit.errors import ConfigError

SECRETS = ("s3cr", "et@", "p#ss", "hunter2")


class _Down:
    """A cache whose every call fails (an outage)."""

    async def get(self, user_id: str) -> Lookup:
        raise ConnectionError("down")

    async def set(self, user_id: str, data: bytes, lease: str) -> bool:
        raise ConnectionError("down")

    async def invalidate(self, *user_ids: str) -> None:
        raise ConnectionError("down")

    async def aclose(self) -> None:
        pass

    def reset(self) -> None:
        pass


@pytest.mark.parametrize("uri", ["bogus://:s3cr/et@cache:6379", "bogus://u:p#ss@cache:6379",
                                 "bogus://cache:6379/0?password=hunter2"])
def test_a_wrong_scheme_is_refused_without_the_password(uri: str) -> None:
    with pytest.raises(ConfigError) as refused:
        UserCacheOptions(uri=uri)
    assert not any(s in str(refused.value) for s in SECRETS), str(refused.value)
    assert "cache:6379" in str(refused.value)


@pytest.mark.parametrize("uri", ["redis://:s3cr/et@cache:6379", "redis://u:p#ss@cache:6379",
                                 "redis://cache:6379/0?password=hunter2"])
async def test_the_outage_warning_does_not_quote_the_password(uri: str) -> None:
    cached = CachedUsers(_Down(), UserCacheOptions(uri=uri), registry=CollectorRegistry())

    async def load() -> None:
        return None

    with structlog.testing.capture_logs() as logs:
        assert await cached.get("00000000-0000-4000-8000-000000000000", load) is None
    warned = [e for e in logs if e["event"].startswith("user cache unavailable")]
    assert warned, logs
    assert not any(s in str(warned) for s in SECRETS), warned


@pytest.mark.parametrize("uri", ["async+redis://:s3cr/et@cache:6379",
                                 "async+redis://:s3cr?et@cache:6379",
                                 "async+redis://:hunter2@cache:63x79"])
def test_a_uri_the_driver_cannot_parse_is_refused_without_the_password(uri: str) -> None:
    """userd given such a URI (a password holding '/', '?' or '#' pasted unencoded, a
    mistyped port) died at its start with the driver's ValueError traceback, 'Port could
    not be cast to integer value as 's3cr'': the password's start, which _shown hides
    everywhere else, in the log of every restart."""
    with pytest.raises(ConfigError) as refused:
        open_user_cache(UserCacheOptions(uri=uri), registry=CollectorRegistry())
    shown = "".join(traceback.format_exception(refused.value))
    assert not any(s in shown for s in SECRETS), shown
    assert "cache" in str(refused.value), str(refused.value)
