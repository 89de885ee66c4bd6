"""Two more Redis storage URIs that were taken and did something else than written.

* ``async+redis+sentinel://host:26379`` (no service name) was taken and failed only when
  the interceptor was built; ``.../`` was taken and asked the Sentinel for a primary named
  ``""`` at every hit (each a storage failure: the limit failing open); ``.../a/b`` asked
  for ``ab`` (limits drops every ``/``). The service name is now required, one path
  segment (``/primary/`` is taken: limits reads it as ``primary``), at construction.
* ``?noevict=false`` or ``?notouch=0`` turned the flag *on*: coredis parses them with
  ``bool()``, which reads any non-empty text as true. A value that reads as off is now
  refused (leave the option out), as ``noreply`` is.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_hunt36_ratelimit_sentinel import sentinel  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("tail", ["", "/", "/prim/ary", "/?db=0"])
def test_a_sentinel_uri_without_one_service_name_is_refused(tail: str) -> None:
    """Refused at construction, saying the path names the primary, password not shown."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second",
                         storage_uri=f"async+redis+sentinel://:pw-a12x@127.0.0.1:26379{tail}")
    text = str(caught.value)
    assert "service name" in text and "pw-a12x" not in text, text


def test_the_service_name_given_counts(sentinel: int) -> None:  # noqa: F811
    """``/primary`` through a real Sentinel counts (the second hit of "1/minute" refused)."""
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/minute", on_storage_error="deny", key_prefix=f"a12-{uuid.uuid4().hex}",
        storage_timeout_s=5.0,  # first connect on a loaded box
        storage_uri=f"async+redis+sentinel://127.0.0.1:{sentinel}/primary"))

    async def twice() -> list[str | None]:
        try:
            return [None if r is None else r.code.name
                    for r in [await limiter.check("/p.S/M", "k") for _ in range(2)]]
        finally:
            await limiter.aclose()

    assert asyncio.run(twice()) == [None, "RESOURCE_EXHAUSTED"]


@pytest.mark.parametrize("query", ["?noevict=false", "?notouch=0", "?noevict=no",
                                   "?notouch=False", "?notouch=off"])
def test_a_flag_written_off_is_refused(query: str) -> None:
    """coredis would turn it on: refused, naming the option."""
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second",
                         storage_uri=f"async+redis://127.0.0.1:6379{query}")
    assert query[1:].partition("=")[0] in str(caught.value), str(caught.value)


@pytest.mark.parametrize("query", ["?noevict=true", "?notouch=1", "?noevict=yes"])
def test_a_flag_written_on_is_taken(query: str) -> None:
    RateLimitOptions(default_rule="1/second", storage_uri=f"async+redis://127.0.0.1:6379{query}")
