"""An error reply about one caller's key no longer opens the shared storage breaker.

Redis answers ``WRONGTYPE`` (the caller's counter key holds another type: replicas of a
rolling deploy changing ``strategy`` between the moving window, a list, and the fixed
window, a string, on the same keys) or ``ERR value is not an integer`` (the key written
by something else) to that caller's hits only: the storage is up and answering everyone
else. Each such reply counted as a storage failure towards the breaker, so one bad key
hit ``breaker_failures`` times in a row opened it for every caller: their limits not
enforced (``on_storage_error="allow"``) or every call refused ``UNAVAILABLE``
(``"deny"``), and an outage logged, with Redis up. Such a reply is now that caller's
failure alone (``on_storage_error`` applies to its call, :attr:`storage_errors` counts
it), and to the breaker the storage answered.

Real Redis on 127.0.0.1:6379, a key prefix of each test's own (its keys deleted after).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_ratelimit import redis_ping
from tests.support.skips import skip_or_fail
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

METHOD = "/a.B/C"


def _redis_cli(*args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", "6379", *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


@pytest.fixture
def prefix() -> Iterator[str]:
    if not redis_ping(6379):
        skip_or_fail("no Redis answering on 127.0.0.1:6379")
    name = f"h40k{uuid.uuid4().hex[:10]}"
    yield name
    for key in _redis_cli("--scan", "--pattern", f"*{name}*").split():
        _redis_cli("del", key)


def _limiter(prefix: str, strategy: str, deny: bool = True) -> StorageLimiter:
    return StorageLimiter(
        RateLimitOptions(
            default_rule="3/hour",
            strategy=strategy,  # type: ignore[arg-type]
            on_storage_error="deny" if deny else "allow",
            storage_timeout_s=5.0,
            breaker_failures=3,
            key_prefix=prefix,
            storage_uri="async+redis://127.0.0.1:6379",
        )
    )


async def _spoil(limiter: StorageLimiter, prefix: str, caller: str, how: str) -> None:
    """Make ``caller``'s counter keys (made by a first hit) hold something else."""
    assert await limiter.check(METHOD, caller) is None
    keys = [
        k for k in _redis_cli("--scan", "--pattern", f"*{prefix}*").split() if f"/{caller}/" in k
    ]
    assert keys
    for key in keys:
        _redis_cli("del", key)
        if how == "wrongtype":
            _redis_cli("hset", key, "a", "b")
        else:
            _redis_cli("set", key, "x")


CASES = [
    ("fixed-window", "wrongtype"),
    ("moving-window", "wrongtype"),
    ("sliding-window-counter", "wrongtype"),
    ("fixed-window", "not-an-integer"),
]


@pytest.mark.parametrize(("strategy", "how"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
async def test_one_bad_key_does_not_open_the_breaker(prefix: str, strategy: str, how: str) -> None:
    limiter = _limiter(prefix, strategy)
    try:
        await _spoil(limiter, prefix, "bad", how)
        for _ in range(6):  # twice breaker_failures
            refused = await limiter.check(METHOD, "bad")
            assert refused is not None and refused.code.name == "UNAVAILABLE", refused
        assert limiter.storage_errors == 6  # still counted: that caller's hits failed
        assert not limiter.breaker.is_open and limiter.breaker.opened == 0
        # every other caller is still counted on Redis: its limit enforced
        for _ in range(3):
            assert await limiter.check(METHOD, "good") is None
        over = await limiter.check(METHOD, "good")
        assert over is not None and over.code.name == "RESOURCE_EXHAUSTED", over
    finally:
        await limiter.aclose()


async def test_a_bad_keys_reply_to_a_cancelled_call_does_not_open_it(prefix: str) -> None:
    # the hit of a call cancelled mid-way ends on its own and counts as any other
    limiter = _limiter(prefix, "fixed-window", deny=False)
    try:
        await _spoil(limiter, prefix, "bad", "wrongtype")
        for _ in range(6):
            call = asyncio.ensure_future(limiter.check(METHOD, "bad"))
            await asyncio.sleep(0)  # its hit sent
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await until(lambda: not limiter._finishing, timeout_s=10.0)
        assert limiter.storage_errors == 6
        assert not limiter.breaker.is_open and limiter.breaker.opened == 0
    finally:
        await limiter.aclose()


async def test_a_storage_failure_still_opens_it(prefix: str) -> None:
    # a hit the storage did not answer (here: a script error Redis returns for every
    # caller, its script cache empty and the script unloadable is hard to make; a
    # connection refused is the plain case) still counts towards the breaker
    limiter = StorageLimiter(
        RateLimitOptions(
            default_rule="3/hour",
            on_storage_error="deny",
            storage_timeout_s=1.0,
            breaker_failures=3,
            key_prefix=prefix,
            storage_uri="async+redis://127.0.0.1:1",
        )
    )
    try:
        for _ in range(3):
            refused = await limiter.check(METHOD, "any")
            assert refused is not None and refused.code.name == "UNAVAILABLE"
        assert limiter.breaker.is_open and limiter.breaker.opened == 1
    finally:
        await limiter.aclose()
