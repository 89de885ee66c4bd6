"""A read-through cache of users for ``UserService.GetUser``, in memory or in Redis.

:func:`open_user_cache` builds a :class:`CachedUsers` from :class:`UserCacheOptions`;
the cache is chosen by URI as the rate limiter's storage is (``limits``' convention):
``memory://`` (this process only) or ``async+redis://[:password@]host:port[/db]`` (shared
by every replica; the ``coredis`` driver of the ``meshkit[redis]`` extra, the one
``limits`` itself uses). Values are serialized ``ecom.v1.User`` messages, kept ``ttl_s``
seconds under ``ecom:user:<id>``.

**Reads.** GetUser asks the cache; on a miss it reads the database and fills the cache.
**Writes** call :meth:`CachedUsers.changed` after their commit, which deletes the entry.

**The race guarded against** (stale set; Nishtala et al., *Scaling Memcache at
Facebook*, NSDI 2013, "leases"): reader R misses and reads version 1 from the database;
writer W commits version 2 and deletes the entry; R then fills the cache with version 1,
which would be served until the TTL ends. Here a miss takes a *lease* (a random token
under ``ecom:user-lease:<id>``, in the same atomic step as the lookup), a fill succeeds
only while its lease is still there, and an invalidation deletes entry and lease
together. So a fill whose read may predate a commit is refused: R's lease was deleted by
W. Concurrent misses on one id: the first takes the lease, the others read the database
without filling. A lease lives ``lease_s`` seconds, so a reader that dies holding one
blocks fills of that id for at most that long.

**Outages.** Any cache error, or a cache call slower than ``timeout_s`` (default 50 ms),
sends GetUser to the database: the caller sees no error. The outage is logged once
(warning ``user cache unavailable``) and its end once (info ``user cache recovered``). A
breaker (:class:`meshkit.resilience.ratelimit.StorageBreaker`, opened by one failure)
skips the cache for ``breaker_open_s`` (doubling up to ``breaker_max_open_s``) before one
call probes it again, so a down Redis costs no round trip per call. An invalidation that
fails is remembered (at most :data:`MAX_PENDING` ids) and retried before the cache is
used again, by a lookup or a fill (so a fill under a lease that the failed invalidation
should have revoked is refused once it has run); until then *other* replicas may read the
entry that was there before the write, for at most ``ttl_s``.
With ``memory://`` each process has its own cache: a change made through one replica
reaches another's cache after at most ``ttl_s``.

**Metric** ``ecom_user_cache_requests_total{result}`` on the process's meshkit registry
(:func:`meshkit.observability.default_registry`, served at ``/metrics``): ``hit``,
``miss`` (database read), ``error`` (the cache failed or is skipped during an outage;
database read).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter

from examples.ecom.proto import user_pb2
from examples.ecom.storage import _shown_url
from meshkit.errors import ConfigError
from meshkit.observability import default_registry
from meshkit.resilience.ratelimit import StorageBreaker

__all__ = [
    "MAX_PENDING",
    "CachedUsers",
    "Lookup",
    "MemoryUserCache",
    "RedisUserCache",
    "UserCache",
    "UserCacheOptions",
    "cache_requests",
    "open_user_cache",
]

_log = structlog.get_logger("examples.ecom.cache")

#: Most ids whose failed invalidation is remembered for a retry; beyond it they are
#: dropped with a warning (their entries then go stale for at most ``ttl_s``).
MAX_PENDING = 1000

_KEY = "ecom:user:"
_LEASE_KEY = "ecom:user-lease:"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache said about one id.

    ``data``: the serialized ``ecom.v1.User`` on a hit, else ``None``. ``lease``: on a
    miss, the token that allows this caller to fill the entry (``None`` when another
    caller holds the lease, or on a hit).
    """

    data: bytes | None
    lease: str | None = None


class UserCache(Protocol):
    """Where cached users live. Every method may raise on a storage failure; the
    :class:`CachedUsers` binding turns failures into database reads."""

    async def get(self, user_id: str) -> Lookup:
        """The entry of ``user_id``, or a miss that took the fill lease if it was free."""
        ...

    async def set(self, user_id: str, data: bytes, lease: str) -> bool:
        """Store ``data`` for ``user_id`` for the TTL if ``lease`` is still held; whether
        it was stored."""
        ...

    async def invalidate(self, *user_ids: str) -> None:
        """Delete the entries and leases of ``user_ids``."""
        ...

    async def aclose(self) -> None:
        """Release connections (the cache is not used afterwards)."""
        ...

    def reset(self) -> None:
        """After a failed or timed-out operation: drop what may be broken (connections a
        cancelled call left half-used), so the next operation starts clean."""
        ...


class MemoryUserCache:
    """A per-process :class:`UserCache`: at most ``max_entries`` users (least recently
    used evicted first), each for ``ttl_s`` seconds; leases last ``lease_s`` seconds.

    Args:
        ttl_s: seconds an entry is served (> 0).
        max_entries: most entries kept (>= 1).
        lease_s: seconds a miss's fill lease lasts (> 0).
        clock: monotonic seconds (default :func:`time.monotonic`), injectable for tests.
    """

    __slots__ = ("_clock", "_entries", "_lease_s", "_leases", "_max", "_ttl_s")

    def __init__(self, *, ttl_s: float, max_entries: int, lease_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._lease_s = lease_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._leases: dict[str, tuple[float, str]] = {}

    def __len__(self) -> int:
        """Entries held now (expired ones included until looked up or evicted)."""
        return len(self._entries)

    async def get(self, user_id: str) -> Lookup:
        """See :meth:`UserCache.get`; an expired entry is dropped and is a miss."""
        now = self._clock()
        found = self._entries.get(user_id)
        if found is not None:
            if found[0] > now:
                self._entries.move_to_end(user_id)
                return Lookup(found[1])
            del self._entries[user_id]
        held = self._leases.get(user_id)
        if held is not None and held[0] > now:
            return Lookup(None)
        if len(self._leases) >= self._max:  # abandoned leases: drop the expired ones
            self._leases = {k: v for k, v in self._leases.items() if v[0] > now}
        token = secrets.token_hex(8)
        self._leases[user_id] = (now + self._lease_s, token)
        return Lookup(None, token)

    async def set(self, user_id: str, data: bytes, lease: str) -> bool:
        """See :meth:`UserCache.set`; evicts the least recently used entry when full."""
        now = self._clock()
        held = self._leases.get(user_id)
        if held is None or held[1] != lease or held[0] <= now:
            return False
        del self._leases[user_id]
        self._entries[user_id] = (now + self._ttl_s, data)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return True

    async def invalidate(self, *user_ids: str) -> None:
        """See :meth:`UserCache.invalidate`."""
        for user_id in user_ids:
            self._entries.pop(user_id, None)
            self._leases.pop(user_id, None)

    async def aclose(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._leases.clear()

    def reset(self) -> None:
        """Nothing to drop: no connections."""


# KEYS: entry, lease; ARGV: token, lease ms. A hit returns the entry (a bulk string);
# a miss returns 1 if it took the lease, 0 if another caller holds it.
_GET_OR_LEASE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS: entry, lease; ARGV: token, value, ttl ms. Fill only under our own lease.
_FILL = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


class RedisUserCache:
    """A :class:`UserCache` in Redis, shared by replicas (coredis, no client retries).

    Entries are ``ecom:user:<id>`` (serialized ``ecom.v1.User``, ``PX`` = ``ttl_s``),
    leases ``ecom:user-lease:<id>`` (``PX`` = ``lease_s``); lookups and fills are Lua
    scripts, so each is one atomic round trip. Not for Redis Cluster (an invalidation
    deletes two keys in one ``DEL``).

    Args:
        url: ``redis://[:password@]host:port[/db]`` (``rediss://`` for TLS).
        ttl_s: seconds an entry lives (> 0).
        lease_s: seconds a miss's fill lease lives (> 0).
        timeout_s: connect and read timeout of the client, seconds.

    Raises ``coredis.exceptions.RedisError`` subclasses (e.g. ``ConnectionError``,
    ``TimeoutError``) from its methods when Redis fails.
    """

    __slots__ = ("_client", "_fill", "_get", "_lease_ms", "_ttl_ms")

    def __init__(self, url: str, *, ttl_s: float, lease_s: float, timeout_s: float) -> None:
        import coredis  # the meshkit[redis] extra; imported only when Redis is used
        from coredis.retry import NoRetryPolicy

        self._client: Any = coredis.Redis.from_url(
            url, connect_timeout=timeout_s, stream_timeout=timeout_s,
            retry_policy=NoRetryPolicy())
        self._get = self._client.register_script(_GET_OR_LEASE)
        self._fill = self._client.register_script(_FILL)
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._lease_ms = max(1, round(lease_s * 1000))

    async def get(self, user_id: str) -> Lookup:
        """See :meth:`UserCache.get` (one ``EVALSHA``)."""
        token = secrets.token_hex(8)
        found = await self._get(keys=[_KEY + user_id, _LEASE_KEY + user_id],
                                args=[token, self._lease_ms])
        if isinstance(found, bytes):
            return Lookup(found)
        return Lookup(None, token if found == 1 else None)

    async def set(self, user_id: str, data: bytes, lease: str) -> bool:
        """See :meth:`UserCache.set` (one ``EVALSHA``)."""
        stored = await self._fill(keys=[_KEY + user_id, _LEASE_KEY + user_id],
                                  args=[lease, data, self._ttl_ms])
        return bool(stored == 1)

    async def invalidate(self, *user_ids: str) -> None:
        """See :meth:`UserCache.invalidate` (one ``DEL``)."""
        if user_ids:
            await self._client.delete([p + u for u in user_ids for p in (_KEY, _LEASE_KEY)])

    async def aclose(self) -> None:
        """Close the client's connections."""
        self._client.connection_pool.disconnect()

    def reset(self) -> None:
        """Disconnect the pool's connections; the next operation connects again. A call
        cancelled by the binding's timeout can leave its connection in the pool with a
        closed transport (seen on uvloop: every later call failed at once with
        "unable to perform operation on <TCPTransport closed=True>" until coredis dropped
        it, about 8 s with a healthy Redis)."""
        self._client.connection_pool.disconnect()


@dataclass(frozen=True, slots=True, kw_only=True)
class UserCacheOptions:
    """How GetUser caches users.

    Args:
        uri: ``"memory://"`` (default; this process), ``"async+redis://host:6379[/db]"``
            (``redis://`` and ``rediss://`` accepted too; shared by replicas), or
            ``"off"`` / ``""`` for no cache.
        ttl_s: seconds an entry is served (default 60; > 0).
        max_entries: most entries of a ``memory://`` cache (default 10000; >= 1).
        lease_s: seconds a miss's fill lease lasts (default 2; > 0; see the module doc).
        timeout_s: seconds a cache call may take before it counts as an outage
            (default 0.05; > 0).
        breaker_open_s: seconds the cache is skipped after a failure before one call
            probes it (default 1; > 0).
        breaker_max_open_s: longest skip after repeated failed probes (default 5;
            >= ``breaker_open_s``).

    Every number of seconds is finite (NaN and infinity are refused).

    Raises:
        ConfigError: an unknown URI scheme or a bad number, quoted (password hidden).
    """

    uri: str = "memory://"
    ttl_s: float = 60.0
    max_entries: int = 10_000
    lease_s: float = 2.0
    timeout_s: float = 0.05
    breaker_open_s: float = 1.0
    breaker_max_open_s: float = 5.0

    def __post_init__(self) -> None:
        if self.uri not in ("", "off") and _scheme(self.uri) not in _SCHEMES:
            raise ConfigError(f"user cache uri must be 'memory://', 'async+redis://host:port' "
                              f"or 'off', got {_shown(self.uri)!r}")
        for name in ("ttl_s", "lease_s", "timeout_s", "breaker_open_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not value > 0:  # NaN too
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if isinstance(self.max_entries, bool) or not isinstance(self.max_entries, int) \
                or self.max_entries < 1:
            raise ConfigError(f"max_entries must be an integer >= 1, got {self.max_entries!r}")
        if not self.breaker_max_open_s >= self.breaker_open_s:
            raise ConfigError(f"breaker_max_open_s must be >= breaker_open_s "
                              f"({self.breaker_open_s}), got {self.breaker_max_open_s!r}")
        for name in ("ttl_s", "lease_s", "timeout_s", "breaker_open_s",
                     "breaker_max_open_s"):
            if math.isinf(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)!r}")

    @property
    def enabled(self) -> bool:
        """Whether a cache is configured (the URI is not ``off`` or empty)."""
        return self.uri not in ("", "off")


_SCHEMES = {"memory", "async+memory", "redis", "rediss", "async+redis", "async+rediss"}


def _scheme(uri: str) -> str:
    return uri.partition("://")[0] if "://" in uri else ""


def _shown(uri: str) -> str:
    """``uri`` as logs and errors quote it: user info (up to the *last* ``@``, so a
    password holding ``/``, ``?``, ``#`` or ``@`` too) and any query or fragment replaced
    by ``***``, as the store's URLs (:func:`examples.ecom.storage._shown_url`)."""
    return _shown_url(uri)


_REQUESTS: dict[CollectorRegistry, Counter] = {}


def cache_requests(registry: CollectorRegistry | None = None) -> Counter:
    """The ``ecom_user_cache_requests_total{result}`` counter of ``registry`` (default
    :func:`meshkit.observability.default_registry`), registered on first use."""
    reg = default_registry() if registry is None else registry
    found = _REQUESTS.get(reg)
    if found is None:
        found = _REQUESTS[reg] = Counter(
            "ecom_user_cache_requests", "GetUser cache lookups by result (hit, miss, error)",
            ["result"], registry=reg)
    return found


class CachedUsers:
    """The read-through binding GetUser uses: metrics, timeouts, breaker, outage logs.

    Build it with :func:`open_user_cache`. :meth:`get` never raises for cache trouble;
    exceptions of ``load`` (the database read) pass through unchanged.

    Args:
        cache: where entries live.
        options: timeouts and breaker settings (its ``uri`` is shown in logs).
        registry: metrics registry (default the process's meshkit registry).
        clock: monotonic seconds, injectable for tests.
    """

    __slots__ = ("_breaker", "_clock", "_down_since", "_error", "_hit", "_miss", "_name",
                 "_pending", "_timeout_s", "cache")

    def __init__(self, cache: UserCache, options: UserCacheOptions, *,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = cache
        self._name = _shown(options.uri)
        self._timeout_s = options.timeout_s
        self._clock = clock
        self._breaker = StorageBreaker(failures=1, open_s=options.breaker_open_s,
                                       max_open_s=options.breaker_max_open_s, clock=clock)
        requests = cache_requests(registry)
        self._hit = requests.labels(result="hit")
        self._miss = requests.labels(result="miss")
        self._error = requests.labels(result="error")
        self._down_since: float | None = None
        self._pending: set[str] = set()

    async def get(self, user_id: str,
                  load: Callable[[], Awaitable[user_pb2.User | None]]) -> user_pb2.User | None:
        """The user ``user_id`` from the cache, else from ``load()`` (filling the cache
        when this call holds the lease); ``None`` when ``load`` finds no such user.

        Invalidations that failed earlier (:meth:`changed`) are retried first, before the
        lookup and again before the fill, within the same ``timeout_s``; while they keep
        failing the cache is neither read nor filled (the database answers)."""
        lookup: Lookup | None = None
        user: user_pb2.User | None = None
        breaker = self._breaker
        if breaker.allow():
            probe = breaker.is_open  # let through while open: the probe
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._pending:
                        await self._flush_pending()
                    lookup = await self.cache.get(user_id)
                    user = None if lookup.data is None else user_pb2.User.FromString(
                        lookup.data)
            except Exception as exc:  # any cache failure: read the database
                lookup = None
                self._failed(exc, probe)
            except BaseException:  # cancelled mid-call: a probe must not hold its slot
                breaker.abandoned(probe)
                raise
            else:
                self._succeeded()
        if lookup is None:
            self._error.inc()
            return await load()
        if user is not None:
            self._hit.inc()
            return user
        self._miss.inc()
        user = await load()
        if user is not None and lookup.lease is not None and breaker.allow():
            probe = breaker.is_open
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._pending:  # a failed invalidation may be of this very id:
                        await self._flush_pending()  # it revokes our lease, refusing the fill
                    await self.cache.set(user_id, user.SerializeToString(), lookup.lease)
            except Exception as exc:
                self._failed(exc, probe)
            except BaseException:
                breaker.abandoned(probe)
                raise
            else:
                self._succeeded()
        return user

    async def changed(self, user_id: str) -> None:
        """Invalidate ``user_id`` after a committed write; never raises (but lets a
        cancellation through). If the cache cannot be reached, or the call is cancelled,
        the id is remembered and invalidated before the next use."""
        breaker = self._breaker
        if not breaker.allow():
            self._remember(user_id)
            return
        probe = breaker.is_open
        sent = (user_id, *self._pending)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.cache.invalidate(*sent)
        except Exception as exc:
            self._remember(user_id)
            self._failed(exc, probe)
        except BaseException:
            self._remember(user_id)
            breaker.abandoned(probe)
            raise
        else:
            # only what was sent: ids that failed meanwhile (another changed()) stay
            self._pending.difference_update(sent)
            self._succeeded()

    async def aclose(self) -> None:
        """Close the cache's connections."""
        await self.cache.aclose()

    async def _flush_pending(self) -> None:
        pending = list(self._pending)
        await self.cache.invalidate(*pending)
        self._pending.difference_update(pending)

    def _remember(self, user_id: str) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.add(user_id)
        else:
            _log.warning("user cache invalidation dropped: too many pending",
                         user_id=user_id, pending=len(self._pending))

    def _failed(self, exc: BaseException, probe: bool) -> None:
        # probe: is_open read right after allow(); calls already waiting on the cache when
        # it opened fail too and must not each double the open time
        self._breaker.failure(probe)
        self.cache.reset()  # a timed-out call may have left a broken connection behind
        if self._down_since is None:
            self._down_since = self._clock()
            _log.warning("user cache unavailable, reading the database", cache=self._name,
                         error=repr(exc) if str(exc) else type(exc).__name__)

    def _succeeded(self) -> None:
        self._breaker.success()
        if self._down_since is not None:
            _log.info("user cache recovered", cache=self._name,
                      outage_s=round(self._clock() - self._down_since, 3))
            self._down_since = None


def open_user_cache(options: UserCacheOptions, *,
                    registry: CollectorRegistry | None = None) -> CachedUsers | None:
    """A :class:`CachedUsers` for ``options`` (``None`` when its ``uri`` is ``off``).

    No connection is made here: a Redis that is down at start is an outage like any other.

    Raises:
        ConfigError: ``async+redis://`` without the ``coredis`` driver
            (``pip install 'meshkit[redis]'``), or a Redis URI it cannot parse (quoted
            as the logs quote it: no user info, query or fragment; never the driver's
            message, which can hold a piece of an unencoded password).
    """
    if not options.enabled:
        return None
    scheme = _scheme(options.uri).removeprefix("async+")
    cache: UserCache
    if scheme == "memory":
        cache = MemoryUserCache(ttl_s=options.ttl_s, max_entries=options.max_entries,
                                lease_s=options.lease_s)
    else:
        try:
            cache = RedisUserCache(options.uri.removeprefix("async+"), ttl_s=options.ttl_s,
                                   lease_s=options.lease_s, timeout_s=options.timeout_s)
        except ImportError as exc:
            raise ConfigError(f"user cache {_shown(options.uri)!r} needs the coredis driver: "
                              f"pip install 'meshkit[redis]'") from exc
        except ValueError:  # the driver's message may quote a piece of the password
            raise ConfigError(
                f"user cache uri {_shown(options.uri)!r} is malformed: a port that is not a"
                f" number 0..65535, a bad db or query, or a password holding '/', '?' or"
                f" '#' (percent-encode it: %2F, %3F, %23)") from None
    return CachedUsers(cache, options, registry=registry)
