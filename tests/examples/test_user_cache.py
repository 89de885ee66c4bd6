"""The GetUser cache (examples.ecom.cache): memory and real Redis, leases, outages, metric.

Redis tests use the shared Redis on 127.0.0.1:6379 (the ``shared_redis`` fixture: skipped
when absent, failed under CI=true); outages go through a loopback TCP proxy to it that
the tests cut and restore.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import aiosqlite
import coredis
import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

import meshkit
from examples.ecom.cache import (
    CachedUsers,
    Lookup,
    MemoryUserCache,
    RedisUserCache,
    UserCacheOptions,
    open_user_cache,
)
from examples.ecom.proto import user_pb2
from examples.ecom.storage import Store
from meshkit.discovery import registry_from_uri
from meshkit.errors import ConfigError
from tests.resilience.test_ratelimit import SHARED_REDIS_PORT
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import until

from .conftest import Stack, start_stack

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    """Monotonic seconds that tests advance by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(registry: CollectorRegistry) -> dict[str, float]:
    """``ecom_user_cache_requests_total`` by result."""
    return {r: registry.get_sample_value("ecom_user_cache_requests_total", {"result": r}) or 0.0
            for r in ("hit", "miss", "error")}


def user(user_id: str, name: str = "Ada") -> user_pb2.User:
    """A User message."""
    return user_pb2.User(id=user_id, email="ada@example.com", name=name)


@pytest.fixture
async def raw_redis(shared_redis: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A plain client to the shared Redis, to look at keys directly."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        shared_redis.removeprefix("async+"))
    yield client
    client.connection_pool.disconnect()


async def cached_stack(store: Store, options: UserCacheOptions,
                       registry: CollectorRegistry) -> tuple[Stack, CachedUsers]:
    """The example's servicers on a real server, GetUser through a cache from ``options``."""
    cache = open_user_cache(options, registry=registry)
    assert cache is not None
    return await start_stack(store, cache=cache), cache


async def close(stack: Stack, cache: CachedUsers) -> None:
    for closer in stack.closers:
        await closer()
    await cache.aclose()


async def rename_in_db(path: Path, user_id: str, name: str) -> None:
    """Change a user's name behind the servicer's back, as another writer would."""
    async with aiosqlite.connect(path) as db:
        await db.execute("UPDATE users SET name = ? WHERE id = ?", (name, user_id))
        await db.commit()


async def create(stack: Stack) -> user_pb2.User:
    return await stack.users.CreateUser(user_pb2.CreateUserRequest(
        email=f"u{uuid.uuid4().hex[:8]}@example.com", name="Ada", password="correct horse"))


def get(stack: Stack, user_id: str) -> Awaitable[user_pb2.User]:
    return stack.users.GetUser(user_pb2.GetUserRequest(user_id=user_id))  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- memory


async def test_memory_entries_expire_after_ttl() -> None:
    """An entry is served until ttl_s has passed, then it is a miss with a fresh lease."""
    clock = FakeClock()
    cache = MemoryUserCache(ttl_s=60, max_entries=10, lease_s=2, clock=clock)
    miss = await cache.get("u1")
    assert miss.data is None and miss.lease is not None
    assert await cache.set("u1", b"v1", miss.lease)
    clock.now += 59.9
    assert (await cache.get("u1")).data == b"v1"
    clock.now += 0.2
    again = await cache.get("u1")
    assert again.data is None and again.lease is not None


async def test_memory_is_bounded_least_recently_used_first() -> None:
    """Past max_entries the least recently used entry goes; a recent read keeps one."""
    cache = MemoryUserCache(ttl_s=60, max_entries=2, lease_s=2, clock=FakeClock())
    for uid in ("a", "b"):
        lease = (await cache.get(uid)).lease
        assert lease is not None and await cache.set(uid, uid.encode(), lease)
    assert (await cache.get("a")).data == b"a"  # a is now the most recent
    lease = (await cache.get("c")).lease
    assert lease is not None and await cache.set("c", b"c", lease)
    assert len(cache) == 2
    assert (await cache.get("a")).data == b"a"
    assert (await cache.get("b")).data is None


async def test_memory_lease_one_filler_and_invalidation_revokes_it() -> None:
    """Concurrent misses: only the first may fill; an invalidation revokes its lease."""
    clock = FakeClock()
    cache = MemoryUserCache(ttl_s=60, max_entries=10, lease_s=2, clock=clock)
    first, second = await cache.get("u1"), await cache.get("u1")
    assert first.lease is not None and second.lease is None
    await cache.invalidate("u1")
    assert not await cache.set("u1", b"stale", first.lease)
    assert (await cache.get("u1")).data is None
    # an abandoned lease lapses after lease_s
    clock.now += 2.1
    assert (await cache.get("u1")).lease is not None


def test_options_refuse_bad_values() -> None:
    """Bad options fail at construction, quoting the value and hiding a password."""
    with pytest.raises(ConfigError, match="'mongodb://h:1'"):
        UserCacheOptions(uri="mongodb://h:1")
    with pytest.raises(ConfigError) as info:
        UserCacheOptions(uri="memcached://:s3cret@h:1")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="ttl_s must be > 0, got 0"):
        UserCacheOptions(ttl_s=0)
    with pytest.raises(ConfigError, match="max_entries"):
        UserCacheOptions(max_entries=0)
    assert open_user_cache(UserCacheOptions(uri="off")) is None


@pytest.mark.parametrize("name", ["ttl_s", "lease_s", "timeout_s", "breaker_open_s",
                                  "breaker_max_open_s"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_options_refuse_nan_and_infinity(name: str, value: float) -> None:
    """NaN passes a ``<= 0`` check (``--user-cache-ttl-s nan`` parses): refused, quoted,
    as is an infinite number of seconds."""
    with pytest.raises(ConfigError, match=f"{name} .*{value}"):
        UserCacheOptions(**{name: value})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- servicer


async def test_get_user_miss_then_hit_and_metric_on_metrics_page(sqlite_store: Store,
                                                                 tmp_path: Path) -> None:
    """The first GetUser reads the database and fills the cache; the second is served
    from the cache (a change made behind its back is not seen); both are counted."""
    registry = CollectorRegistry()
    stack, cache = await cached_stack(sqlite_store, UserCacheOptions(), registry)
    try:
        created = await create(stack)
        assert await get(stack, created.id) == created
        await rename_in_db(tmp_path / "ecom.db", created.id, "Grace")
        assert (await get(stack, created.id)).name == "Ada"  # from the cache
        assert counts(registry) == {"hit": 1.0, "miss": 1.0, "error": 0.0}
        assert b'ecom_user_cache_requests_total{result="hit"} 1.0' in generate_latest(registry)
    finally:
        await close(stack, cache)


async def test_invalidation_after_a_write_no_stale_read(sqlite_store: Store,
                                                        tmp_path: Path) -> None:
    """After a committed change and changed(), GetUser returns the new value."""
    registry = CollectorRegistry()
    stack, cache = await cached_stack(sqlite_store, UserCacheOptions(), registry)
    try:
        created = await create(stack)
        await get(stack, created.id)
        await rename_in_db(tmp_path / "ecom.db", created.id, "Grace")
        await cache.changed(created.id)
        assert (await get(stack, created.id)).name == "Grace"
        assert (await get(stack, created.id)).name == "Grace"
        assert counts(registry) == {"hit": 1.0, "miss": 2.0, "error": 0.0}
    finally:
        await close(stack, cache)


@pytest.mark.parametrize("cache_kind", ["memory", "redis"])
async def test_update_user_invalidates_no_stale_read(
        cache_kind: str, store: Store, request: pytest.FixtureRequest) -> None:
    """GetUser (miss, fill), GetUser (hit), UpdateUser, then GetUser returns the new name:
    UpdateUser invalidated the entry after its commit. With the memory cache and with the
    shared Redis; on SQLite and PostgreSQL."""
    uri = "memory://" if cache_kind == "memory" else request.getfixturevalue("shared_redis")
    registry = CollectorRegistry()
    stack, cache = await cached_stack(store, UserCacheOptions(uri=uri, timeout_s=0.5),
                                      registry)
    uid = ""
    try:
        created = await create(stack)
        uid = created.id
        assert await get(stack, uid) == created
        assert await get(stack, uid) == created
        assert counts(registry) == {"hit": 1.0, "miss": 1.0, "error": 0.0}
        updated = await stack.users.UpdateUser(
            user_pb2.UpdateUserRequest(user_id=uid, name="Grace"))
        assert updated.name == "Grace"
        assert await get(stack, uid) == updated  # not the cached "Ada"
        assert await get(stack, uid) == updated  # refilled with the new value
        assert counts(registry) == {"hit": 2.0, "miss": 2.0, "error": 0.0}
    finally:
        await close(stack, cache)
        if uid and cache_kind == "redis":
            client: coredis.Redis[bytes] = coredis.Redis.from_url(uri.removeprefix("async+"))
            await client.delete([f"ecom:user:{uid}", f"ecom:user-lease:{uid}"])
            client.connection_pool.disconnect()


async def test_unknown_user_is_not_found_and_not_cached(stack: Stack) -> None:
    """NOT_FOUND passes through; nothing is cached for an id without a user."""
    import grpc

    registry = CollectorRegistry()
    cache = open_user_cache(UserCacheOptions(), registry=registry)
    assert cache is not None
    missing = str(uuid.uuid4())

    async def load() -> user_pb2.User | None:
        return None

    assert await cache.get(missing, load) is None
    assert await cache.get(missing, load) is None
    assert counts(registry)["miss"] == 2.0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(stack, missing)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def race_fill_against_write(cache: CachedUsers, user_id: str) -> user_pb2.User | None:
    """Reader misses and reads v1; a writer commits v2 and calls changed() before the
    reader fills; return what the next read finds."""
    read_started, write_done = asyncio.Event(), asyncio.Event()
    db = {"name": "v1"}

    async def slow_load() -> user_pb2.User | None:
        found = user(user_id, db["name"])  # the read happens before the write commits
        read_started.set()
        await write_done.wait()
        return found

    reader = asyncio.create_task(cache.get(user_id, slow_load))
    await read_started.wait()
    db["name"] = "v2"
    await cache.changed(user_id)
    write_done.set()
    assert (await reader).name == "v1"  # that caller saw the old value, as it should

    async def load() -> user_pb2.User | None:
        return user(user_id, db["name"])

    return await cache.get(user_id, load)


async def test_fill_racing_a_write_does_not_cache_the_old_value() -> None:
    """A fill whose database read predates a write's invalidation is refused (lease)."""
    cache = open_user_cache(UserCacheOptions(), registry=CollectorRegistry())
    assert cache is not None
    found = await race_fill_against_write(cache, "u-race")
    assert found is not None and found.name == "v2"


# ----------------------------------------------------------------------------- binding


class ScriptedCache(MemoryUserCache):
    """A memory cache whose get/invalidate fail on demand or wait on a gate."""

    def __init__(self) -> None:
        super().__init__(ttl_s=60.0, max_entries=100, lease_s=2.0)
        self.get_calls = 0
        self.fail_get = False
        self.get_gate: asyncio.Event | None = None
        self.get_entered = asyncio.Event()
        self.fail_invalidate: set[str] = set()
        self.invalidate_gate: dict[str, asyncio.Event] = {}
        self.invalidate_entered: dict[str, asyncio.Event] = {}

    async def get(self, user_id: str) -> Lookup:
        self.get_calls += 1
        if self.get_gate is not None:
            self.get_entered.set()
            await self.get_gate.wait()
        if self.fail_get:
            raise ConnectionError("cache down")
        return await super().get(user_id)

    async def invalidate(self, *user_ids: str) -> None:
        if self.fail_invalidate & set(user_ids):
            raise ConnectionError("cache down")
        for uid in user_ids:
            gate = self.invalidate_gate.get(uid)
            if gate is not None:
                self.invalidate_entered[uid].set()
                await gate.wait()
        await super().invalidate(*user_ids)


def scripted(cache: ScriptedCache, clock: FakeClock) -> CachedUsers:
    """A binding over ``cache``: breaker 1 s doubling to 5 s; a 5 s timeout, so the test
    decides when calls end."""
    return CachedUsers(cache, UserCacheOptions(timeout_s=5.0, breaker_open_s=1.0,
                                               breaker_max_open_s=5.0),
                       registry=CollectorRegistry(), clock=clock)


def loader(user_id: str, name: str = "Ada") -> Callable[[], Awaitable[user_pb2.User | None]]:
    """A ``load`` for :meth:`CachedUsers.get` returning ``user(user_id, name)``."""
    async def load() -> user_pb2.User | None:
        return user(user_id, name)
    return load


async def test_an_invalidation_failing_while_another_succeeds_is_retried() -> None:
    """changed(a) is slow and succeeds; meanwhile changed(b) fails and b is remembered.
    a's success must not forget b: the next GetUser of b is not the stale entry."""
    clock = FakeClock()
    cache = ScriptedCache()
    cached = scripted(cache, clock)
    await cached.get("b", loader("b", "old"))  # miss: filled
    assert (await cached.get("b", loader("b", "old"))).name == "old"  # type: ignore[union-attr]
    cache.invalidate_gate["a"] = asyncio.Event()
    cache.invalidate_entered["a"] = asyncio.Event()
    first = asyncio.create_task(cached.changed("a"))
    await asyncio.wait_for(cache.invalidate_entered["a"].wait(), 5)
    cache.fail_invalidate = {"b"}
    await asyncio.wait_for(cached.changed("b"), 5)  # fails: remembered
    cache.fail_invalidate = set()
    cache.invalidate_gate["a"].set()
    await asyncio.wait_for(first, 5)
    clock.now += 60.0  # past any breaker wait (the entry's TTL uses another clock)
    found = await asyncio.wait_for(cached.get("b", loader("b", "new")), 5)
    assert found is not None and found.name == "new"


async def test_a_fill_retries_failed_invalidations_first() -> None:
    """Reader R misses (takes the lease) and reads v1; writer W commits v2 and its
    invalidation fails (the id remembered, R's lease not revoked); the cache is back when
    R fills. The fill ran without retrying the failed invalidation (only a lookup did), so
    it stored v1 under the lease the invalidation should have revoked: against "a fill
    whose read may predate a commit is refused". Now the pending invalidations are
    retried before the fill too: the lease is gone and the fill refused."""
    clock = FakeClock()
    cache = ScriptedCache()
    cached = scripted(cache, clock)
    read, release = asyncio.Event(), asyncio.Event()

    async def slow_load() -> user_pb2.User | None:
        found = user("u", "v1")  # the database read, before the write commits
        read.set()
        await release.wait()
        return found

    reader = asyncio.create_task(cached.get("u", slow_load))
    await asyncio.wait_for(read.wait(), 5)  # R holds the lease
    cache.fail_invalidate = {"u"}
    await asyncio.wait_for(cached.changed("u"), 5)  # W's invalidation fails: remembered
    cache.fail_invalidate = set()
    clock.now += 1.5  # the breaker is due to probe: R's fill is the probe
    release.set()
    assert (await asyncio.wait_for(reader, 5)).name == "v1"  # type: ignore[union-attr]
    assert len(cache) == 0, "the fill stored v1 after v2 was committed"
    found = await asyncio.wait_for(cached.get("u", loader("u", "v2")), 5)
    assert found is not None and found.name == "v2"


async def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    """The breaker's half-open probe (a GetUser's lookup) is cancelled by its caller: the
    breaker must not stay "probing" for ever; a later GetUser asks the cache again."""
    clock = FakeClock()
    cache = ScriptedCache()
    cached = scripted(cache, clock)
    cache.fail_get = True
    await cached.get("u1", loader("u1"))  # the cache fails: the breaker opens
    cache.fail_get = False
    clock.now += 1.5  # due for a probe
    cache.get_gate = asyncio.Event()
    probe = asyncio.create_task(cached.get("u1", loader("u1")))
    await asyncio.wait_for(cache.get_entered.wait(), 5)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    cache.get_gate = None
    clock.now += 60.0
    calls = cache.get_calls
    await asyncio.wait_for(cached.get("u1", loader("u1")), 5)
    assert cache.get_calls == calls + 1


async def test_concurrent_failures_of_one_outage_open_the_breaker_once() -> None:
    """Three lookups waiting on the cache fail together: the breaker opens for
    breaker_open_s (1 s), not doubled by each (4 s): probed again after 1.5 s."""
    clock = FakeClock()
    cache = ScriptedCache()
    cached = scripted(cache, clock)
    cache.get_gate = asyncio.Event()
    cache.fail_get = True
    calls = [asyncio.create_task(cached.get(u, loader(u))) for u in ("a", "b", "c")]
    await until(lambda: cache.get_calls == 3, timeout_s=5, interval_s=0.01,
                what="three lookups waiting on the cache")
    cache.get_gate.set()
    await asyncio.wait_for(asyncio.gather(*calls), 5)
    cache.get_gate = None
    cache.fail_get = False
    clock.now += 1.5
    before = cache.get_calls
    await asyncio.wait_for(cached.get("a", loader("a")), 5)
    assert cache.get_calls == before + 1


# ----------------------------------------------------------------------------- redis


async def test_redis_fill_hit_ttl_and_invalidation(shared_redis: str,
                                                   raw_redis: coredis.Redis[bytes]) -> None:
    """In Redis: a miss fills ecom:user:<id> with the serialized User and a TTL, the next
    read hits, changed() deletes the key, and a racing fill is refused there too."""
    registry = CollectorRegistry()
    # timeout_s: the default 50 ms counts a slow call on a loaded box as an outage (no fill)
    cache = open_user_cache(UserCacheOptions(uri=shared_redis, ttl_s=30, timeout_s=5.0),
                            registry=registry)
    assert cache is not None and isinstance(cache.cache, RedisUserCache)
    uid = f"test-{uuid.uuid4()}"
    loads = 0

    async def load() -> user_pb2.User | None:
        nonlocal loads
        loads += 1
        return user(uid)

    try:
        assert await cache.get(uid, load) == user(uid)
        stored = await raw_redis.get(f"ecom:user:{uid}")
        assert stored is not None and user_pb2.User.FromString(stored) == user(uid)
        assert 29_000 < await raw_redis.pttl(f"ecom:user:{uid}") <= 30_000
        assert not await raw_redis.exists([f"ecom:user-lease:{uid}"])
        assert await cache.get(uid, load) == user(uid)
        assert loads == 1 and counts(registry) == {"hit": 1.0, "miss": 1.0, "error": 0.0}
        await cache.changed(uid)
        assert not await raw_redis.exists([f"ecom:user:{uid}"])
        found = await race_fill_against_write(cache, uid)
        assert found is not None and found.name == "v2"
    finally:
        await raw_redis.delete([f"ecom:user:{uid}", f"ecom:user-lease:{uid}"])
        await cache.aclose()


async def test_redis_fill_after_a_failed_invalidation_is_refused(
        shared_redis: str, raw_redis: coredis.Redis[bytes]) -> None:
    """Replica A: reader R misses (takes the lease) and reads v1; writer W commits v2 and
    A's invalidation cannot reach Redis (connection refused: remembered, R's lease still
    there); Redis is back and R's fill, the breaker's probe, stored v1 under that lease
    (only a lookup retried failed invalidations). Replica B, on the same Redis, then
    served the old user for up to ``ttl_s`` after the write had committed. Now the fill
    retries the invalidation first: it revokes the lease, the fill is refused, and B
    reads v2 from its database."""
    uid = f"u-{uuid.uuid4().hex}"
    db = {"name": "v1"}
    read, release = asyncio.Event(), asyncio.Event()

    async def slow_load() -> user_pb2.User | None:
        found = user(uid, db["name"])  # the database read, before the write commits
        read.set()
        await release.wait()
        return found

    async def load() -> user_pb2.User | None:
        return user(uid, db["name"])

    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        a = open_user_cache(UserCacheOptions(
            uri=f"async+redis://{proxy.address}", timeout_s=1.0, breaker_open_s=0.2,
            breaker_max_open_s=0.4), registry=CollectorRegistry())
        b = open_user_cache(UserCacheOptions(uri=shared_redis, timeout_s=1.0),
                            registry=CollectorRegistry())
        assert a is not None and b is not None
        try:
            reader = asyncio.create_task(a.get(uid, slow_load))
            await asyncio.wait_for(read.wait(), 5)  # R missed and holds the lease
            db["name"] = "v2"  # W commits
            await proxy.stop()  # Redis unreachable for W's invalidation
            await a.changed(uid)  # fails: remembered
            await proxy.start()
            await asyncio.sleep(0.5)  # Redis back; A's breaker is due to probe (0.2 s)
            release.set()
            assert (await asyncio.wait_for(reader, 5)).name == "v1"  # type: ignore[union-attr]
            assert await raw_redis.get(f"ecom:user:{uid}") is None
            seen = await b.get(uid, load)
            assert seen is not None and seen.name == "v2", seen
        finally:
            await a.aclose()
            await b.aclose()
            await raw_redis.delete([f"ecom:user:{uid}", f"ecom:user-lease:{uid}"])


async def wait_for_hit(stack: Stack, user_id: str, registry: CollectorRegistry) -> None:
    """Call GetUser until one is served from the cache (the breaker probes again)."""
    async def hit() -> bool:
        before = counts(registry)["hit"]
        await get(stack, user_id)
        return counts(registry)["hit"] > before

    await until(hit, timeout_s=10, interval_s=0.05, what="a cache hit after recovery")


@pytest.mark.parametrize("fault", ["refused", "blackhole"])
async def test_redis_outage_degrades_to_the_database_and_recovers(
        fault: str, shared_redis: str, sqlite_store: Store, tmp_path: Path) -> None:
    """With Redis cut (connections refused, or a black hole that only times out) GetUser
    still answers from the database with no error to the caller, counted as ``error``
    and logged once; a write meanwhile is invalidated once Redis is back, and the cache
    serves hits again."""
    async with TcpProxy("127.0.0.1", SHARED_REDIS_PORT) as proxy:
        registry = CollectorRegistry()
        # a 0.5 s cache timeout: a margin for a loaded box before the fault
        options = UserCacheOptions(uri=f"async+redis://{proxy.address}", timeout_s=0.5,
                                   breaker_open_s=0.1, breaker_max_open_s=0.2)
        stack, cache = await cached_stack(sqlite_store, options, registry)
        uid = ""
        try:
            created = await create(stack)
            uid = created.id
            await get(stack, uid)
            await get(stack, uid)
            assert counts(registry) == {"hit": 1.0, "miss": 1.0, "error": 0.0}
            if fault == "refused":
                await proxy.stop()
            else:
                proxy.blackhole()
            with structlog.testing.capture_logs() as logs:
                for _ in range(5):
                    assert await get(stack, uid) == created
                await rename_in_db(tmp_path / "ecom.db", uid, "Grace")
                await cache.changed(uid)  # cannot reach Redis: remembered
                assert (await get(stack, uid)).name == "Grace"  # from the database
                assert counts(registry)["error"] == 6.0
                await proxy.start()
                await wait_for_hit(stack, uid, registry)
            assert (await get(stack, uid)).name == "Grace"  # not the entry from before
            events = [e["event"] for e in logs if e["log_level"] in ("warning", "info")]
            assert events == ["user cache unavailable, reading the database",
                              "user cache recovered"]
        finally:
            await close(stack, cache)
            if uid:
                client: coredis.Redis[bytes] = coredis.Redis.from_url(
                    shared_redis.removeprefix("async+"))
                await client.delete([f"ecom:user:{uid}", f"ecom:user-lease:{uid}"])
                client.connection_pool.disconnect()


async def test_redis_down_at_start_is_an_outage_not_a_crash(sqlite_store: Store) -> None:
    """A cache pointed at a closed port: GetUser answers from the database; error counted."""
    registry = CollectorRegistry()
    from tests.support.ports import free_port

    stack, cache = await cached_stack(
        sqlite_store, UserCacheOptions(uri=f"async+redis://127.0.0.1:{free_port()}"), registry)
    try:
        created = await create(stack)
        assert await get(stack, created.id) == created
        assert await get(stack, created.id) == created
        assert counts(registry) == {"hit": 0.0, "miss": 0.0, "error": 2.0}
    finally:
        await close(stack, cache)



_ROOT = Path(__file__).resolve().parents[2]


COLD_CONNECTION_S = 0.4  # how long the proxy holds the first Redis connection: > 50 ms


async def hold_first_connection(proxy: TcpProxy, hold_s: float) -> float:
    """With ``proxy`` black-holed: wait (up to 30 s) for its first connection, keep it
    held ``hold_s`` seconds more (no byte relayed either way), then let everything flow.
    Returns the seconds the first connection was held.

    Raises:
        AssertionError: no connection came within 30 s (the proxy flows anyway).
    """
    try:
        await until(lambda: proxy.accepted > 0, timeout_s=30.0, interval_s=0.005,
                    what="a first connection to the Redis proxy")
        held_from = time.monotonic()
        await asyncio.sleep(hold_s)
        return time.monotonic() - held_from
    finally:
        await proxy.start()  # heals the black hole: later connections are fast


async def test_the_redis_cache_is_read_again_after_a_timed_out_first_call(
    tmp_path: Path, shared_redis: str,
) -> None:
    """The README's "GetUser reads through a user cache ..., chosen by URI ...:
    `--user-cache memory://` (the default; per process) or `async+redis://127.0.0.1:6379`
    (shared by replicas) ... A cache that fails or answers slower than 50 ms sends GetUser
    to the database (no error to the caller; logged once, a breaker skips the cache for
    1..5 s). `ecom_user_cache_requests_total{result="hit|miss|error"}` is on `/metrics`".

    Started as the README shows (``python -m examples.ecom.user_service --user-cache
    async+redis://...``, on uvloop through ``meshkit.run``), with a healthy Redis
    answering in about a millisecond: the first GetUser's cold connection takes longer
    than the 50 ms bound and is cancelled; on uvloop the cancelled connection stayed in
    coredis' pool closed, so the next probes, after the breaker's 1 s and 2 s, failed at
    once with RuntimeError "unable to perform operation on <TCPTransport closed=True ...>;
    the handler is closed". Every GetUser of the first ~8 s was counted ``error`` and read
    from the database although Redis never failed; a failure now drops the pool's
    connections (``RedisUserCache.reset``).

    A slow cold connection is not left to the machine (a fast one fits in 50 ms and never
    shows the fault): the service reaches the shared Redis through a loopback proxy that
    holds its first connection ``COLD_CONNECTION_S`` (no byte relayed either way) and
    relays later ones at once. The test checks that the proxy did hold one.
    """
    from examples.ecom.proto import user_pb2, user_pb2_grpc

    reg_dir = tmp_path / "reg"
    env = dict(os.environ, MESHKIT_REGISTRY=f"local://{reg_dir}", PYTHONPATH=str(_ROOT))
    env.pop("MESHKIT_CERT_DIR", None)
    (tmp_path / "jwt").mkdir()
    proxy = TcpProxy("127.0.0.1", int(shared_redis.rsplit(":", 1)[1]))
    await proxy.start()
    proxy.blackhole()  # until the first connection has been held COLD_CONNECTION_S
    holder = asyncio.create_task(hold_first_connection(proxy, COLD_CONNECTION_S))
    proc = subprocess.Popen(  # noqa: ASYNC220 - the README's service, started once
        [sys.executable, "-m", "examples.ecom.user_service", "--insecure",
         "--db", f"sqlite:///{tmp_path / 'users.db'}", "--jwt-dir", str(tmp_path / "jwt"),
         "--user-cache", f"async+redis://{proxy.address}"],
        cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    registry = registry_from_uri(f"local://{reg_dir}")

    async def metrics(admin_port: str) -> dict[str, float]:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
            text = await resp.text()
        counts = {}
        for line in text.splitlines():
            if line.startswith("ecom_user_cache_requests_total{"):
                result = line.split('result="', 1)[1].split('"', 1)[0]
                counts[result] = float(line.rsplit(" ", 1)[1])
        return counts

    try:
        listed: frozenset[object] = frozenset()
        async with meshkit.dial("userd", registry=registry,
                                options=meshkit.DialOptions(insecure=True)) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            created = await users.CreateUser(
                user_pb2.CreateUserRequest(email=f"u{time.time_ns()}@example.com",
                                           name="A", password="correct horse"),
                timeout=30.0, wait_for_ready=True)
            async for found in registry.watch("userd"):
                listed = found
                break
            assert listed
            admin_port = next(iter(listed)).meta["admin_port"]  # type: ignore[attr-defined]
            # the first GetUser opens the held (cold) connection and times out
            await users.GetUser(user_pb2.GetUserRequest(user_id=created.id), timeout=5.0)
            held_s = await asyncio.wait_for(holder, 30.0)
            # the premise: the first connection really was slower than the 50 ms bound
            assert held_s >= COLD_CONNECTION_S - 0.01, held_s
            # up to four more GetUsers 1.2 s apart: past the breaker's 1 s and 2 s skips;
            # the metric is read after each, and the test ends once the cache was read
            # (the bug counted every GetUser of the first ~8 s an error: all of them)
            for _ in range(4):
                await asyncio.sleep(1.2)
                await users.GetUser(user_pb2.GetUserRequest(user_id=created.id),
                                    timeout=5.0)
                counts = await metrics(admin_port)
                if counts.get("hit", 0) + counts.get("miss", 0) >= 1:
                    break
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        await registry.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await proxy.close()
    # Redis is healthy: after the breaker's skip the cache must be read again
    assert counts.get("hit", 0) + counts.get("miss", 0) >= 1, counts
