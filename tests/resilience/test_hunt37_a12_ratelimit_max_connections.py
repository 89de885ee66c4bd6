"""``?max_connections=N`` on a Redis storage URI is refused: coredis fails the hit.

coredis' ``from_url`` pool does not wait for a free connection: once ``N`` are busy it
raises ``ConnectionError("Too many connections")``. With ``?max_connections=2`` (meant
to bound the connections a replica opens) 100 concurrent calls had 98 hits fail as
storage failures: the limit off under load with ``on_storage_error="allow"``, 98 calls
``UNAVAILABLE`` with ``"deny"``, and the breaker opened. A bound of 1 or more is now a
ConfigError at construction (``0``, no bound, is still taken); without it the same
100 concurrent calls are all counted.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value", ["1", "2", "10", "512"])
def test_a_connection_bound_is_refused(value: str) -> None:
    """Refused naming the option, the password not shown."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second",
                         storage_uri=f"async+redis://:pw-a12m@127.0.0.1:6379?max_connections={value}")
    text = str(caught.value)
    assert "max_connections" in text and "pw-a12m" not in text, text


def test_concurrent_calls_are_all_counted_without_a_bound() -> None:
    """100 concurrent hits against a real Redis: none a storage failure; a limit of 60
    admits exactly 60."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="60/minute", on_storage_error="deny", key_prefix=f"a12mc-{uuid.uuid4().hex}",
        storage_timeout_s=5.0,  # first connect on a loaded box
        storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}?max_connections=0"))

    async def run() -> list[str | None]:
        try:
            got = await asyncio.gather(*(limiter.check("/a.B/C", "k") for _ in range(100)))
            return [None if r is None else r.code.name for r in got]
        finally:
            await limiter.aclose()

    codes = asyncio.run(run())
    assert codes.count(None) == 60 and codes.count("RESOURCE_EXHAUSTED") == 40, codes
