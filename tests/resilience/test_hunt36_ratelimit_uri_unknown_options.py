"""A Redis storage URI option the driver does not take is refused when the options are
built.

coredis' ``ConnectionPool.from_url`` passes every query option it does not parse itself
on to the connection class as a keyword: an option that class does not take
(``?socket_timeout=1``, ``?retry_on_timeout=true``, ``?health_check_interval=5``: the
redis-py names; ``?implementation=redispy``, limits' own constructor argument; a typo)
raised ``TypeError`` at every connection, and ``?decode_responses=...`` made every hit
time out. Each was accepted and every call was a storage failure (measured:
``UNAVAILABLE`` under ``deny``, unlimited under ``allow``, the breaker opened).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from meshkit.errors import ConfigError
from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.skips import skip_or_fail

BASE = "async+redis://:s3cr3tpw@127.0.0.1:6379"


@pytest.mark.parametrize("tail", [
    "?socket_timeout=1", "?socket_connect_timeout=1", "?retry_on_timeout=true",
    "?health_check_interval=5", "?implementation=redispy", "?key_prefix=x",
    "?decode_responses=true", "?credential_provider=x", "?ssl_cert_reqs=none",
    "?db=1&conect_timeout=1", "?path=/tmp/r.sock"])
def test_an_option_the_driver_does_not_take_is_refused_naming_it(tail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimitOptions(default_rule="1/second", storage_uri=BASE + tail)
    text = str(caught.value)
    name = tail.rpartition("&")[2].lstrip("?").partition("=")[0]
    assert f"takes no option {name!r}" in text, text
    assert "s3cr3tpw" not in text, text


@pytest.mark.parametrize("uri", [
    "async+rediss://127.0.0.1:6380?ssl_cert_reqs=required&ssl_check_hostname=true",
    "async+redis+unix:///run/redis.sock?db=1&encoding=utf-8"])
def test_the_options_of_other_schemes_are_taken(uri: str) -> None:
    RateLimitOptions(default_rule="1/second", storage_uri=uri)


# (?host=, ?port=, ?username= counted only as coredis overwrites them with the URI's own:
# refused now, tests/resilience/test_hunt37_a12_ratelimit_uri_auth_options.py)
@pytest.mark.parametrize("tail", ["?encoding=utf-8&socket_keepalive=1"])
def test_options_the_driver_takes_still_count(tail: str) -> None:
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="1/minute", storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}"
        + tail, key_prefix=f"uo-{uuid.uuid4().hex}", on_storage_error="deny",
        storage_timeout_s=5.0))  # first connect on a loaded box

    async def twice() -> list[str | None]:
        try:
            return [None if r is None else r.code.name
                    for r in [await limiter.check("/p.S/M", "k") for _ in range(2)]]
        finally:
            await limiter.aclose()

    assert asyncio.run(twice()) == [None, "RESOURCE_EXHAUSTED"]
