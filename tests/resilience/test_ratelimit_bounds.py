"""Rate limiting: the memory:// limiter's bound on caller keys (``max_keys``, least recently
used evicted), and the gRFC A6 pushback a refusal sends, against real grpc.aio clients."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
import uuid
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.errors import ConfigError
from meshkit.resilience import Backoff, RetryOptions, RetryPolicy, ratelimit
from meshkit.resilience.ratelimit import (
    RateLimitOptions,
    StorageLimiter,
    Strategy,
)
from tests.conftest import EchoFactory
from tests.resilience.limited_echo import limited_echo as _limited_echo
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT, redis_ping
from tests.support.echo import SERVICE, method
from tests.support.skips import skip_or_fail
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

STRATEGIES: tuple[Strategy, ...] = ("fixed-window", "moving-window", "sliding-window-counter")
METHOD = method("Unary")


def entries(limiter: StorageLimiter) -> dict[str, int]:
    """How many entries the limiter's memory storage (none for Redis) and meshkit's own
    per-key caches hold: each grows by one (or two) per distinct caller key when nothing
    bounds them."""
    storage: Any = limiter._storage
    caches: dict[Any, Any] = getattr(limiter, "_key_caches", {})
    return {
        "counters": len(getattr(storage, "storage", ())),
        "expirations": len(getattr(storage, "expirations", ())),
        "moving windows": len(getattr(storage, "events", ())),
        "locks": len(getattr(storage, "locks", ())),
        "tracked callers": len(getattr(limiter, "_lru", ())),
        "cached storage keys": sum(len(c) for c in caches.values()),
        "window keys": len(limiter._window_keys),
    }


@pytest.mark.parametrize("rule", ["100/hour", "100/hour;1000/day"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_distinct_caller_keys_keep_at_most_max_keys_entries(strategy: Strategy,
                                                                  rule: str) -> None:
    """3,000 callers with a key each (a client sending a new x-user per call) leave at
    most max_keys=500 callers' counts in memory:// and in meshkit's caches, per strategy."""
    limiter = StorageLimiter(RateLimitOptions(default_rule=rule, strategy=strategy,
                                              max_keys=500))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        for i in range(3_000):
            assert check(f"x-user=attacker-{i}") is None
        parts = rule.count(";") + 1
        seen = entries(limiter)
        for name, count in seen.items():  # two parts: a counter (list) each
            assert count <= 500 * parts, (name, seen)
        assert limiter.keys_evicted == 2_500
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_an_evicted_caller_starts_a_fresh_window_the_recent_ones_stay(
        strategy: Strategy) -> None:
    """With max_keys=2 the least recently used caller is forgotten (its next call is
    admitted: a fresh window), while one that called since keeps its count."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/hour", strategy=strategy,
                                              max_keys=2))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        assert check("a") is None
        assert check("b") is None
        refused = check("a")  # a: used last, over its limit
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert check("c") is None  # evicts b, the least recently used
        assert limiter.keys_evicted == 1
        assert check("a") is not None  # kept: still refused
        assert check("b") is None  # forgotten: a fresh window
        assert limiter.keys_evicted == 2  # c went for it
        assert check("a") is not None
    finally:
        await limiter.aclose()


async def test_evictions_are_logged_once_then_counted() -> None:
    """The first eviction logs a warning naming max_keys; later ones are counted in the
    limiter's keys_evicted (no line per call)."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="5/minute", max_keys=10))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        with capture_logs() as logs:
            for i in range(200):
                check(f"k{i}")
        full = [e for e in logs if e["event"] == "rate limit callers evicted"]
        assert len(full) == 1, logs
        assert full[0]["log_level"] == "warning"
        assert full[0]["max_keys"] == 10
        assert limiter.keys_evicted == 190
    finally:
        await limiter.aclose()


async def test_the_default_bound_holds_for_every_strategy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped default (100,000 callers, ``max_keys`` left ``None``) bounds a flood of
    101,000 distinct keys (the first strategy at full scale; the others, which share the
    bound, with the default read at construction lowered to 1,000, flooded by 1,010)."""
    assert RateLimitOptions().max_keys is None
    assert ratelimit.DEFAULT_MAX_KEYS == 100_000
    for n, strategy in enumerate(STRATEGIES):
        if n:
            monkeypatch.setattr(ratelimit, "DEFAULT_MAX_KEYS", 1_000)
        bound = ratelimit.DEFAULT_MAX_KEYS
        limiter = StorageLimiter(RateLimitOptions(default_rule="100/hour", strategy=strategy))
        check = limiter.checker(METHOD)
        assert check is not None
        try:
            for i in range(bound + bound // 100):
                check(f"u{i}")
            seen = entries(limiter)
            assert max(seen.values()) <= bound, (strategy, seen)
            assert limiter.keys_evicted == bound // 100
        finally:
            await limiter.aclose()


@pytest.mark.parametrize("rule", ["5/minute", "5/minute;100/hour"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_callers_whose_windows_ended_cost_nothing(
        strategy: Strategy, rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a caller's windows have ended and the storage's sweep dropped its counts,
    meshkit forgets it too (not an eviction): a flood of 2,000 keys leaves no tracked
    caller nor cached storage key behind, as before the LRU (about 600 bytes each were
    kept for good: 60 MB at the default max_keys), and a caller seen again starts
    counting afresh as it would have."""
    now = [ratelimit._MEMORY_CLOCK.time()]
    monkeypatch.setattr(ratelimit._MEMORY_CLOCK, "time", lambda: now[0])
    limiter = StorageLimiter(RateLimitOptions(default_rule=rule, strategy=strategy))
    storage: Any = limiter._storage
    storage.sweep_interval_s = 0.0  # a sweep due at every hit, run on this loop
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        for i in range(2_000):
            assert check(f"x-user=flood-{i}") is None
        assert entries(limiter)["tracked callers"] == 2_000
        for _ in range(5):
            assert check("steady") is None
        assert check("steady") is not None  # over 5/minute
        now[0] += 2 * 3600 + 1  # every window over, a sliding window's previous one too
        assert check("steady") is None  # a fresh window; schedules a sweep
        # the sweep runs in steps of _SWEEP_STEP_KEYS keys (loop.call_soon each)
        await until(lambda: storage._sweep_handle is None, timeout_s=5, what="the sweep")
        seen = entries(limiter)
        assert seen["counters"] + seen["moving windows"] == len(rule.split(";")), seen
        assert seen["tracked callers"] == 1, seen  # "steady", counted since
        assert seen["cached storage keys"] + seen["window keys"] <= len(rule.split(";")), seen
        assert limiter.keys_evicted == 0
        for _ in range(4):
            assert check("steady") is None
        assert check("steady") is not None  # its new window still counted
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_max_keys_must_be_a_whole_number_of_callers(bad: Any) -> None:
    """max_keys below 1, or not an int, is refused when the options are built, quoted."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(max_keys=bad)
    assert "max_keys" in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("uri", ["memory://", "async+memory://"])
async def test_max_keys_set_for_memory_storage_is_kept(uri: str) -> None:
    """A max_keys given with memory:// (either spelling) is the bound the limiter keeps."""
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/hour", storage_uri=uri,
                                              max_keys=3))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        for i in range(5):
            assert check(f"k{i}") is None
        assert limiter.keys_evicted == 2
        assert entries(limiter)["tracked callers"] == 3
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("max_keys", [1_000, 100_000])
@pytest.mark.parametrize("uri", ["async+redis://127.0.0.1:6379", "redis://127.0.0.1:6379"])
def test_max_keys_with_a_storage_it_cannot_bound_is_refused(uri: str, max_keys: int) -> None:
    """max_keys bounds only memory://'s counts: set with Redis (whose keys expire on their
    own, out of this process) it is a wrong config, refused when the options are built
    with the value and the storage quoted, not ignored without a word (a user who set
    1,000 believed memory bounded somewhere). The default's value given explicitly is
    set too: refused alike."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(default_rule="1/second", storage_uri=uri, max_keys=max_keys)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "max_keys" in message and repr(max_keys) in message, message
    assert repr(uri) in message, message


def test_the_refusal_of_max_keys_redacts_the_storage_password() -> None:
    """The storage quoted in the max_keys refusal has its password masked."""
    with pytest.raises(ConfigError) as info:
        RateLimitOptions(storage_uri="async+redis://:s3cret-pw@127.0.0.1:6379",
                         max_keys=10)
    assert "s3cret-pw" not in str(info.value)
    assert "async+redis://***@127.0.0.1:6379" in str(info.value), str(info.value)


async def test_a_redis_limiter_leaves_max_keys_unset_and_counts() -> None:
    """Options for Redis built without max_keys (None) give a limiter that counts on the
    real Redis (127.0.0.1:6379): a 2/minute rule admits two calls, refuses the third."""
    if not redis_ping(SHARED_REDIS_PORT):
        skip_or_fail(f"no Redis answering on 127.0.0.1:{SHARED_REDIS_PORT}")
    options = RateLimitOptions(default_rule="2/minute",
                               storage_uri=f"async+redis://127.0.0.1:{SHARED_REDIS_PORT}",
                               key_prefix=f"bounds-{uuid.uuid4().hex}")
    assert options.max_keys is None
    limiter = StorageLimiter(options)
    try:
        assert await limiter.check(METHOD, "a") is None
        assert await limiter.check(METHOD, "a") is None
        refused = await limiter.check(METHOD, "a")
        assert refused is not None and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limiter.keys_evicted == 0
    finally:
        await limiter.aclose()


# --- gRFC A6 pushback ---------------------------------------------------------------------


def _retrying_channel(port: int, max_attempts: int) -> grpc.aio.Channel:
    """A plain grpc.aio channel whose service config retries RESOURCE_EXHAUSTED on the echo
    service at once (10 ms backoff) unless the server pushes back (gRFC A6)."""
    config = {"methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": max_attempts, "initialBackoff": "0.01s",
                        "maxBackoff": "0.01s", "backoffMultiplier": 1,
                        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]}
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))])


class _Attempts:
    """A key function that records when each attempt reached the limiter (monotonic s)."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        self.at.append(time.monotonic())
        return "one-caller"


def _trailer(err: grpc.aio.AioRpcError, key: str) -> list[str | bytes]:
    return [v for k, v in err.trailing_metadata() or () if k == key]


async def test_a_refusal_pushes_back_as_long_as_retry_after() -> None:
    """A refusal carries grpc-retry-pushback-ms: the wait in milliseconds, which
    retry-after rounds up to whole seconds (the caller has no deadline; memory://)."""
    attempts = _Attempts()
    async with (_limited_echo(RateLimitOptions(default_rule="1/minute", key=attempts)) as port,
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel):
        unary = channel.unary_unary(method("Unary"))
        await unary(b"1")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"2")
    err = info.value
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    (after,) = _trailer(err, "retry-after")
    (pushback,) = _trailer(err, "grpc-retry-pushback-ms")
    assert (int(after) - 1) * 1000 < int(pushback) <= int(after) * 1000, (after, pushback)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_memory_refusals_pushback_is_the_exact_wait(
        strategy: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// knows when its window admits again to the millisecond (its own clock):
    the pushback says so, where retry-after rounds up to whole seconds. A caller refused
    20.25 s into a 1/minute window may retry in 39,750 ms (sliding: the weighted wait,
    within retry-after's last second), not 40,000."""
    # 1 s into a minute of the clock: a sliding window's counters are named by now / 60,
    # so the refusal comes in the same one (from later in a minute it was admitted)
    now = [math.ceil(ratelimit._MEMORY_CLOCK.time() / 60) * 60 + 1.0]
    monkeypatch.setattr(ratelimit._MEMORY_CLOCK, "time", lambda: now[0])
    limiter = StorageLimiter(RateLimitOptions(default_rule="1/minute", strategy=strategy))
    check = limiter.checker(METHOD)
    assert check is not None
    try:
        assert check("a") is None
        now[0] += 20.25
        refused = check("a")
        assert refused is not None and refused.retry_after_s is not None
        assert refused.pushback_ms is not None
        if strategy == "sliding-window-counter":
            assert (refused.retry_after_s - 1) * 1000 < refused.pushback_ms \
                <= refused.retry_after_s * 1000, refused
        else:
            assert (refused.retry_after_s, refused.pushback_ms) == (40, 39_750)
        now[0] += refused.pushback_ms / 1000 + 0.001  # (the clock's sums are not exact)
        assert check("a") is None  # admitted once the pushback is over
    finally:
        await limiter.aclose()


async def test_a_deadline_between_the_wait_and_retry_after_still_retries() -> None:
    """A grpc client whose deadline ends after the real wait but before retry-after's
    rounded-up seconds is told the wait (not -1) and its retry is admitted: a 1 per 2
    seconds window refused about 0.9 s in (wait about 1.1 s, retry-after 2), the call's
    deadline 1.9 s. Answered -1 it ended RESOURCE_EXHAUSTED after one attempt. (On a box
    slow enough that the refusal comes over 1 s in, retry-after is 1 and it passes
    either way.)"""
    attempts = _Attempts()
    options = RateLimitOptions(default_rule="1 per 2 seconds", strategy="fixed-window",
                               key=attempts)
    async with (_limited_echo(options) as port,
                _retrying_channel(port, max_attempts=3) as channel):
        unary = channel.unary_unary(method("Unary"))
        assert await unary(b"1", timeout=30) == b"e1|1"
        await asyncio.sleep(0.9)
        assert await unary(b"2", timeout=1.9) == b"e1|2"
    assert len(attempts.at) == 3, attempts.at


async def test_a_grpc_client_retrying_resource_exhausted_waits_for_the_pushback() -> None:
    """A grpc.aio client with a service-config retry policy for RESOURCE_EXHAUSTED (10 ms
    backoff, 3 attempts) waits the refusal's pushback (the rest of a 1/second fixed
    window) and its one retry is admitted: two attempts, the second once the window ended
    (>= 0.9 s after the call that opened it); without the pushback it retried at once and
    was refused three times."""
    attempts = _Attempts()
    options = RateLimitOptions(default_rule="1/second", strategy="fixed-window", key=attempts)
    async with (_limited_echo(options) as port,
                _retrying_channel(port, max_attempts=3) as channel):
        unary = channel.unary_unary(method("Unary"))
        assert await unary(b"1", timeout=30) == b"e1|1"
        assert len(attempts.at) == 1
        assert await unary(b"2", timeout=30) == b"e1|2"  # refused, then retried
    assert len(attempts.at) == 3, attempts.at
    # the pushback is the wait to the window's end (1 s after the admitted call, whose
    # hit opened it), not a whole second from the refusal
    opened, retried = attempts.at[0], attempts.at[2]
    assert retried - opened >= 0.9, attempts.at


async def test_a_caller_whose_deadline_ends_first_is_told_not_to_retry() -> None:
    """When retry-after is beyond the call's deadline the pushback is -1 (gRFC A6: do not
    retry): the grpc client answers RESOURCE_EXHAUSTED after one attempt, instead of
    waiting out its deadline (DEADLINE_EXCEEDED) or retrying at once to be refused again."""
    attempts = _Attempts()  # a fixed window: retry-after is about 60 s, never near 5
    options = RateLimitOptions(default_rule="1/minute", strategy="fixed-window", key=attempts)
    async with (_limited_echo(options) as port,
                _retrying_channel(port, max_attempts=3) as channel):
        unary = channel.unary_unary(method("Unary"))
        await unary(b"1", timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"2", timeout=5)
    err = info.value
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert _trailer(err, "grpc-retry-pushback-ms") == ["-1"]
    assert int(_trailer(err, "retry-after")[0]) > 5
    assert len(attempts.at) == 2, attempts.at


async def test_meshkits_retry_waits_the_refusal_once(registry: LocalRegistry,
                                                     echo_servers: EchoFactory) -> None:
    """meshkit's own retry of RESOURCE_EXHAUSTED reads one of retry-after and the pushback
    (equal): it waits about 1 s once (not twice, not at once) and its retry is admitted."""
    attempts = _Attempts()
    await echo_servers("r1", rate_limit=RateLimitOptions(
        default_rule="1/second", strategy="fixed-window", key=attempts))
    policy = RetryPolicy(idempotent=True, max_attempts=3,
                         backoff=Backoff(base_delay_s=0.001, max_delay_s=0.002),
                         retryable_codes=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}))
    options = meshkit.DialOptions(insecure=True, outlier=None,
                                  retry=RetryOptions(default=policy))
    async with meshkit.dial("echo", registry=registry, options=options) as channel:
        unary = channel.unary_unary(method("Unary"))
        await unary(b"1", timeout=30)
        first = len(attempts.at)
        assert await unary(b"2", timeout=30) == b"r1|2"
    tried = attempts.at[first:]
    assert len(tried) == 2, attempts.at
    # one wait, to the end of the window the first call's hit opened (1 s; measured from
    # that hit: on a loaded box the second call's refusal came up to ~0.3 s after it, its
    # wait that much shorter), not two back to back (>= 2 s)
    assert tried[1] - attempts.at[first - 1] >= 0.9, attempts.at
    assert tried[1] - tried[0] < 1.95, tried


# --- Redis: the keys live in Redis, with TTLs; meshkit's own caches stay bounded ------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_redis_limiters_per_key_caches_stay_bounded(
        strategy: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Redis, meshkit remembers at most _MAX_WINDOW_KEYS (10,000 shipped) sliding-window
    storage keys and tracks no caller for eviction (Redis expires its own keys): 300
    distinct callers under a cap patched to 100 leave at most 100."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        skip_or_fail("no Redis answering on 127.0.0.1:6379")
    assert ratelimit._MAX_WINDOW_KEYS == 10_000
    monkeypatch.setattr(ratelimit, "_MAX_WINDOW_KEYS", 100)
    limiter = StorageLimiter(RateLimitOptions(
        default_rule="100/hour", strategy=strategy, storage_uri="async+redis://127.0.0.1:6379",
        key_prefix=f"meshkit-test-{uuid.uuid4().hex}", storage_timeout_s=5.0))
    try:
        for i in range(300):
            assert await limiter.check(METHOD, f"u{i}") is None
        seen = entries(limiter)
        assert seen["window keys"] <= 100, seen
        assert seen["tracked callers"] == 0 and seen["cached storage keys"] == 0, seen
        assert limiter.breaker.opened == 0  # every hit reached Redis
    finally:
        await limiter.aclose()
