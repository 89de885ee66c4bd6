"""An error reply to one caller's hit no longer fails the other hits in flight.

The hits of all callers share one Redis connection (coredis multiplexes them), and
coredis dropped that connection on any error reply (f1 kept it on ``NOSCRIPT`` only).
An error reply is read whole, so the connection is in step: dropping it only failed the
other callers' hits still waiting on it ("connection lost"): storage failures,
``UNAVAILABLE`` under ``on_storage_error="deny"``, a step to an open breaker, for
callers whose own hit Redis would have counted. Met on a real Redis as: ``WRONGTYPE``
(a caller's counter key holding another type: replicas of a rolling deploy changing
``strategy`` between the moving window, a list, and the fixed window, a string, on the
same keys), ``ERR value is not an integer`` (a key written by something else), ``OOM``
(Redis at ``maxmemory``: writes refused, window reads still answered). Such a reply is
now a storage failure of that hit alone. ``READONLY`` (a failover demoted the server)
and ``MASTERDOWN`` (a replica cut off from its master) still drop the connection: the
next hit reconnects, through Sentinel to the new primary, through a name to whatever it
names now.

A private plain-TCP Redis behind a proxy (f1's, counting its connections here) that,
once armed, passes the server's replies on one line at a time: the first caller's error
reply is read while the second caller's answer is still on its way.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from meshkit.resilience.ratelimit import RateLimitOptions, StorageLimiter
from tests.resilience.test_hunt39_f1_ratelimit_noscript_in_flight import (
    _LineByLine,
    private_redis,
)

pytestmark = pytest.mark.timeout(60)

__all__ = ["private_redis"]  # the fixture, imported for the tests below

METHOD = "/a.B/C"


class _Counted(_LineByLine):
    """f1's line-by-line proxy, counting the connections it accepted."""

    accepted = 0

    async def _handle(self, creader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super()._handle(creader, cwriter)


def _redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout


def _limiter(port: int, strategy: str = "fixed-window") -> StorageLimiter:
    return StorageLimiter(RateLimitOptions(
        default_rule="5/minute", strategy=strategy, on_storage_error="deny",
        storage_timeout_s=5.0, key_prefix="q4",
        storage_uri=f"async+redis://127.0.0.1:{port}"))


async def _key_of(limiter: StorageLimiter, port: int, caller: str) -> str:
    """The Redis key of ``caller``'s counter (made by a first hit, then deleted)."""
    before = set(_redis_cli(port, "--scan").split())
    assert await limiter.check(METHOD, caller) is None
    (key,) = set(_redis_cli(port, "--scan").split()) - before
    _redis_cli(port, "del", key)
    return key


@pytest.mark.parametrize("spoil", ["wrongtype", "not-an-integer"])
async def test_one_callers_error_reply_does_not_fail_the_others_in_flight(
        private_redis: int, spoil: str) -> None:
    async with _Counted(private_redis) as proxy:
        limiter = _limiter(proxy.port)
        try:
            key = await _key_of(limiter, private_redis, "bad")
            assert await limiter.check(METHOD, "good") is None  # the script loaded
            if spoil == "wrongtype":
                _redis_cli(private_redis, "rpush", key, "x")
            else:
                _redis_cli(private_redis, "set", key, "x")
            proxy.arm()
            bad, good = await asyncio.gather(limiter.check(METHOD, "bad"),
                                             limiter.check(METHOD, "good"))
            assert bad is not None and bad.code.name == "UNAVAILABLE", bad
            assert good is None, (good, limiter.storage_errors)
            assert limiter.storage_errors == 1  # the bad caller's hit, once
            assert proxy.accepted == 1  # the connection kept
        finally:
            await limiter.aclose()


async def test_an_oom_reply_does_not_fail_a_window_read_in_flight(
        private_redis: int) -> None:
    # Redis at maxmemory answers OOM to a hit that counts (a write); a caller over its
    # limit is refused without one, and the read of its window (retry-after, the exact
    # pushback) is answered: not cut by the other caller's OOM
    async with _Counted(private_redis) as proxy:
        limiter = StorageLimiter(RateLimitOptions(
            default_rule="1/minute", on_storage_error="deny", storage_timeout_s=5.0,
            storage_uri=f"async+redis://127.0.0.1:{proxy.port}"))
        try:
            assert await limiter.check(METHOD, "over") is None
            _redis_cli(private_redis, "config", "set", "maxmemory", "1")
            proxy.arm()
            try:
                over, oom = await asyncio.gather(limiter.check(METHOD, "over"),
                                                 limiter.check(METHOD, "new"))
            finally:
                _redis_cli(private_redis, "config", "set", "maxmemory", "0")
            assert oom is not None and oom.code.name == "UNAVAILABLE", oom
            assert limiter.storage_errors == 1  # the OOM, once
            # refused, its window read: the wait to the millisecond (a read lost: None)
            assert over is not None and over.code.name == "RESOURCE_EXHAUSTED", over
            assert over.pushback_ms is not None, over
            assert await limiter.check(METHOD, "after") is None
            assert proxy.accepted == 1, proxy.accepted  # the connection kept
        finally:
            await limiter.aclose()


@pytest.mark.parametrize("demoted", ["readonly", "masterdown"])
async def test_a_demoted_server_still_drops_the_connection(
        private_redis: int, demoted: str) -> None:
    # READONLY/MASTERDOWN: this server cannot count; the next hit reconnects (through
    # Sentinel or a name that now names the new primary, to another server)
    async with _Counted(private_redis) as proxy:
        limiter = _limiter(proxy.port)
        try:
            assert await limiter.check(METHOD, "one") is None
            before = proxy.accepted
            if demoted == "masterdown":
                _redis_cli(private_redis, "config", "set", "replica-serve-stale-data",
                           "no")
            _redis_cli(private_redis, "replicaof", "127.0.0.1", "1")  # no master there
            try:
                refused = await limiter.check(METHOD, "one")
            finally:
                _redis_cli(private_redis, "replicaof", "no", "one")
                _redis_cli(private_redis, "config", "set", "replica-serve-stale-data",
                           "yes")
            assert refused is not None and refused.code.name == "UNAVAILABLE", refused
            assert limiter.storage_errors == 1
            assert await limiter.check(METHOD, "one") is None
            assert proxy.accepted == before + 1, proxy.accepted  # dropped, reopened
        finally:
            await limiter.aclose()
