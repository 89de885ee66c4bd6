"""``by_metadata`` on a credential header put the credential into the storage's keys.

Rate limiting per API key is what ``by_metadata("x-api-key")`` is for, but the caller key
was ``"x-api-key=<the key>"``, and a Redis storage keeps each caller's counts under a key
holding it (``LIMITER/<prefix>/<method>/x-api-key=<the key>/...``; only keys over 64
characters were cut to 32 and a digest, so a 40-character API key went whole, a longer
one's first 22 characters): every caller's API key (or bearer token, cookie) readable by
whoever may list that Redis' keys (``SCAN``, ``MONITOR``, a dashboard), a Redis shared by
other services more often than not. For a header named like a credential
(:func:`~meshkit.observability.is_sensitive_key`) the caller key is now
``"<header>=#<128-bit BLAKE2b digest of the value>"``: distinct values stay distinct
budgets, and no value reaches the storage.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter, by_metadata
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(30)

METHOD = "/p.S/M"
API_KEY = "ak_live_c9Zq8RmN4pT7vW2xY5bC3dF6gH1jK0"  # 38 characters
OTHER_KEY = "ak_live_other0000000000000000000000000"


class _Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._md = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


def _key(header: str, value: str) -> str:
    return by_metadata(header)(METHOD, _Context((header, value)))  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["x-api-key", "authorization", "cookie", "x-auth-token"])
def test_a_credential_header_is_keyed_by_a_digest(header: str) -> None:
    key = _key(header, API_KEY)
    assert API_KEY not in key and API_KEY[8:20] not in key
    assert key.startswith(f"{header}=#")
    assert _key(header, API_KEY) == key  # the same caller, the same budget
    assert _key(header, OTHER_KEY) != key  # another caller, another budget


def test_other_headers_are_keyed_by_their_value() -> None:
    assert _key("x-user", "alice") == "x-user=alice"


async def test_no_api_key_reaches_redis() -> None:
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    import coredis

    prefix = f"c9-{uuid.uuid4().hex}"
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/minute", storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
        key_prefix=prefix))
    key_of = by_metadata("x-api-key")
    mine: Any = _Context(("x-api-key", API_KEY))
    other: Any = _Context(("x-api-key", OTHER_KEY))
    client: Any = coredis.Redis(host="127.0.0.1", port=SHARED_REDIS_PORT)
    try:
        assert await limiter.check(METHOD, key_of(METHOD, mine)) is None
        assert await limiter.check(METHOD, key_of(METHOD, mine)) is not None  # spent
        assert await limiter.check(METHOD, key_of(METHOD, other)) is None  # its own
        stored = [k.decode() if isinstance(k, bytes) else k
                  for k in await client.keys(f"*{prefix}*")]
        assert stored, "the limiter stored no key"
        assert [k for k in stored if API_KEY[8:20] in k or OTHER_KEY[8:20] in k] == []
    finally:
        keys = await client.keys(f"*{prefix}*")
        if keys:
            await client.delete(keys)
        await limiter.aclose()
