"""Rate limiting for grpc.aio servers, on the ``limits`` library.

:class:`RateLimitInterceptor` is a standard ``grpc.aio.ServerInterceptor``. With
:func:`meshkit.serve` give its options, ``ServeOptions(rate_limit=RateLimitOptions(...))``:
the server builds the interceptor and puts it in its place in the chain, after
authentication (``ServeOptions.interceptors`` refuses a ``RateLimitInterceptor`` with a
:class:`~meshkit.errors.ConfigError`); on a plain ``grpc.aio`` server pass
``RateLimitInterceptor(options)`` in ``grpc.aio.server(interceptors=...)`` (and ``await
aclose()`` it once the server has stopped). It counts calls per *(method, caller)* and
rejects the calls over the limit before the handler runs; all four call kinds (unary and
the three streaming kinds) are limited, a stream counting once when it opens.

Rules (:class:`RateLimitOptions`) are strings in ``limits`` notation, ``"100/second"`` or
``"10 per minute;1000 per hour"`` (every part must admit the call; parts are counted in
order, so a call refused by a later part was counted by the earlier ones). ``rules`` maps a
method pattern (:mod:`meshkit._methods`: ``"/ecom.v1.OrderService/PlaceOrder"``,
``"OrderService/PlaceOrder"``, ``"OrderService/*"``, ``"*"``) to a rule, or to ``None`` to
exempt it; an exact pattern wins, then the longest glob, then ``default_rule``. Each method
has its own budget per caller even when its rule comes from a glob or the default. The
health service (``grpc.health.v1.Health``'s ``Check``, ``Watch`` and ``List``, as the
server registered them: orchestrators' probes, Consul's gRPC checks) is limited only by a
``rules`` key naming a service (``"grpc.health.v1.Health/*"``, ``"Health/Check"``), never
by ``default_rule`` nor a catch-all glob (``"*"``, ``"*/Check"``): a probe refused, or
failed closed in a storage outage, takes the replica out of service; another name under
its path (``/grpc.health.v1.Health/X``, a catch-all generic handler's) is limited as any
other method. Under
:func:`meshkit.serve`, a method the server did not register (a name a caller made up for
a catch-all generic handler, not in ``ServeOptions.generic_methods``) is counted under its
rule's name instead (:meth:`StorageLimiter.counted_as`), all such methods one budget per
rule and caller: a new name per call is no new budget. With no
``default_rule`` (the default) unmatched methods are not limited. The rule of a method is
resolved once and cached; a method with no rule has its handler returned untouched.

Callers are told apart by a key function ``(method, context) -> str``: by default
:func:`by_peer`, the peer's IP address without the port (a global IPv6 one,
``2000::/3``, by its /64); :func:`by_metadata` keys by a
request header (``by_metadata("x-user")``). Keys by SPIFFE ID or JWT ``sub`` plug in the
same way: any callable reading ``context.auth_context()`` or metadata set by the
authentication interceptor placed before this one.

Algorithms (``strategy``): ``"fixed-window"``, ``"moving-window"`` and
``"sliding-window-counter"`` (default: constant storage per key like the fixed window,
without its double burst at window edges). Counts live in ``storage_uri``: ``"memory://"``
(default, per process; its windows are timed on the monotonic clock, so a step of the
wall clock moves none: :class:`SweepThrottledMemoryStorage`) or
``"async+redis://127.0.0.1:6379"`` for one limit shared by all replicas (needs
``limits[async-redis]``, i.e. the ``coredis`` driver; its windows stay on the wall
clock, which the replicas share: Redis' key expiry, and for the moving window the
replicas' timestamps). A strategy the storage cannot run is refused when the options are
built, like every other bad value (:class:`~meshkit.errors.ConfigError` quoting it).

A ``memory://`` limiter keeps the counts of at most ``max_keys`` callers (default
:data:`DEFAULT_MAX_KEYS`, 100,000; a caller is a method and a caller key): a caller seen
for the first time beyond that makes it forget the least recently used one, which
**starts a fresh window** at its next call (as Envoy bounds its dynamic descriptors with
an LRU). A client choosing its own key (a
header read by :func:`by_metadata`, peers behind a NAT pool) can otherwise grow memory by
one count per new key for the whole window; it can also, by sending ``max_keys`` new keys,
evict other callers, so key by an identity the chain verified where callers are not
trusted. Evictions are counted in :attr:`StorageLimiter.keys_evicted`, the first one
logged as a warning (``rate limit callers evicted``). A caller whose windows have ended
is forgotten (uncounted) after the storage's next sweep, as its counts are. Other storages
keep their counts themselves (Redis expires its keys): ``max_keys`` set with one is
refused (:class:`~meshkit.errors.ConfigError`).

On Redis every hit is one atomic round trip: a Lua script of ``limits`` (for the fixed
window its ``incr_expire.lua``: the count and the window's expiry set together, never a
counter left without a TTL) run once. A Redis call is not retried by the client (coredis'
``NoRetryPolicy``; ``coredis.Redis.from_url`` would retry twice on a connection error or
timeout): a hit is not idempotent, and one whose answer was lost (connection reset after
Redis ran it) would be counted again. Such a call is a storage failure, handled as the
table below says; the call after it counts normally. (``async+redis+cluster`` keeps
coredis' cluster retries, which also follow a failed node to its replacement.) All
callers' hits share a connection: an error reply to one hit (``NOSCRIPT``, every hit's
while the script cache is empty: a Redis just started or restarted; ``WRONGTYPE``,
``OOM``, ``BUSY``...) keeps it, where coredis dropped it, failing the other hits in
flight on it; the reply is that hit's storage failure alone. ``READONLY`` and
``MASTERDOWN`` (a server a failover demoted) still drop it, so that the next hit
reconnects: through Sentinel to the new primary. A hit slower than
``storage_timeout_s`` no longer drops it either, failing the others in flight: it is
kept while it answers, and dropped when it has been silent for as long again (a server
gone without a word: :class:`_KeptInStep`). A connection coredis drops (those
replies, a silent server) and reopens is not cut by its old transport's end (over TLS
that came after the new one was up on a loaded host, failing the hits in flight:
:class:`_CurrentTransportOnly`).

==========================================  =============================================
outcome                                     gRPC status
==========================================  =============================================
over the limit                              ``RESOURCE_EXHAUSTED``, trailing metadata
                                            ``retry-after: <whole seconds, >= 1>`` and
                                            ``grpc-retry-pushback-ms`` (below); the
                                            message names the method and the limit, never
                                            a caller key
storage down, ``on_storage_error="allow"``  the call proceeds (default: fail open)
storage down, ``on_storage_error="deny"``   ``UNAVAILABLE`` (no retry-after), trailing
                                            metadata ``meshkit-ratelimit-unavailable:
                                            1`` (below)
==========================================  =============================================

``grpc-retry-pushback-ms`` (gRFC A6 "Pushback") is the wait in milliseconds, or ``-1``
("do not retry") when the call's deadline ends before then or the wait is longer than
A6's signed 32-bit integer holds (2**31 - 1 ms, about 24.86 days: a ``"1/month"`` rule's
refusal; ``retry-after`` still says when). With ``memory://``, and with Redis for the
sliding window counter and the fixed window (whose ends Redis gives in milliseconds,
``PTTL``) and the moving window (its hits stamped in fractional seconds by the replicas'
clocks: the wait is as exact as those clocks agree, the skew ``retry-after`` has too; a
caller told too early is refused again with the rest), it is the wait to the
millisecond (rounded up), which ``retry-after`` rounds up to whole seconds: a
"1/second" caller refused 0.6 s into its window may retry in 400 ms, and one whose
deadline is 0.5 s away is told so, not ``-1``. Other storages send ``retry-after`` x
1000. gRPC clients whose
retry or hedging policy lists ``RESOURCE_EXHAUSTED`` (grpc-go, C-core and its wrappers,
Java) read only this trailer: without it they retried at their own backoff, at once,
and were refused again until their attempts ran out. With it they wait out the refusal
(their backoff restarts after it), and one whose deadline would end first gets
``RESOURCE_EXHAUSTED`` at once instead of ``DEADLINE_EXCEEDED`` after waiting. Clients
that do not retry it ignore it. meshkit's own retry reads the first of the two trailers
grpc hands on, which is ``grpc-retry-pushback-ms`` (grpc core puts it first whatever
order the server sets them in): it waits the milliseconds (measured: a "1/second" call
refused 0.3 s in with a 0.9 s deadline was admitted 0.70 s later), and gives up on
``-1``.

Failing closed answers ``UNAVAILABLE`` rather than ``RESOURCE_EXHAUSTED`` because the
caller is not over any quota: the server cannot decide, which is the transient "try again
with backoff" condition ``UNAVAILABLE`` means, and it must not carry a ``retry-after``
the limiter cannot compute. It carries the trailer ``meshkit-ratelimit-unavailable: 1``
(:data:`STORAGE_REFUSAL_METADATA`), and a mesh client (:func:`meshkit.dial`) reports such
an attempt to its balancer as no endpoint's outcome (:func:`storage_refusal`) while the
replicas refuse so together, as it does a deadline admission refusal: not an
outlier-ejection failure (``UNAVAILABLE`` is in ``OutlierOptions.failure_codes``'
default), not P2C's overload penalty. Without it an outage of the storage every replica
shares (Redis) ejected up to ``max_ejection_percent`` of healthy replicas, which stayed
out for ``base_ejection_s`` after the storage came back. A replica refusing so *alone*
or with a few others (its own way to the storage broken: a wrong password or URI, its
network, its zone cut off; most replicas reaching it and answering) is counted as
failing, as any ``UNAVAILABLE``, or it would fail its share of the calls for good: the
client counts a refusal as the shared storage's when more than half of its endpoints
refused so within ``meshkit.channel.SHARED_REFUSAL_WINDOW_S`` (ten seconds) or it is an
endpoint's first in that window, and as the endpoint's own once the other endpoints took
a few calls since, at most half of the endpoints refusing so. It is no nack
(:func:`~meshkit.resilience.is_nack`), so gRFC A6 semantics hold: a client retries it
only as the method's retry policy says for ``UNAVAILABLE`` (within its retry budget), not
on another endpoint whatever the method, since another replica, sharing the storage,
would most likely refuse it too and a transparent retry would double every replica's load
in the outage. A storage outage is logged once as a warning on
``meshkit.resilience.ratelimit`` when it starts and once as info when it ends, at most
one of each in full per :data:`STORAGE_OUTAGE_LOG_INTERVAL_S` (a storage failing every
other hit starts and ends an outage per failure: the later ones are counted, ``rate limit
storage outages`` and ``rate limit storage recoveries`` with ``count=``); a storage round
trip slower than ``storage_timeout_s`` counts as a failure. Each round trip has the
timeout to itself: the hit (one per part of a rule) and, once a hit refused, the reads of
the window state ``retry-after`` comes from. A call a hit refused is refused whatever
those reads do: one that fails or is too slow makes ``retry-after`` the window's length
(rounded up), and is not a storage failure; it is logged at debug level as ``rate limit
window not read``, once per limit and error type and :data:`WINDOW_READ_LOG_INTERVAL_S`,
the later ones counted in one ``rate limit windows not read`` line (``count=``) when the
interval ends (:class:`~meshkit._log.RepeatLog`): not one line per refused call.

A storage that hangs would make every limited call wait ``storage_timeout_s``. A breaker
(:class:`StorageBreaker`) opens after ``breaker_failures`` consecutive storage failures:
while open, calls skip the storage and fail open or closed at once, as
``on_storage_error`` says; after ``breaker_open_s`` one call probes the storage (the
others keep skipping it), closing the breaker when it answers and opening it again, for
twice as long up to ``breaker_max_open_s``, when it does not. An error reply about one
caller's key (``WRONGTYPE``, ``ERR value is not an integer``: the key holds something
else) is that caller's failure alone: ``on_storage_error`` applies to its call and
``storage_errors`` counts it, but Redis answered, so the breaker and the outage log take
it as an answer (one bad key opened the breaker for every caller); it is logged as a
warning, ``rate limit key unusable``, once per error type and interval.

Chain order (server): tracing -> metrics -> authn -> authz -> **rate limit** -> handler.

Example::

    limits = RateLimitOptions(
        default_rule="100/second",
        rules={"/ecom.v1.OrderService/PlaceOrder": "10 per minute;1000 per hour",
               "/grpc.health.v1.Health/*": None},
        storage_uri="async+redis://127.0.0.1:6379", key=by_metadata("x-user"))
    await meshkit.serve("orderd", servicers, options=ServeOptions(rate_limit=limits))
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import dis
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import re
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import CodeType, FunctionType, SimpleNamespace
from typing import Any, Literal, Protocol, cast

import grpc
import structlog
from limits import strategies as _sync_strategies
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.storage.redis.coredis import CoredisBridge
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.aio.strategies import RateLimiter as _LimitsStrategy
from limits.errors import ConfigurationError
from limits.storage import MemoryStorage, storage_from_string
from limits.util import WindowStats

from meshkit._config import (
    CONSUMED_HEADERS,
    check_clock,
    check_int,
    check_number,
    check_seconds,
    check_secret_holder,
)
from meshkit._fields import FrozenMap
from meshkit._fork import name_dev_null, reset_in_forked_child
from meshkit._handlers import Before, WrappingInterceptor
from meshkit._log import RepeatLog, is_sensitive_key
from meshkit._metadata import call_metadata
from meshkit._uris import split_userinfo
from meshkit.errors import ConfigError
from meshkit.resilience._ratelimit_policy import (
    _STORAGE_OPTIONS,
    IPV6_NETWORK_PREFIX_LEN,
    STRATEGIES,
    OutageTracker,
    Rule,
    RuleTable,
    check_redis_options,
    peer_key,
    redact_uri,
    retry_after_s,
    sliding_window_wait_s,
    storage_class,
    with_tls_defaults,
)

__all__ = [
    "DEFAULT_MAX_KEYS",
    "STORAGE_REFUSAL_METADATA",
    "KeyFunc",
    "Limiter",
    "OnStorageError",
    "RateLimitInterceptor",
    "RateLimitOptions",
    "Rejection",
    "StorageBreaker",
    "StorageLimiter",
    "Strategy",
    "SweepThrottledMemoryStorage",
    "by_identity",
    "by_metadata",
    "by_peer",
    "by_peer_network",
    "rejected_by_rate_limit",
    "storage_refusal",
]

_log = structlog.get_logger("meshkit.resilience.ratelimit")

STORAGE_OUTAGE_LOG_INTERVAL_S = 60.0
"""Seconds within which a limiter logs one storage outage's start (``rate limit storage
unavailable``, warning) and one's end (``rate limit storage recovered``, info) in full:
the later ones are counted and logged as one ``rate limit storage outages`` / ``rate
limit storage recoveries`` line (``count=``) when the interval ends, or at
:meth:`StorageLimiter.aclose` (a storage failing every other hit otherwise logged two
lines per failure). Read when a limiter is built."""
WINDOW_READ_LOG_INTERVAL_S = 60.0
"""Seconds each kind (limit, error type) of failed window read is logged in full at most
once per (``rate limit window not read``, debug): the later ones are counted and logged as
one ``rate limit windows not read`` line (``count=``) when this interval ends, or at
:meth:`StorageLimiter.aclose`. Read when a limiter is built."""
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

STORAGE_REFUSAL_METADATA = ("meshkit-ratelimit-unavailable", "1")
"""Trailing metadata of a call :class:`RateLimitInterceptor` refused ``UNAVAILABLE``
because its limiter could not decide (``on_storage_error="deny"`` and the storage failed,
was too slow, or its breaker was open: a :class:`Rejection` with code ``UNAVAILABLE``).
A mesh client reports such an attempt to its balancer as no endpoint's outcome
(:func:`storage_refusal`)."""


def storage_refusal(code: grpc.StatusCode, trailing_metadata: Any) -> bool:
    """Whether a status ``code`` with ``trailing_metadata`` (a sequence of ``(key,
    value)`` pairs, or ``None``) is a meshkit server's fail-closed rate-limit refusal:
    ``UNAVAILABLE`` with :data:`STORAGE_REFUSAL_METADATA`. Nothing of the call ran, and
    the cause is the rate-limit storage the replicas share (Redis), not the endpoint: a
    mesh channel does not count it against the endpoint for outlier ejection
    (``OutlierOptions.failure_codes``) nor as a P2C failure or latency sample while
    most other endpoints refuse so too, or an outage of the shared storage ejected up to
    ``max_ejection_percent`` of healthy replicas, kept out for ``base_ejection_s`` after
    the storage came back; an endpoint refusing so alone or with a few others, most
    peers answering, is counted as failing (module docstring). It is no
    nack (:func:`~meshkit.resilience.is_nack`): retried only as the method's retry
    policy says for ``UNAVAILABLE`` (gRFC A6), since another replica, sharing the
    storage, would most likely refuse it too. Asked on the failure path only."""
    return code is _UNAVAILABLE and bool(trailing_metadata) and any(
        tuple(item) == STORAGE_REFUSAL_METADATA for item in trailing_metadata)
_MAX_PUSHBACK_MS = 2**31 - 1
"""The longest ``grpc-retry-pushback-ms`` gRFC A6 allows (a signed 32-bit integer of
milliseconds, about 24.86 days); a longer wait is sent as ``-1`` (do not retry)."""
_rejected: contextvars.ContextVar[bool] = contextvars.ContextVar("meshkit_rate_limited",
                                                                 default=False)


def rejected_by_rate_limit() -> bool:
    """Whether a :class:`RateLimitInterceptor` refused the current call for being over its
    limit (``RESOURCE_EXHAUSTED``; a fail-closed ``UNAVAILABLE`` does not count).

    Read it in the call's own task after the check ran, e.g. in an outer interceptor's
    handler wrapper: meshkit's telemetry uses it so that
    ``meshkit_server_rate_limited_total`` and the ``meshkit.rate_limited`` span attribute
    count the limiter's rejections, not every ``RESOURCE_EXHAUSTED`` a handler returns.
    """
    return _rejected.get()

DEFAULT_MAX_KEYS = 100_000
"""Callers (a method and a caller key) whose counts a ``memory://`` limiter keeps when
``RateLimitOptions.max_keys`` is left ``None``."""

_MAX_KEY_CHARS = 64
"""The longest caller key kept as it is: a longer one is kept as its first 32 characters,
``#`` and a 128-bit BLAKE2b digest of the whole (:func:`_kept_key`; 65 characters, a
length no key kept as it is has, so no caller can send another's digest form as its own
key and share that caller's budget), so that a caller
costs a ``memory://`` limiter 750-900 bytes whatever key it sends (``by_metadata`` takes
header values up to grpc's 8 KiB: 25 KB a caller, 2.5 GB at ``max_keys``)."""


def _kept_key(key: str) -> str:
    """A key longer than :data:`_MAX_KEY_CHARS` characters, or one UTF-8 cannot encode,
    as the limiter keeps it: 65 characters naming it (distinct keys stay distinct: a
    128-bit digest of the whole; and one character longer than any key kept as it is, so
    never equal to one), its first 32 characters with any lone surrogate shown as ``?``
    (so that the form is UTF-8, as a Redis key must be)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16)
    head = key[:32]
    if not head.isascii():
        head = head.encode("utf-8", "replace").decode("utf-8")
    return f"{head}#{digest.hexdigest()}"


def _networked_key(key: str) -> str:
    """``key`` as a networked storage keeps it: :func:`_kept_key` when it is longer than
    :data:`_MAX_KEY_CHARS` or holds a lone surrogate (``"\\ud800"``: a JWT ``sub`` of that
    JSON escape, bytes decoded with ``surrogateescape``), which the Redis driver cannot
    encode: every hit failed with ``UnicodeEncodeError``, taken for a storage failure (that
    caller unlimited, and three in a row opened the breaker for every caller). Per call a
    ``len()`` and an ``isascii()``; a non-ASCII key is encoded once more."""
    if len(key) > _MAX_KEY_CHARS:
        return _kept_key(key)
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return _kept_key(key)
    return key


_MAX_WINDOW_KEYS = 10_000  # remembered sliding-window storage keys of multi-part rules
# and of networked storages (cleared when full; memory:// one-part rules: max_keys)
_MAX_CHECKERS = 1_000  # per-method checkers of a memory:// limiter (cleared when full)
_UNSET: Any = object()

_STRATEGY_CLASSES: dict[str, Callable[[Any], _LimitsStrategy]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
# the same algorithms on limits' synchronous storage interface (memory://)
_SYNC_STRATEGY_CLASSES: dict[str, Callable[[Any], _sync_strategies.RateLimiter]] = {
    "fixed-window": _sync_strategies.FixedWindowRateLimiter,
    "moving-window": _sync_strategies.MovingWindowRateLimiter,
    "sliding-window-counter": _sync_strategies.SlidingWindowCounterRateLimiter,
}

Strategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]
"""A ``limits`` rate-limiting algorithm."""

OnStorageError = Literal["allow", "deny"]
"""What to do with a call when the storage cannot be reached: let it through, or refuse it."""

KeyFunc = Callable[[str, "grpc.aio.ServicerContext[Any, Any]"], str]
"""``(full method name, servicer context) -> caller key``; calls with equal keys share a
budget. It runs on every limited call, on the event loop, so it should be cheap and must
be a plain function: :class:`RateLimitOptions` refuses an ``async def`` one. An exception
it raises fails the call with ``UNKNOWN``, and so does a result that is not a ``str``
(e.g. an awaitable: a ``TypeError`` naming the function)."""


def _is_async_callable(func: object) -> bool:
    """Whether calling ``func`` gives a coroutine or an async generator: an ``async def``
    (or ``functools.partial`` of one), or an object whose ``__call__`` is one."""
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
               for f in (func, type(func).__call__))


def _takes_method_and_context(func: object) -> bool:
    """Whether ``func`` can be called as ``func(method, context)`` (two positional
    arguments), as far as its signature tells: one without a signature Python can read
    (a builtin, some C callables) is taken."""
    try:
        signature = inspect.signature(cast(Callable[..., Any], func))
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None, None)
    except TypeError:
        return False
    return True


def _not_a_key(key_of: KeyFunc, key: object) -> TypeError:
    """The error of a key function ``key_of`` that returned ``key``, not a ``str`` (a
    coroutine it returned is closed: no "never awaited" warning besides)."""
    if inspect.iscoroutine(key):
        key.close()
    return TypeError(f"rate limit key function {key_of!r} returned {type(key).__name__} "
                     f"{key!r}, not a caller key (str): the call is not counted; a key "
                     "function must be a plain function returning a str")


def by_peer(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Key a call by the caller's IP address, without the port (the default key).

    Every address is keyed whole (an IPv4-mapped IPv6 one as its IPv4 address): inside a
    cluster, what a mesh serves, each pod has an address of its own, and a /64 is no one
    client's (EKS and GKE IPv6 pods take global addresses out of their subnet's /64,
    pod networks hand out unique-local blocks of one /64), so keying IPv6 by its /64, as
    internet-facing rate limiters do, would put every pod of a subnet in one budget. For
    callers from the internet, where one client owns a whole /64 (RFC 6177) and could
    spread its calls over 2^64 budgets, use :func:`by_peer_network`.

    Args:
        method: full method name (unused).
        context: the call's context; ``context.peer()`` is e.g. ``"ipv4:10.0.0.7:51234"``.

    Returns:
        ``"10.0.0.7"``; ``"2001:db8:1:2::7"``; ``"fe80::1%eth0"``; the IPv4 address of an
        IPv4-mapped one; other peer kinds (``"unix:..."``) whole
        (:func:`~meshkit.resilience._ratelimit_policy.peer_key`).
    """
    # a peer string is one connection's, the same call after call: its host is parsed
    # once (peer_host: 43 bytecodes and a frame per call), kept in a bounded dict
    peer = context.peer()
    host = _PEER_HOSTS.get(peer)
    if host is None:
        host = _peer_key(peer)
    return host


def by_peer_network(*, ipv6_prefix_len: int = IPV6_NETWORK_PREFIX_LEN) -> KeyFunc:
    """A key function for callers from the internet: :func:`by_peer`, but a global
    unicast IPv6 caller (``2000::/3``) keyed by its network of ``ipv6_prefix_len`` bits,
    ``"2001:db8:1:2::/64"``. A client given a /64 (the least a site is given, RFC 6177;
    SLAAC lets it use any of its addresses) would otherwise have 2^64 budgets; Cloudflare's
    rate limiting rules and the advice for nginx ``limit_req`` key IPv6 by /64 for that
    reason. Every host of one such network shares one budget (the clients behind one
    home router, the pods of a cloud subnet that hands them global addresses: keep
    :func:`by_peer` for calls from inside a cluster). Unique-local (``fc00::/7``),
    loopback, link-local and IPv4 callers keep their full address.

    Args:
        ipv6_prefix_len: the prefix length, an ``int`` from 1 to 128 (default 64; 128
            keys every address whole, as :func:`by_peer`).

    Raises:
        ConfigError: ``ipv6_prefix_len`` is not an ``int`` (a ``bool`` neither) from 1 to
            128 (quoted).
    """
    if (isinstance(ipv6_prefix_len, bool) or not isinstance(ipv6_prefix_len, int)
            or not 1 <= ipv6_prefix_len <= 128):
        raise ConfigError(f"by_peer_network: ipv6_prefix_len must be an int from 1 to 128, "
                          f"got {ipv6_prefix_len!r}")
    keys: dict[str, str] = {}  # peer string -> its key, bounded as _PEER_HOSTS

    def by_peer_network(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        peer = context.peer()
        key = keys.get(peer)
        if key is None:
            key = peer_key(peer, ipv6_prefix_len=ipv6_prefix_len)
            if len(keys) >= _MAX_PEER_HOSTS:
                keys.clear()
            keys[peer] = key
        return key

    by_peer_network.__qualname__ = f"by_peer_network(ipv6_prefix_len={ipv6_prefix_len})"
    return by_peer_network


def _peer_key(peer: str) -> str:
    """``peer_key(peer)`` (the host), kept in :data:`_PEER_HOSTS`
    (cleared when full) for the next call from that peer (:func:`by_peer`'s look-up,
    and the interceptor's own when ``by_peer`` is its key)."""
    host = peer_key(peer)
    if len(_PEER_HOSTS) >= _MAX_PEER_HOSTS:
        _PEER_HOSTS.clear()
    _PEER_HOSTS[peer] = host
    return host


_PEER_HOSTS: dict[str, str] = {}  # peer string -> peer_key(peer), for by_peer
_MAX_PEER_HOSTS = 4096


def by_identity(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Key a call by who is calling: the verified JWT subject (``"sub:<sub>"``), else the
    verified mTLS SPIFFE ID (``"spiffe://..."``), else the peer address (:func:`by_peer`).

    The identities are the ones :mod:`meshkit.auth`'s interceptors verified, so put the rate
    limiter after them in ``ServeOptions.interceptors`` (the documented chain order); a
    caller cannot pick its own key by sending a header. A token with no subject (``sub``
    is optional, RFC 7519 section 4.1.2; the verifier gives it ``""``), or one a verifier
    of your own gave a subject that is no string, names no one: such a call is keyed by
    the SPIFFE ID or the address, not by one ``"sub:"`` budget all such callers share.
    """
    from meshkit.auth import current_claims, current_peer

    claims = current_claims()
    if claims is not None:
        subject = claims.subject
        if subject and isinstance(subject, str):
            return "sub:" + subject
    peer = current_peer()
    if peer is not None:
        return peer.spiffe_id
    return by_peer(method, context)


# gRPC over HTTP/2, Custom-Metadata: Header-Name -> 1*( %x30-39 / %x61-7A / "_" / "-" / "." )
# (checked before lowercasing, any ASCII case: str.lower() makes KELVIN SIGN an ASCII "k")
_HEADER_NAME = re.compile(r"[0-9A-Za-z_.\-]+", re.ASCII)



def by_metadata(name: str, *, fallback: KeyFunc | None = by_peer) -> KeyFunc:
    """Key calls by the value of request header ``name`` (e.g. ``"x-user"``).

    Keys are ``"<name>=<value>"``, so a header value can never collide with a peer address
    from ``fallback``; for a header named like a credential (``x-api-key``,
    ``authorization``, ``cookie``...: :func:`meshkit.observability.is_sensitive_key`)
    ``"<name>=#<128-bit BLAKE2b digest of the value, hex>"``, so that no API key or token
    reaches the storage (a Redis' keys hold the caller key) while each value keeps a
    budget of its own (one digest per call with such a header). The header is whatever
    the caller sent: use it for callers that are trusted or authenticated earlier in the
    chain (e.g. a header an authn interceptor sets from a JWT ``sub``).

    Args:
        name: metadata key, case-insensitive, not a ``-bin`` key.
        fallback: key function for calls without the header (default :func:`by_peer`);
            ``None`` puts all such calls in one shared budget, keyed
            ``"<name><missing>"``, which no value a caller sends makes (those are keyed
            ``"<name>=<value>"``): a client cannot spend that budget on purpose.

    Raises:
        ConfigError: ``name`` is empty, not a string, a binary (``-bin``) key, or holds a
            character no gRPC metadata key has (ASCII ``0-9 a-z _ - .``, letters of any case; a
            non-ASCII one refused even where ``str.lower()`` makes it ASCII: such a
            name matches no call, which would key every caller by ``fallback``, with
            ``None`` all in one budget), or names a header grpc consumes itself
            (``grpc-timeout``, ``te``, ``content-type``, ...: the same); ``fallback`` is
            neither ``None`` nor a plain
            function taking ``(method, context)`` (quoted).
    """
    # ASCII whitespace only: str.strip() also took a no-break space off a name
    header = name.strip(" \t\r\n\v\f") if isinstance(name, str) else None
    if header is None or not _HEADER_NAME.fullmatch(header) or (
            header := header.lower()).endswith("-bin"):
        raise ConfigError(f"by_metadata needs a non-binary gRPC metadata key (0-9 a-z _ - ., "
                          f"any case), got {name!r}")
    if header in CONSUMED_HEADERS:
        raise ConfigError(f"by_metadata: grpc reads header {name!r} itself and shows it to "
                          f"no key function, so every call would be keyed by the fallback")
    if fallback is not None and (not callable(fallback) or _is_async_callable(fallback)
                                 or not _takes_method_and_context(fallback)):
        raise ConfigError(f"by_metadata's fallback must be None or a plain function "
                          f"(method, context) -> str, got {fallback!r}")
    prefix = header + "="
    # not "<header>=...": no value a caller sends makes it (every sent one is keyed
    # "<header>=<value>"), so no client can spend the shared budget of those without it
    missing = header + "<missing>"

    def key(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        for k, v in call_metadata(context) or ():
            if k == header:
                return prefix + (v if isinstance(v, str) else v.decode("utf-8", "replace"))
        return missing if fallback is None else fallback(method, context)

    def digest_key(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        # a credential (an API key, a bearer token, a cookie) as its digest: a Redis
        # storage's keys hold the caller key, listed by whoever may SCAN that Redis
        for k, v in call_metadata(context) or ():
            if k == header:
                raw = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v
                return f"{prefix}#{hashlib.blake2b(raw, digest_size=16).hexdigest()}"
        return missing if fallback is None else fallback(method, context)

    if is_sensitive_key(header):
        key = digest_key
    key.__qualname__ = key.__name__ = f"by_metadata({header!r})"
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitOptions:
    """What :class:`RateLimitInterceptor` limits, how, and where it keeps the counts.

    Args:
        rules: ``{method pattern: rule or None}``, e.g.
            ``{"/ecom.v1.OrderService/PlaceOrder": "10/minute", "/grpc.health.v1.Health/*":
            None}``; ``None`` exempts. Exact patterns win, then the longest glob (see
            :mod:`meshkit._methods`).
            Default: no overrides.
        default_rule: rule for every method no key matches, e.g. ``"100/second"``;
            ``None`` (default) leaves them unlimited. Not for the health service
            (``grpc.health.v1.Health``'s ``Check``, ``Watch`` and ``List``; another name
            under its path is limited), which only a ``rules`` key naming a service
            limits (``"Health/*"``; a catch-all glob, ``"*"``, ``"*/Check"``, does not):
            its callers are probes, and a refused one takes the replica out of service.
        strategy: ``"fixed-window"``, ``"moving-window"`` or ``"sliding-window-counter"``
            (default). On Redis the fixed and the moving window keep a caller's count
            under the same key, a counter and a list: while replicas sharing a Redis run
            both (a rollout changing one for the other) and for one window after, a
            caller whose key the other kind wrote has its hits answered ``WRONGTYPE``
            (that caller's storage failures: ``on_storage_error`` applies to its calls,
            :attr:`StorageLimiter.storage_errors` counts them; Redis answered, so the
            breaker does not: other callers are counted as ever);
            change ``key_prefix`` with the strategy to start the new one apart.
        storage_uri: ``"memory://"`` (default, this process only),
            ``"async+redis://[:password@]host:port[/db]"`` (shared by replicas; needs
            ``limits[async-redis]``), or any other async ``limits`` storage URI.
            ``async+rediss://`` (TLS) checks that the server's certificate names the
            host dialled (``?ssl_check_hostname=true`` is added, coredis' default being
            false) unless the URI sets ``ssl_check_hostname`` or ``ssl_cert_reqs=none``.
        on_storage_error: ``"allow"`` (default: fail open, the call proceeds) or
            ``"deny"`` (fail closed, ``UNAVAILABLE`` with the trailer
            ``meshkit-ratelimit-unavailable: 1``) when the storage fails or is slower
            than ``storage_timeout_s``, or its breaker is open. Mesh clients count such a
            refusal against no endpoint while most replicas refuse so together (no
            outlier ejection, no P2C penalty: the storage is shared, the replica is
            healthy), against a replica refusing so alone or with a few others, most
            answering (its own way to the storage is broken), and retry it only as
            the method's retry policy says for ``UNAVAILABLE`` (module docstring).
        key: caller key function ``(method, context) -> str``, a plain function (not
            ``async def``: see :data:`KeyFunc`); default :func:`by_peer`.
        key_prefix: first part of every storage key (default ``"meshkit"``), so several
            services or test runs can share one Redis without sharing budgets.
        storage_timeout_s: seconds a storage round trip may take before it counts as a
            storage failure (default 0.25; not applied to ``memory://``); each round trip
            of a call (a hit per part of the rule, and when refused the reads behind
            ``retry-after``) has it to itself (see :meth:`StorageLimiter.check`).
        breaker_failures: consecutive storage failures that open the breaker (default 3).
        breaker_open_s: seconds the breaker stays open before a probe (finite; default 1.0);
            doubled after each failed probe up to ``breaker_max_open_s`` (default 5.0).
        max_keys: callers (a method and a caller key) whose counts a ``memory://``
            limiter keeps, at most (an int >= 1; default ``None``: 100,000,
            :data:`DEFAULT_MAX_KEYS`). A caller seen for the first
            time when that many are kept makes the limiter forget the least recently used
            one: its counts are dropped, so that caller **starts a fresh window** at its
            next call (it may then make up to a whole limit's calls again). Without a
            bound, a client that sends a new key value per call (``by_metadata``, or peers
            behind a NAT pool) kept one count per value for the whole window ("100/hour"
            at 10k calls/s: 36M). At 750-900 bytes per caller (measured with
            ``tracemalloc``: counter, lock, key strings, meshkit's cache entries; a
            caller key longer than 64 characters is kept as a 65-character digest, so a
            client sending 8 KiB header values costs no more) the
            default holds a flood to about 90 MB, and is well above the distinct callers
            one replica sees in a window when keyed by peer or by authenticated user.
            The moving window keeps, besides, every hit of a caller's window (``limits``'
            list of entries, about 145 bytes a hit): a ``"1000/minute"`` caller at its
            limit holds 145 KB, so ``max_keys`` bounds its memory only to ``max_keys`` x
            the limit x 145 bytes (14.5 GB at the default); with large limits and many
            callers in one process choose the fixed window or the sliding window counter
            (constant memory per caller), or Redis.
            Evictions are counted (:attr:`StorageLimiter.keys_evicted`); the first is
            logged as a warning. A caller whose windows ended is forgotten after the
            storage's next sweep (uncounted: it has no count to lose). Only for
            ``memory://``: other storages hold their counts themselves (Redis expires its
            own keys), and setting it with one is refused (not ignored) with a
            :class:`~meshkit.errors.ConfigError`.

    Raises:
        ConfigError: an unknown strategy, storage URI or ``on_storage_error``; a
            malformed rule or rules key; a strategy the storage cannot run; a
            non-callable or ``async def`` key, or one whose signature does not take
            ``(method, context)`` (``key=by_metadata``: the factory); an empty
            key_prefix, or one UTF-8 cannot encode; ``storage_timeout_s <= 0``;
            ``breaker_failures < 1``; ``breaker_open_s <= 0``, not finite, or above
            ``breaker_max_open_s``; a Redis URI option with which no hit can work
            (an option the driver does not take, ``?socket_timeout=1``;
            ``?noreply=...``, ``?connect_timeout=0``, ``?db=-1``, a value the driver
            cannot parse: :func:`~meshkit.resilience._ratelimit_policy.check_redis_options`);
            a Redis ``host:port`` the driver misreads or cannot parse (port ``0``, which
            coredis reads as 6379; a port missing or out of range, unbalanced IPv6
            brackets, several hosts for one server, a password with an unencoded ``/``,
            ``?`` or ``#``);
            ``max_keys`` not ``None`` nor an integer >= 1, or
            set with a storage other than ``memory://``. The bad value is quoted
            (storage passwords redacted). (``ConfigError`` is a ``ValueError``.)
    """

    rules: Mapping[str, str | None] = field(default_factory=dict)
    default_rule: str | None = None
    strategy: Strategy = "sliding-window-counter"
    storage_uri: str = "memory://"
    on_storage_error: OnStorageError = "allow"
    key: KeyFunc = by_peer
    key_prefix: str = "meshkit"
    storage_timeout_s: float = 0.25
    breaker_failures: int = 3
    breaker_open_s: float = 1.0
    breaker_max_open_s: float = 5.0
    max_keys: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.on_storage_error not in ("allow", "deny"):
            raise ConfigError(
                f"on_storage_error must be 'allow' or 'deny', got {self.on_storage_error!r}")
        if not isinstance(self.rules, Mapping):
            raise ConfigError(f"rules must be a mapping, got {self.rules!r}")
        object.__setattr__(self, "rules", FrozenMap(self.rules))
        RuleTable(self.rules, self.default_rule)  # parses every rule; raises ConfigError
        uri, storage = storage_class(self.storage_uri, self.strategy)
        check_redis_options(uri, shown=redact_uri(self.storage_uri))
        if not callable(self.key):
            raise ConfigError(f"key must be a callable (method, context) -> str, got {self.key!r}")
        if _is_async_callable(self.key):
            raise ConfigError(
                f"key must be a plain function (method, context) -> str, got {self.key!r}, "
                "which returns a coroutine (an un-awaited coroutine would be a new caller "
                "key on every call): read what it awaits in a plain function instead, e.g. "
                "from metadata or the identity an interceptor before this one set")
        if not _takes_method_and_context(self.key):
            raise ConfigError(
                f"key must be callable as key(method, context) -> str, got {self.key!r}, "
                "whose signature does not take those two arguments (every limited call "
                "would fail UNKNOWN with its TypeError); by_metadata is a factory: "
                "key=by_metadata('x-user')")
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ConfigError(f"key_prefix must be a non-empty string, got {self.key_prefix!r}")
        try:  # every storage key starts with it, and a Redis key is UTF-8
            self.key_prefix.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"key_prefix must be text UTF-8 can encode (no lone surrogate), "
                              f"got {self.key_prefix!r}") from None
        check_seconds(self, ("storage_timeout_s",))
        check_int("breaker_failures", self.breaker_failures)
        # finite: open for ever, the breaker never probed again (the limiter off for good)
        check_number("breaker_open_s", self.breaker_open_s, low_open=True)
        check_number("breaker_max_open_s", self.breaker_max_open_s, finite=False)
        if not self.breaker_max_open_s >= self.breaker_open_s:
            raise ConfigError("breaker_max_open_s must be >= breaker_open_s, got "
                              f"{self.breaker_max_open_s!r}")
        if self.max_keys is not None:
            check_int("max_keys", self.max_keys)
            if storage is not AsyncMemoryStorage:
                raise ConfigError(
                    f"max_keys bounds the callers a memory:// storage keeps, got "
                    f"{self.max_keys!r} with storage_uri {redact_uri(self.storage_uri)!r}, "
                    "which holds its counts itself (Redis expires its own keys): leave "
                    "max_keys unset (None)")

    def __repr__(self) -> str:
        # the fields as the dataclass repr shows them, storage_uri's password redacted
        # (a startup log or a debugger shows this, and ServeOptions' repr holds it)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        values["storage_uri"] = redact_uri(self.storage_uri)
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        return f"{type(self).__name__}({shown})"


# "scheme://<user info>@" in a foreign message: everything up to an "@" before a space
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^@\s]*@")


def _scrub_uri_secrets(text: str, uri: str) -> str:
    """``text`` (a foreign library's message about ``uri``) with the user info of every
    ``scheme://user:password@`` in it replaced by ``***`` (as :func:`redact_uri` shows
    a URI), and any other appearance of ``uri``'s password (as written or decoded)
    too, and of each piece of 3 characters or more of it between unencoded ``/``,
    ``?``, ``#`` or ``@`` (where a URI parser cuts it: ``Port could not be cast to
    integer value as 's3cr'`` for ``redis://:s3cr/et@h:6379``), and of each value of 3
    characters or more that :func:`redact_uri` masks in the query or fragment."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    _, userinfo, rest = split_userinfo(uri)
    password = userinfo[:-1].partition(":")[2]
    forms: set[str] = set()
    if password:
        forms.update((password, urllib.parse.unquote(password)))
        forms.update(p for p in re.split(r"[/?#@]", password) if len(p) >= 3)
    # the values redact_uri masks in the query (``?password=...``) and the fragment
    rest, _, fragment = rest.partition("#")
    for key, value in urllib.parse.parse_qsl(rest.partition("?")[2], keep_blank_values=True):
        if key not in _STORAGE_OPTIONS:
            forms.add(value)
    forms.add(fragment)
    for form in sorted((f for f in forms if len(f) >= 3), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


@dataclass(frozen=True, slots=True)
class Rejection:
    """A limiter's refusal of one call.

    Attributes:
        code: the gRPC status to answer (``RESOURCE_EXHAUSTED`` over the limit,
            ``UNAVAILABLE`` when failing closed).
        details: the status message; names the method and limit, never a caller key.
        retry_after_s: whole seconds (>= 1) before the caller may succeed, sent as
            ``retry-after`` and ``grpc-retry-pushback-ms`` trailing metadata; ``None``
            sends neither.
        pushback_ms: the same wait in milliseconds (>= 1), rounded up, when the limiter
            knows it that well (``memory://``: its windows are on this process' clock;
            Redis' fixed and sliding windows: their ``PTTL``; Redis' moving window: its
            hits' fractional stamps, by the replicas' clocks), sent as
            ``grpc-retry-pushback-ms``; ``None``: ``retry_after_s`` x 1000 (other
            storages).
    """

    code: grpc.StatusCode
    details: str
    retry_after_s: int | None = None
    pushback_ms: int | None = None


def _wait_ms(rejection: Rejection) -> int:
    """A rejection's wait in milliseconds: its pushback, else its retry-after (0: none)."""
    if rejection.pushback_ms is not None:
        return rejection.pushback_ms
    return (rejection.retry_after_s or 0) * 1000


class Limiter(Protocol):
    """The policy :class:`RateLimitInterceptor` asks; :class:`StorageLimiter` is the default.

    A limiter whose counts need no I/O may also have a ``synchronous`` attribute that is
    ``True`` and a method ``checker(method) -> Callable[[str], Rejection | None] | None``
    giving, once per method, a function of the caller key that does what :meth:`check`
    does without a coroutine; the interceptor then calls that (a coroutine and its frames
    fewer per call). :class:`StorageLimiter` does so for ``memory://``.

    It may also have a method ``counted_as(method) -> str``: the name to count (and to
    ask :meth:`applies_to`, :meth:`check`, ``checker`` with) the calls of a method the
    server did not register, so that the names a caller makes up for a catch-all generic
    handler share one budget (:meth:`StorageLimiter.counted_as`). Without it such calls
    are counted under their own names.
    """

    def applies_to(self, method: str) -> bool:
        """Whether calls to full method name ``method`` are limited at all (cheap, cached)."""
        ...

    async def check(self, method: str, key: str) -> Rejection | None:
        """Count one call to ``method`` by caller ``key``; ``None`` admits it.

        Must not raise for storage trouble: it decides (allow or reject) itself.
        """
        ...


_SWEEP_STEP_KEYS = 1_000
"""Keys one step of a ``memory://`` sweep looks at, in one event loop callback."""


def _minus_expiry(hit: Any) -> float:
    """The sort key of a moving window's hits (newest first), as limits' sweep bisects."""
    return -cast(float, hit.expiry)

_SCHEDULE_SWEEP = "_MemoryStorage__schedule_expiry"  # limits' private sweep scheduler
_EXPIRE = "_MemoryStorage__expire_events"  # limits' private sweep
_WRAPPED = ("incr", "decr", "get", "get_expiry", "check", "reset", "clear")


class SweepThrottledMemoryStorage(MemoryStorage):
    """``limits``' ``memory://`` storage with its expiry sweep run at most every
    ``sweep_interval_s``, on the running event loop; what :class:`StorageLimiter` uses for
    ``memory://``.

    It is ``limits``' *synchronous* ``limits.storage.MemoryStorage``: counting in a dict
    needs no awaiting, and its async twin (``limits.aio.storage.MemoryStorage``) costs a
    coroutine per storage step and an ``asyncio.Lock`` per counter update, about eight
    coroutines per sliding-window hit. The per-key locks here are ``threading.RLock`` s,
    taken in C. Use it from one thread (the server's event loop), as
    :class:`StorageLimiter` does.

    ``limits`` starts a new sweep on every counter update once the previous sweep has
    ended (a ``threading.Timer`` thread 10 ms later; the async storage a task), and the
    sweep walks every key: under load a thread per 10 ms and a cost per call in proportion
    to the number of caller keys. The counts do not depend on the sweep (reads drop expired
    counters, moving-window checks compare timestamps); it only gives memory back, which
    once a second does as well. Here a due sweep runs as callbacks on the running event
    loop (``loop.call_soon``), one step of at most :data:`_SWEEP_STEP_KEYS` keys each, so
    that no call waits behind a walk of every caller (without a running loop,
    ``limits``' own timer thread).
    Measured with ``python -m benchmarks.micro``: see ``ratelimit`` there.

    ``limits``' sweep empties a moving-window key's list of hits once they have all
    expired but keeps the key (``events[key] == []``): every caller ever seen would stay
    (about 200 bytes each). After it, this storage deletes the keys whose list is empty, so
    a caller whose window ended costs nothing, as with the other two strategies (whose
    expired counters ``limits`` deletes). That runs on the thread that counts (the loop's
    callback; without a loop, on the calling thread at a due sweep, the lists emptied by
    the timer thread being dropped at the next one), under each key's lock, re-checking
    that the list is still empty: a hit never finds its list gone between two steps.

    Its windows are timed on the monotonic clock (:func:`time.monotonic`, read from an
    epoch-sized origin: limits' sliding-window counters are named by ``now / expiry``,
    which counts from boot otherwise), where
    ``limits`` times them on the wall clock (``time.time()``): a window is a duration, and
    counts kept in this process share no clock with anything else. A step of the wall clock
    (NTP ``makestep``, a VM snapshot restored, ``date -s``) moves no window: stepped back an
    hour, a caller at its limit was refused for that hour (``retry-after: 3599``), and a
    sliding-window caller got a new budget. The storage runs ``limits``' own methods, their
    code unchanged, with their module's ``time`` read as the monotonic clock (see
    :func:`_rebound_to_clock`). The reset times it answers (``get_expiry``, the moving
    window's start) are on that clock too, not seconds since the epoch.

    Args:
        uri: ``"memory://"`` (as ``limits`` takes it).
        wrap_exceptions: wrap storage errors in ``limits.errors.StorageError``.
        sweep_interval_s: least seconds between two sweeps (default 1.0).

    Raises:
        ConfigError: ``sweep_interval_s`` is negative or not a number.

    A ``limits`` release whose memory storage reads the clock otherwise than meshkit knows
    (``time.time()`` in ``limits.storage.memory``) is not rebound: its windows stay on the
    wall clock, as ``limits`` has them, and the first storage built logs a warning saying
    why (a newer ``limits`` never stops a service from starting).
    """

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, *,
                 sweep_interval_s: float = 1.0) -> None:
        if (isinstance(sweep_interval_s, bool) or not isinstance(sweep_interval_s, (int, float))
                or not sweep_interval_s >= 0):
            raise ConfigError(f"sweep_interval_s must be a number >= 0, got {sweep_interval_s!r}")
        if _MEMORY_CLOCK_ERROR is not None and not _MEMORY_CLOCK_WARNED:
            _warn_wall_clock_windows()
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self.sweep_interval_s = float(sweep_interval_s)
        self._next_sweep_s = 0.0
        self._sweep_handle: asyncio.Handle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        self._sweeping: Iterator[bool] | None = None  # the steps of the sweep under way
        self.sweeps_scheduled = 0
        """Sweeps this storage scheduled (for tests and diagnostics)."""
        self.after_sweep: Callable[[], bool] | None = None
        """Called on the thread that counts after each sweep's deletions (what
        :class:`StorageLimiter` forgets the callers whose counts the sweep dropped by),
        again in the sweep's next step while it returns ``True`` (more to do)."""

    def _MemoryStorage__schedule_expiry(self) -> None:  # overrides limits
        now = time.monotonic()
        if now < self._next_sweep_s:
            return
        self._next_sweep_s = now + self.sweep_interval_s
        self.sweeps_scheduled += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: limits' own timer thread
            self._drop_ended_windows()  # here: the timer thread must not delete lists
            if self.after_sweep is not None:  # (what the timer's last sweep dropped)
                while self.after_sweep():
                    pass
            getattr(super(), _SCHEDULE_SWEEP)()
            return
        if self._sweep_handle is not None and self._sweep_loop is loop:
            return  # a sweep under way on this loop: its next step is due
        # not "only if none is pending": a handle left on a loop that stopped before running
        # it would then stop every later sweep (the interval already bounds how often)
        self._sweeping = None  # (one a stopped loop left half done starts over)
        self._sweep_loop = loop
        self._sweep_handle = loop.call_soon(self._sweep)

    def _sweep(self) -> None:
        """One step of the sweep (a loop callback): at most :data:`_SWEEP_STEP_KEYS` keys
        looked at, the next step scheduled after it, then ``after_sweep`` in steps of its
        own. limits' own sweep walked every key in one go, holding the event loop 233 ms
        at 100,000 moving-window callers."""
        self._sweep_handle = None
        loop = self._sweep_loop
        if loop is None or asyncio.get_running_loop() is not loop:
            return  # a stale step of a loop the storage has left
        if self._sweeping is None:
            self._sweeping = self._sweep_steps()
        if next(self._sweeping, False):
            self._sweep_handle = loop.call_soon(self._sweep)
            return
        self._sweeping = None

    def _sweep_steps(self) -> Iterator[bool]:
        """What limits' sweep does (moving windows: their expired hits dropped; counters:
        the expired ones deleted, with their locks), and the moving-window keys left with
        no hit deleted too (:meth:`_drop_ended_windows`), yielding ``True`` after each
        :data:`_SWEEP_STEP_KEYS` keys. A caller's hits are newest first, so one whose
        oldest hit still counts is passed over at once (no lock, no bisect). Keys added
        after it began wait for the next sweep; one deleted meanwhile is skipped."""
        events, counters, expirations, locks = (self.events, self.storage,
                                                self.expirations, self.locks)
        clock = _MEMORY_CLOCK.time
        keys = list(events)
        for start in range(0, len(keys), _SWEEP_STEP_KEYS):
            now = clock()
            for key in keys[start:start + _SWEEP_STEP_KEYS]:
                hits = events.get(key)
                if hits is None or (hits and hits[-1].expiry > now):
                    continue
                with locks[key]:  # (as limits' sweep and acquire_entry take it)
                    if hits:
                        del hits[bisect.bisect_left(hits, -now, key=_minus_expiry):]
                    if not hits:
                        del events[key]
                        locks.pop(key, None)
            yield True
        keys = list(expirations)
        for start in range(0, len(keys), _SWEEP_STEP_KEYS):
            now = clock()
            for key in keys[start:start + _SWEEP_STEP_KEYS]:
                if expirations.get(key, math.inf) <= now:
                    counters.pop(key, None)
                    expirations.pop(key, None)
                    locks.pop(key, None)
            yield True
        while self.after_sweep is not None and self.after_sweep():
            yield True

    def _drop_ended_windows(self) -> None:
        """Delete the moving-window keys whose list of hits is empty (``limits``' sweep
        empties them and keeps the key), and their locks. Call it on the thread that
        counts: a hit in ``acquire_entry`` holds the key's lock from ``setdefault`` to
        its append, so the emptiness is checked again under that lock."""
        events, locks = self.events, self.locks
        for key in [key for key, hits in list(events.items()) if not hits]:
            with locks[key]:
                if not events.get(key, True):  # still empty (absent: someone cleared it)
                    del events[key]
                    locks.pop(key, None)

    def close(self) -> None:
        """Cancel a scheduled sweep and ``limits``' timer thread, if any (idempotent)."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._sweeping = None
        timer = getattr(self, "timer", None)
        if isinstance(timer, threading.Timer):
            timer.cancel()


# ``limits`` wraps each storage method in an error translator (``_wrap_errors``: one more
# frame per call, and a sliding-window hit calls six of them). An in-process dict has no
# storage errors to translate (StorageLimiter fails safe on any exception anyway), so this
# storage runs MemoryStorage's own methods unwrapped: with the async storage, a
# sliding-window hit through StorageLimiter.check took 11.4-12.8 us of CPU before, 8.0-8.5
# after (one A/B, 20,000 hits each). The names are the methods limits wraps.
def _unwrapped(method: Any) -> Any:
    """``method`` without limits' ``_wrap_errors`` layers (some are wrapped twice)."""
    while (getattr(method, "__wrapped__", None) is not None
           and getattr(getattr(method, "__code__", None), "co_name", None) == "inner"):
        method = method.__wrapped__
    return method


for _name in sorted(set(_WRAPPED) | {"acquire_entry", "get_moving_window",
                                     "acquire_sliding_window_entry", "get_sliding_window",
                                     "clear_sliding_window"}):
    setattr(SweepThrottledMemoryStorage, _name, _unwrapped(getattr(MemoryStorage, _name)))
del _name


# The monotonic clock counts from boot: limits names a sliding window's two counters
# int((now - expiry) / expiry) and int(now / expiry), one counter while the uptime is below
# the window (a caller of "100/day" on a host up two hours refused after about 53). So it
# is read from an epoch-sized origin: steady, and never near 0.
_MONOTONIC_ORIGIN_S = time.time() - time.monotonic()


def _monotonic_s() -> float:
    # read when called: a test's patch of time.monotonic applies
    return time.monotonic() + _MONOTONIC_ORIGIN_S


def _wall_s() -> float:
    return time.time()  # limits' own clock, when its storage could not be rebound


_MEMORY_CLOCK_WARNED = False


def _warn_wall_clock_windows() -> None:
    """Log, once per process, why ``memory://`` windows stay on the wall clock."""
    global _MEMORY_CLOCK_WARNED
    _MEMORY_CLOCK_WARNED = True
    _log.warning("memory:// rate-limit windows stay on the wall clock (a step of it moves "
                 "them)", reason=_MEMORY_CLOCK_ERROR)


_MEMORY_CLOCK = SimpleNamespace(time=_monotonic_s)
"""The ``time`` module as ``limits``' memory storage code sees it in
:class:`SweepThrottledMemoryStorage`: its ``time()`` is the monotonic clock (a test may set
``_MEMORY_CLOCK.time`` to a clock of its own)."""


def _clock_reads(code: CodeType) -> set[str]:
    """How ``code`` and the code nested in it use the global name ``time``: the attribute
    read of it at each use (``"time"`` for ``time.time()``), ``""`` for any other use
    (``from time import time`` then ``time()``, the module passed on)."""
    reads: set[str] = set()
    instructions = [i for i in dis.get_instructions(code) if i.opname != "EXTENDED_ARG"]
    for ins, following in zip(instructions, [*instructions[1:], None], strict=True):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval == "time":
            attribute = following is not None and following.opname in ("LOAD_ATTR",
                                                                        "LOAD_METHOD")
            reads.add(str(following.argval) if following is not None and attribute else "")
    for const in code.co_consts:
        if isinstance(const, CodeType):
            reads |= _clock_reads(const)
    return reads


def _rebound_to_clock(cls: type, clock: object) -> dict[str, FunctionType]:
    """``cls``'s methods (``limits``' ``MemoryStorage``), unwrapped of ``_wrap_errors``,
    rebound to globals where their module's ``time`` is ``clock``: ``{name: function}``.
    Their code is ``limits``' own, unchanged; only the clock they read differs. The classes
    and functions of that module that read ``time`` (the moving window's ``Entry``, which
    stamps each hit) are rebound the same way in those globals.

    Every use of the clock must be ``time.time()`` in that module: a ``limits`` whose
    storage reads it otherwise (another clock function, ``from time import time``,
    ``datetime``, a clock read in a base class or a property) raises, rather than leave a
    part of the storage on the wall clock and compare the two.

    Raises:
        TypeError: the storage reads the clock otherwise, naming where and how.
    """
    module = sys.modules[cls.__module__]
    module_globals = vars(module)
    where = f"limits {_limits_version()} ({module.__name__})"
    if module_globals.get("time") is not time:
        raise TypeError(f"{where}: its global 'time' is not the time module")
    if "datetime" in module_globals:
        raise TypeError(f"{where}: it imports datetime")
    namespace = dict(module_globals)
    namespace["time"] = clock

    def reads_clock(func: FunctionType) -> bool:
        reads = _clock_reads(func.__code__)
        if reads - {"time"}:
            shown = sorted(f"time.{r}" if r else "time" for r in reads - {"time"})
            raise TypeError(f"{where}: {func.__qualname__} reads the clock as {shown}")
        return bool(reads)

    def rebound(func: FunctionType) -> FunctionType:
        new = FunctionType(func.__code__, namespace, func.__name__, func.__defaults__,
                           func.__closure__)
        new.__kwdefaults__ = func.__kwdefaults__
        new.__qualname__, new.__doc__ = func.__qualname__, func.__doc__
        new.__module__ = func.__module__
        return new

    def methods(owner: type, *, of_module: bool) -> dict[str, FunctionType]:
        """``owner``'s plain methods (unwrapped) to rebind: with ``of_module`` all of
        them (so that they construct rebound classes too), else those that read the
        clock. Anything else that reads it raises."""
        found: dict[str, FunctionType] = {}
        for name, member in vars(owner).items():
            func = _unwrapped(member)
            if isinstance(func, FunctionType):
                mine = func.__globals__ is module_globals
                if reads_clock(func) and not mine:
                    raise TypeError(f"{where}: {func.__qualname__}, from "
                                    f"{func.__module__}, reads the clock")
                if mine and (of_module or reads_clock(func)):
                    found[name] = rebound(func)
                continue
            for part in (getattr(member, attr, None) for attr in ("__func__", "fget",
                                                                  "fset", "fdel")):
                if isinstance(part, FunctionType) and _clock_reads(part.__code__):
                    raise TypeError(f"{where}: {owner.__qualname__}.{name} reads the clock")
        return found

    for name, value in module_globals.items():
        if getattr(value, "__module__", None) != module.__name__ or value is cls:
            continue
        if isinstance(value, type):
            own = methods(value, of_module=False)
            if own:
                namespace[name] = type(value.__name__, (value,), {
                    **own, "__module__": __name__, "__qualname__": value.__qualname__,
                    "__doc__": f"{value.__qualname__} on meshkit's memory storage clock"})
        elif isinstance(value, FunctionType) and reads_clock(value):
            namespace[name] = rebound(value)
    for base in cls.__mro__[1:]:  # inherited from elsewhere: must not read a clock
        methods(base, of_module=False)
    return methods(cls, of_module=True)


def _limits_version() -> str:
    try:
        return importlib.metadata.version("limits")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _put_memory_storage_on_its_clock() -> str | None:
    """Give :class:`SweepThrottledMemoryStorage` ``limits``' methods on
    :data:`_MEMORY_CLOCK` (meshkit's own overrides kept); the reason it cannot, or
    ``None``. When it cannot, the storage keeps ``limits``' methods on the wall clock (and
    :data:`_MEMORY_CLOCK` reads the wall clock too, for the reset times of refusals)."""
    try:
        methods = _rebound_to_clock(MemoryStorage, _MEMORY_CLOCK)
    except Exception as exc:  # at import: logged when a storage is built
        _MEMORY_CLOCK.time = _wall_s  # _rejection's reset times on limits' own clock
        return (f"{type(exc).__name__}: {exc}; meshkit knows how limits 5.8's memory "
                "storage reads the clock, not how this one does")
    own = vars(SweepThrottledMemoryStorage)
    for name, method in methods.items():
        if getattr(own.get(name), "__module__", None) != __name__:  # not meshkit's override
            setattr(SweepThrottledMemoryStorage, name, method)
    return None


_MEMORY_CLOCK_ERROR = _put_memory_storage_on_its_clock()
"""Why :class:`SweepThrottledMemoryStorage`'s windows stay on the wall clock (``None``:
they are on the monotonic clock)."""


class StorageBreaker:
    """A circuit breaker for the rate-limit storage (policy only: no I/O, injectable clock).

    Closed: every call uses the storage; ``failures`` consecutive failures open it. Open:
    :meth:`allow` says no (the caller skips the storage) until ``open_s`` have passed;
    then one caller is let through as the probe (:meth:`allow` says yes once) while the
    rest still skip. The probe's :meth:`success` closes the breaker; its :meth:`failure`
    opens it again for twice as long, at most ``max_open_s``; a probe that never finished
    (its round trip cancelled: :class:`StorageLimiter` lets the hit of a call cancelled by
    its caller's deadline end on its own, and that decides) is :meth:`abandoned`: the
    breaker stays open and the next caller due probes instead. The pattern is Nygard's
    circuit breaker (Release It!), as in Hystrix and Envoy's outlier detection.

    Args:
        failures: consecutive failures that open it (>= 1).
        open_s: seconds open before the first probe (> 0).
        max_open_s: longest open period, seconds (>= ``open_s``).
        clock: monotonic seconds (default :func:`time.monotonic`).
    """

    __slots__ = ("_clock", "_failures", "_max_open_s", "_open_s", "_probing", "_streak",
                 "_until", "_wait_s", "dirty", "opened")

    def __init__(self, *, failures: int = 3, open_s: float = 1.0, max_open_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._failures = failures
        self._open_s = open_s
        self._max_open_s = max_open_s
        self._clock = clock
        self._streak = 0
        self._until: float | None = None  # open until then (None: closed)
        self._wait_s = open_s
        self._probing = False
        self.opened = 0  # times it opened (for tests and /debug)
        self.dirty = False
        """Whether a failure was counted since the last success: while ``False`` the
        breaker is closed with no streak, so :meth:`allow` says yes and :meth:`success`
        changes nothing (callers may skip both)."""

    @property
    def is_open(self) -> bool:
        """Whether calls currently skip the storage (open, or half-open with a probe out)."""
        return self._until is not None

    def allow(self) -> bool:
        """Whether this call may use the storage (closed, or the one probe when due)."""
        if self._until is None:
            return True
        if self._probing or self._clock() < self._until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        """The storage answered: close."""
        self.dirty = False
        self._streak = 0
        self._until = None
        self._probing = False
        self._wait_s = self._open_s

    def abandoned(self, probe: bool = True) -> None:
        """The call let through did not finish (cancelled): neither a success nor a
        failure. The probe's slot is freed (``probe``: this call was the probe, as
        :attr:`is_open` read right after its :meth:`allow`), so the next caller probes
        (the breaker stays open, its open time unchanged); a call let through before the
        breaker opened frees nothing: the probe out is still out."""
        if probe:
            self._probing = False

    def failure(self, probe: bool = True) -> None:
        """The storage failed or timed out: count it; open (again) when due. Open, only the
        probe's failure (``probe``, see :meth:`abandoned`) re-opens it for twice as long:
        the calls that were already waiting on the storage when it opened fail too, and
        must not each double the open time (a burst of timeouts kept it open for
        ``max_open_s``) nor free the probe's slot."""
        self.dirty = True
        if self._until is not None:
            if not probe:  # a call from before it opened: counted in the streak already
                return
            self._probing = False  # the probe failed
            self._wait_s = min(self._wait_s * 2, self._max_open_s)
            self._until = self._clock() + self._wait_s
            return
        self._streak += 1
        if self._streak >= self._failures:
            self._until = self._clock() + self._wait_s
            self.opened += 1


def _storage_options(uri: str, cls: type[Any]) -> dict[str, Any]:
    """Keyword options for ``storage_from_string(uri)`` beyond ``wrap_exceptions``: for a
    single Redis server through coredis (``async+redis://``, ``async+rediss://``,
    ``async+redis+unix://``), ``retry_policy=NoRetryPolicy()``. ``coredis.Redis.from_url``
    retries a command twice on a connection error or timeout; a rate-limit hit is not
    idempotent, and one whose answer was lost after Redis ran it was counted two or three
    times (a "1/minute" caller refused its only call). Other storages: none."""
    if cls is not AsyncRedisStorage or uri.startswith("async+valkey"):
        return {}
    try:
        from coredis.retry import NoRetryPolicy
    except ImportError:  # no coredis: limits reports the missing driver itself
        return {}
    return {"retry_policy": NoRetryPolicy()}


class _TransportCallbacks(asyncio.Protocol):
    """The protocol of one transport of a coredis connection: passes the transport's
    callbacks to the connection while it is the connection's transport
    (``connection._transport``), and drops them after (:class:`_CurrentTransportOnly`)."""

    __slots__ = ("_connection", "_transport")

    def __init__(self, connection: Any, transport: asyncio.BaseTransport) -> None:
        self._connection = connection
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._connection._transport is self._transport:
            self._connection.data_received(data)

    def eof_received(self) -> bool | None:
        if self._connection._transport is self._transport:
            return cast("bool | None", self._connection.eof_received())
        return None  # an old transport's: it closes

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._connection._transport is self._transport:
            self._connection.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._connection._transport is self._transport:
            self._connection.pause_writing()

    def resume_writing(self) -> None:
        if self._connection._transport is self._transport:
            self._connection.resume_writing()


class _CurrentTransportOnly:
    """Mixed into the connection class of a limiter's coredis pools
    (:func:`_current_transports_only`): a connection takes the callbacks of the
    transport it holds now, not those of one it dropped.

    coredis drops a connection on an error reply or a timed-out read (each, until
    :class:`_KeptInStep`; now ``READONLY`` after a failover, a silent server) and
    reconnects it at its next
    command, the same connection object being the protocol of every transport it
    opens. A TLS transport ends only once the server answered its ``close_notify``:
    when that came after the next transport was up (a loaded host), the old one's
    ``eof_received``/``connection_lost`` disconnected the new one, failing the hits in
    flight on it ("connection lost", an ``AssertionError`` in coredis, the next one's
    SSL "application data after close notify"): storage failures, the breaker opened.
    Each transport now gets a protocol of its own (``transport.set_protocol``) passing
    on its callbacks only while it is the connection's."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(_TransportCallbacks(self, transport))
        super().connection_made(transport)  # type: ignore[misc]


class _KeptInStep:
    """Mixed into the connection class of a limiter's coredis pools
    (:func:`_current_transports_only`): an error reply to one command, or one command
    cancelled before its reply, does not drop the connection while it is in step.

    coredis drops the connection on any error reply (its client's ``except RedisError:
    connection.disconnect()``) and on a command cancelled before its reply (its
    ``Request.cleanup``: a hit slower than ``storage_timeout_s``), and every caller's
    commands are multiplexed on it: that failed the other callers' hits and window
    reads still waiting on it ("connection lost": storage failures, ``UNAVAILABLE``
    under ``deny``, a step to an open breaker, with Redis up).

    An error reply was read whole, so the connection is in step: the ``disconnect()``
    coredis' client calls while handling one (a ``coredis.exceptions.ResponseError``)
    does nothing, the reply that hit's storage failure alone. Met as ``NOSCRIPT``
    (each hit's once the script cache is empty: a Redis just started or restarted,
    ``SCRIPT FLUSH``, a failover; the script is loaded and the hit sent again),
    ``WRONGTYPE`` or ``ERR value is not an integer`` (one caller's key holding
    something else), ``OOM`` (Redis at ``maxmemory``: hits refused, window reads still
    answered), ``BUSY`` (another client's long script). Still dropped, so that the next
    command reconnects (through Sentinel to the primary it names now, through a host
    name to what it resolves to now): ``READONLY`` (a failover demoted this server),
    ``MASTERDOWN`` (a replica cut off from its primary), ``NOAUTH``/``WRONGPASS`` (the
    reconnect authenticates again). ``LOADING`` is a ``ConnectionError`` to coredis.

    A cancelled command's reply is still read in its turn (and dropped): the connection
    is kept while it answers (a stall longer than the timeout: a fork for a snapshot,
    another client's slow command; measured, a 0.7 s stall under a 0.5 s timeout failed
    25 of 25 staggered hits, where the 14 sent in its last 0.5 s would have been
    answered), and dropped when it has answered nothing for as long again as its oldest
    command waited (a server gone without a word: a host down, a partition). Any other
    disconnect is coredis' own."""

    _error_reply: type[BaseException]  # coredis.exceptions.ResponseError, set with the class
    _still_dropped: tuple[type[BaseException], ...]  # ReadOnlyError, AuthenticationError
    _requests: Any  # coredis' BaseConnection's: its commands waiting for their replies
    _transport: Any
    requests_processed: int

    def disconnect(self) -> None:
        caller = sys._getframe(1).f_code.co_name
        if caller == "_execute_command":  # (the client's except block)
            exc = sys.exception()
            if isinstance(exc, self._error_reply) and not isinstance(exc, self._still_dropped) \
                    and not str(exc).startswith("MASTERDOWN"):
                return
        elif caller == "cleanup" and self._requests:  # (a Request cancelled)
            waited_s = max(0.0, time.time() - self._requests[0].created_at)
            asyncio.get_running_loop().call_later(
                waited_s, self._drop_if_silent, self._transport, self.requests_processed)
            return
        super().disconnect()  # type: ignore[misc]

    def _drop_if_silent(self, transport: Any, processed: int) -> None:
        """Drop the connection if it still holds ``transport``, has commands waiting
        and has read no reply since it had read ``processed``."""
        if transport is not None and self._transport is transport and self._requests \
                and self.requests_processed == processed:
            super().disconnect()  # type: ignore[misc]


_current_only_classes: dict[type, type] = {}


def _current_transports_only(pools: list[Any]) -> None:
    """Give each coredis pool in ``pools`` a connection class taking only the callbacks
    of its current transport and kept while in step
    (:class:`_CurrentTransportOnly` and :class:`_KeptInStep` mixed into the pool's
    ``connection_class``: made once per class). A pool without a connection class
    (another driver's) is left as it is."""
    for pool in pools:
        cls = getattr(pool, "connection_class", None)
        if not isinstance(cls, type) or issubclass(cls, _CurrentTransportOnly) \
                or not callable(getattr(cls, "connection_made", None)):
            continue
        mixed = _current_only_classes.get(cls)
        if mixed is None:
            from coredis.exceptions import (  # (a coredis pool: installed)
                AuthenticationError,
                ReadOnlyError,
                ResponseError,
            )

            mixed = _current_only_classes.setdefault(cls, type(
                cls.__name__, (_KeptInStep, _CurrentTransportOnly, cls),
                {"__module__": __name__, "__doc__": cls.__doc__,
                 "_error_reply": ResponseError,
                 "_still_dropped": (ReadOnlyError, AuthenticationError)}))
        pool.connection_class = mixed


_INCR_EXPIRE_LUA = """
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount or redis.call("ttl", KEYS[1]) == -1 then
    redis.call("expire", KEYS[1], ARGV[1])
end
return current
"""
"""limits' ``incr_expire.lua`` (``INCRBY``; ``EXPIRE`` when that created the counter), which
also sets the expiry of a counter that has none (``TTL`` -1): one more command inside the
script for a hit that did not create its counter, no round trip."""


def _count_fixed_windows_atomically(storage: Any) -> bool:
    """Make a coredis-backed Redis storage count fixed windows in one atomic script, and
    read their expiry to the millisecond.

    ``limits``' coredis bridge counts with ``INCRBY`` and then, in a second round trip
    and only when the new value equals the amount, ``EXPIRE``. When that second step is
    lost (the connection reset after the ``INCRBY`` ran, or ``storage_timeout_s``
    cancelling the call while its ``INCRBY`` was held up), the counter stays with no TTL
    and no later hit sets one: the caller was refused (``retry-after: 1``) for good. Its
    redis-py bridge runs ``limits``' own ``incr_expire.lua`` (both steps in one script)
    instead, which the coredis bridge registers too (``lua_incr_expire``) without using:
    here the bridge's ``incr`` runs that script, amended (:data:`_INCR_EXPIRE_LUA`) to
    also give the window's expiry to a counter it finds without one: limits' script sets
    it only when the hit created the counter, so a counter left without a TTL (by an
    older meshkit's two-step count, a ``PERSIST``, a key restored without its TTL) kept
    its caller refused for good (``retry-after: 1`` on every call).

    The bridge's ``get_expiry`` (a fixed window's reset time, behind ``retry-after``)
    read ``TTL``: whole seconds, rounded to the *nearest* (a window with 3.25 s left read
    3), so ``ceil(reset_time - now)`` rounded nothing up and a caller that waited the
    ``retry-after`` it was sent was refused again. Here it reads ``PTTL`` (milliseconds),
    added to the time its answer arrived: never before the window really ends, so
    ``retry-after`` is never shorter than the real wait. Other storages are left as they
    are.

    Returns:
        Whether it did (the fixed window's reset time is then known to the millisecond).
    """
    bridge: Any = getattr(storage, "bridge", None)
    if not isinstance(bridge, CoredisBridge):
        return False
    script = bridge.get_connection().register_script(_INCR_EXPIRE_LUA)
    prefixed = bridge.prefixed_key

    async def incr(key: str, expiry: int, amount: int = 1) -> int:
        """``INCRBY key amount``, and ``EXPIRE key expiry`` (seconds) when it created the
        counter, atomically; the new count."""
        return int(cast(int, await script.execute([prefixed(key)], [expiry, amount])))

    async def get_expiry(key: str) -> float:
        """When ``key`` expires, in seconds since the epoch (now for a key without a TTL,
        or missing)."""
        milliseconds = int(await bridge.get_connection().pttl(prefixed(key)))
        return max(milliseconds, 0) / 1000 + time.time()

    bridge.incr = incr  # type: ignore[method-assign]  # this bridge instance only
    bridge.get_expiry = get_expiry  # type: ignore[method-assign]
    return True


_drivers_lock = threading.Lock()

_inherited_connections: list[list[Any]] = []
"""In a forked child: the parent's Redis connections its limiters let go of (kept so
that none is closed through the event loop the two processes share)."""


def _import_drivers(cls: type[Any]) -> None:
    """Import the installed drivers of a ``limits`` storage class (its ``DEPENDENCIES``)
    before it is built. ``limits`` imports them lazily and takes one as imported once it
    is in ``sys.modules``, which another thread's import in progress puts it: a storage
    built meanwhile (two servers starting in two threads) saw a partly initialized driver
    (``AttributeError``, or a ``ConfigurationError`` finding version 0.0.0). A real
    import waits for another thread's to finish; once imported this is a dict lookup per
    driver."""
    with _drivers_lock:
        for name in list(getattr(cls, "DEPENDENCIES", None) or ()):
            if importlib.util.find_spec(name.partition(".")[0]) is None:
                continue  # not installed: limits finds it missing as before
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


class StorageLimiter:
    """A :class:`Limiter` over a ``limits`` strategy and storage, built from options.

    Storage keys are ``<key_prefix>/<method>/<caller key>/<limit>``, a caller key longer
    than 64 characters kept as its first 32, ``#`` and a 128-bit BLAKE2b digest of the
    whole (each caller's memory bounded whatever key it sends); so is, in a networked
    storage, a key UTF-8 cannot encode (a lone surrogate: :func:`_networked_key`). Rejections carry
    ``RESOURCE_EXHAUSTED`` with ``retry_after_s`` from the storage's window stats
    (``ceil(reset_time - now)``, at least 1) or ``UNAVAILABLE`` when failing closed.
    On a single Redis server each hit is one atomic script, sent once (not retried by the
    client: see the module docstring).
    With ``memory://`` it keeps at most ``max_keys`` callers' counts, forgetting the least
    recently used (:attr:`keys_evicted` counts them; see :class:`RateLimitOptions`).

    Args:
        options: :class:`RateLimitOptions` (default: all defaults, which limit nothing).
        clock: monotonic seconds for outage durations, the breaker and the intervals of
            the failed window reads' log (default :func:`time.monotonic`).

    Raises:
        ConfigError: the storage cannot be built, e.g. its driver is not installed
            (``async+redis`` needs ``limits[async-redis]``) or cannot read an option of
            the URI (``?db=x``); the URI quoted, its password redacted. ``options`` no
            :class:`RateLimitOptions` (a storage URI given for
            ``RateLimitOptions(storage_uri=...)``: named by its type only, it may hold a
            password); ``clock`` not callable (``time.monotonic()``: its reading; quoted).
    """

    __slots__ = ("__weakref__", "_acquire_window", "_bad_keys", "_checkers", "_deny",
                 "_exact_wait", "_finishing", "_fixed",
                 "_key_caches", "_loop", "_lru", "_max_keys", "_outage", "_outages", "_prefix",
                 "_recoveries", "_sliding", "_storage", "_storage_name",
                 "_strategy", "_table", "_timeout_s", "_unread", "_window_keys", "breaker",
                 "keys_evicted", "storage_errors", "synchronous")

    def __init__(self, options: RateLimitOptions | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_clock("clock", clock, wall=False)
        check_secret_holder("options", options, RateLimitOptions)
        opts = options or RateLimitOptions()
        self._table = RuleTable(opts.rules, opts.default_rule)
        uri, cls = storage_class(opts.storage_uri, opts.strategy)
        self._storage_name = redact_uri(uri)
        self.synchronous = cls is AsyncMemoryStorage
        """Whether counts are kept in this process (``memory://``), so that
        :meth:`check_now` counts without a coroutine."""
        storage: Any
        pttl = False  # a fixed window's reset read from PTTL (see _count_fixed_windows...)
        try:
            if self.synchronous:  # limits' synchronous memory storage and strategies
                storage = SweepThrottledMemoryStorage("memory://", wrap_exceptions=True)
                self._strategy: Any = _SYNC_STRATEGY_CLASSES[opts.strategy](storage)
            else:
                _import_drivers(cls)
                storage = storage_from_string(with_tls_defaults(uri), wrap_exceptions=True,
                                              **_storage_options(uri, cls))
                pttl = _count_fixed_windows_atomically(storage)
                self._strategy = _STRATEGY_CLASSES[opts.strategy](storage)
        except ConfigError:
            raise
        except (ConfigurationError, NotImplementedError, ValueError, TypeError) as exc:
            # limits' message (and its cause's) quotes the URI as given, password and all:
            # scrubbed, and not chained (a traceback would print it); a ValueError is the
            # driver's reading of a query option (coredis: int('x') of "?db=x")
            reason = str(exc)
            if isinstance(exc.__cause__, ValueError) and str(exc.__cause__):
                reason += f" ({exc.__cause__})"  # e.g. "Port out of range 0-65535"
            raise ConfigError(
                f"storage_uri {self._storage_name!r} with strategy {opts.strategy!r}: "
                f"{_scrub_uri_secrets(reason, uri)}"
            ) from None
        self._storage = storage
        _current_transports_only(self._pools())  # (none for memory://)
        # the hits of cancelled calls still in flight (a strong reference until they
        # end) -> whether that call was the breaker's probe (its slot held till then)
        self._finishing: dict[asyncio.Future[Any], bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # of the last Redis check
        _limiters.add(self)  # reset in a forked child: _forget_parent
        if self.synchronous:  # callers whose counts the sweep dropped: forgotten too
            storage.after_sweep = self._forget_ended
        self._sliding = opts.strategy == "sliding-window-counter"
        self._fixed = opts.strategy == "fixed-window"
        # a refusal's wait known to the millisecond (Rejection.pushback_ms): memory:// (its
        # own clock); on Redis a sliding window (its scripts' PTTLs: durations), a fixed
        # window read by PTTL, and a moving window (its hits stamped in fractional
        # seconds, by the replicas' clocks: as exact as they agree, the same skew
        # retry-after has); other storages keep whole seconds: retry-after x 1000
        self._exact_wait = self.synchronous or (
            (self._sliding or opts.strategy == "moving-window")
            and isinstance(storage, AsyncRedisStorage)) or (self._fixed and pttl)
        # the sliding-window counter's hit made here (the strategy's own three lines, with
        # the storage key remembered): storage.acquire_sliding_window_entry is limits'
        # storage interface for that strategy
        self._acquire_window: Any = storage.acquire_sliding_window_entry \
            if self._sliding else None
        self._window_keys: dict[tuple[int, str, str], tuple[Any, str, int, int]] = {}
        self._checkers: dict[str, Callable[[str], Rejection | None] | None] = {}
        # memory:// callers, least recently used first: (method, key), or the storage key
        # of a one-part sliding-window rule -> (what to clear, key cache, keys in it)
        self._lru: OrderedDict[Any, tuple[tuple[tuple[str, int | None], ...],
                                          dict[Any, Any] | None, tuple[Any, ...]]] = \
            OrderedDict()
        self._max_keys = DEFAULT_MAX_KEYS if opts.max_keys is None else opts.max_keys
        self._key_caches: dict[str, dict[str, str]] = {}  # per method: caller -> storage key
        self.keys_evicted = 0
        """Callers a ``memory://`` limiter forgot to keep at most ``max_keys`` (each
        starts a fresh window at its next call)."""
        self.storage_errors = 0
        """Storage failures (an error or a round trip slower than ``storage_timeout_s``:
        each failed hit, a breaker's failed probe included; calls that skip the storage
        while the breaker is open are not counted): what
        ``meshkit_ratelimit_storage_errors_total`` exports. While it grows, limits are
        not enforced (``on_storage_error="allow"``) or calls are refused
        ``UNAVAILABLE`` (``"deny"``)."""
        self._timeout_s = None if self.synchronous else opts.storage_timeout_s
        self._prefix = opts.key_prefix
        self._deny = opts.on_storage_error == "deny"
        self._outage = OutageTracker(clock)
        self.breaker = StorageBreaker(failures=opts.breaker_failures, open_s=opts.breaker_open_s,
                                      max_open_s=opts.breaker_max_open_s, clock=clock)
        # an outage's start and end: one line each per interval (a storage failing every
        # other hit started and ended an outage per failure)
        self._outages = RepeatLog(_log, "rate limit storage unavailable",
                                  "rate limit storage outages", key_fields=(),
                                  fields={"storage": self._storage_name,
                                          "on_storage_error": opts.on_storage_error},
                                  level="warning", interval_s=STORAGE_OUTAGE_LOG_INTERVAL_S,
                                  max_kinds=1, clock=clock)
        self._recoveries = RepeatLog(_log, "rate limit storage recovered",
                                     "rate limit storage recoveries", key_fields=(),
                                     fields={"storage": self._storage_name}, level="info",
                                     interval_s=STORAGE_OUTAGE_LOG_INTERVAL_S, max_kinds=1,
                                     clock=clock)
        # a hit answered with an error about its caller's key (WRONGTYPE...): one line
        # per error type and interval, not per call
        self._bad_keys = RepeatLog(_log, "rate limit key unusable",
                                   "rate limit keys unusable", key_fields=("error_type",),
                                   fields={"storage": self._storage_name,
                                           "on_storage_error": opts.on_storage_error,
                                           "consequence": "that caller's calls are not "
                                                          "counted; other callers are"},
                                   level="warning", interval_s=STORAGE_OUTAGE_LOG_INTERVAL_S,
                                   max_kinds=8, clock=clock)
        # a refused call's failed window read: one line per kind and interval, not per call
        self._unread = RepeatLog(_log, "rate limit window not read",
                                 "rate limit windows not read",
                                 key_fields=("limit", "error_type"),
                                 fields={"storage": self._storage_name}, level="debug",
                                 interval_s=WINDOW_READ_LOG_INTERVAL_S, max_kinds=64,
                                 clock=clock)

    def applies_to(self, method: str) -> bool:
        """Whether ``method`` has a rule (its own, a glob's, or the default)."""
        return self._table.lookup(method) is not None

    def counted_as(self, method: str) -> str:
        """The name to count the calls of ``method`` under when the server did not register
        it (a generic handler serving any name a caller sends): the name of the rule that
        governs it, ``"<unregistered PATTERN>"`` (``"<unregistered methods>"`` for
        ``default_rule``), shared by every such method under that rule; ``method`` when
        no rule limits it. Pass it to :meth:`check` / :meth:`checker` in place of
        ``method``: the rule is the method's, the budget one per caller for all of them.
        """
        return self._table.counted_as(method)

    async def check(self, method: str, key: str) -> Rejection | None:
        """Count one call to ``method`` by ``key`` against its rule; ``None`` admits it.

        Each storage round trip (the hit of each part of the rule; once one refuses, each
        read of the window state behind ``retry_after_s``) may take ``storage_timeout_s``.
        A hit that fails or takes longer is a storage failure; a hit that refused refuses
        the call whatever happens to the reads after it: a read that fails or takes
        longer makes ``retry_after_s`` that part's window length (rounded up), and is no
        storage failure. A call cancelled meanwhile (its client's cancel or deadline)
        ends at once, while its round trips finish on their own (within those
        timeouts; a failure among them counts towards the breaker and the outage log as
        any other): a Redis command cancelled before its reply made the driver drop the
        connection every caller's commands share, failing all of theirs in flight. The
        call waits for its hit at most three ``storage_timeout_s`` per part of the rule
        (and 0.1 s): past that (a driver swallowed a round trip's timeout, as coredis'
        ``NOSCRIPT`` retry does) it is a storage failure, the hit left to end on its own.

        Returns:
            ``None`` to admit; a ``RESOURCE_EXHAUSTED`` :class:`Rejection` with
            ``retry_after_s`` over the limit; when the storage fails, ``None``
            (``on_storage_error="allow"``) or an ``UNAVAILABLE`` rejection (``"deny"``).
        """
        if self.synchronous:
            return self.check_now(method, key)
        rule = self._table.lookup(method)
        if rule is None:
            return None
        key = _networked_key(key)  # short, and UTF-8 (as a Redis key must be)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the driver's connections are the last loop's
            self._moved_to(loop)
        breaker = self.breaker
        if not breaker.allow():  # open: do not wait on a storage that keeps failing
            return self._storage_skipped(method)
        probe = breaker.is_open  # let through while open: the probe
        # the round trips in a task of their own, shielded from the call's cancellation:
        # a Redis command cancelled before its reply makes coredis drop the connection
        # every caller's commands are multiplexed on, failing each in flight ("connection
        # lost": storage failures, UNAVAILABLE under deny, the breaker opened)
        hit = asyncio.ensure_future(self._hit(rule, method, key))
        try:
            # waited for at most as long as its round trips may take (each bounded by
            # storage_timeout_s inside): a driver that swallows that timeout's cancel
            # (coredis' NOSCRIPT retry hook, a bare except) must not hang the call
            async with asyncio.timeout((self._timeout_s or 0.0) * 3 * len(rule.items)
                                       + _HIT_GUARD_MARGIN_S):
                rejection = await asyncio.shield(hit)
        except Exception as exc:  # any storage failure: fail as configured, never crash
            if _is_key_error_reply(exc):  # the storage answered: this caller's key alone
                return self._key_failed(method, exc)
            breaker.failure(probe)
            if not hit.done():  # the guard's timeout: the hit ends on its own, no one's
                _let_go.add(hit)
                hit.add_done_callback(_forget_let_go)
            return self._storage_failed(method, exc)
        except BaseException:  # cancelled mid-call
            if hit.done():
                breaker.abandoned(probe)
            else:  # it ends on its own, each round trip within the timeout: a probe's
                # outcome still decides (its slot held until then, not forever)
                self._finishing[hit] = probe
                hit.add_done_callback(self._finished)
            raise
        self._succeeded()
        return rejection

    def _finished(self, hit: asyncio.Future[Any]) -> None:
        """The hit of a cancelled call ended: its admission is no one's, but what it says
        of the storage counts as any other hit's (a failure or timeout towards the
        breaker and the outage log, an answer as a success): under a hung storage whose
        callers' deadlines all end before ``storage_timeout_s``, every call is cancelled,
        and the breaker must still open. A probe's hit is still the probe: its failure
        opens the breaker again (for longer), its answer closes it, and only when it
        never ended (cancelled itself) is the probe :meth:`StorageBreaker.abandoned`;
        until then the other calls skip the storage, as while any probe is out (else
        each call probed in turn, waiting its deadline out on a hung storage)."""
        probe = self._finishing.pop(hit, False)
        exc = None if hit.cancelled() else hit.exception()
        if exc is None and not hit.cancelled():
            self._succeeded()
        elif isinstance(exc, Exception) and _is_key_error_reply(exc):
            self._key_failed(None, exc)
        elif isinstance(exc, Exception):
            self.breaker.failure(probe)
            self._report_failure(exc)
        else:
            self.breaker.abandoned(probe)

    def check_now(self, method: str, key: str) -> Rejection | None:
        """:meth:`check` without a coroutine, for counts kept in this process
        (:attr:`synchronous`: ``memory://``); call it from the event loop's thread.

        Raises:
            RuntimeError: the storage is not in this process (e.g. ``async+redis://``):
                use :meth:`check`.
        """
        check = self.checker(method)
        return None if check is None else check(key)

    def checker(self, method: str) -> Callable[[str], Rejection | None] | None:
        """:meth:`check_now` for one method, its rule resolved once: ``(caller key) ->
        Rejection | None``, or ``None`` when no rule applies (made once per method; what
        :class:`RateLimitInterceptor` calls per call with ``memory://``).

        Raises:
            RuntimeError: the storage is not in this process: use :meth:`check`.
        """
        made = self._checkers.get(method, _UNSET)
        if made is not _UNSET:
            return cast("Callable[[str], Rejection | None] | None", made)
        if not self.synchronous:
            raise RuntimeError(f"storage {self._storage_name!r} needs I/O: use check()")
        rule = self._table.lookup(method)
        made = None if rule is None else self._checker_for(rule, method)
        if len(self._checkers) >= _MAX_CHECKERS:
            self._checkers.clear()
            self._key_caches.clear()  # (their entries are dropped as the LRU evicts them)
        self._checkers[method] = made
        return made

    def _checker_for(self, rule: Rule, method: str) -> Callable[[str], Rejection | None]:
        hit: Callable[[str], Rejection | None]
        touch, track = self._lru.move_to_end, self._track
        if len(rule.items) == 1:
            # the strategy's hit (limits' FixedWindowRateLimiter, MovingWindowRateLimiter,
            # SlidingWindowCounterRateLimiter: one storage call each), with the storage key
            # of each caller remembered (key_for joins and escapes five strings)
            item = rule.items[0]
            storage = self._storage
            limit, window_s, prefix = item.amount, item.get_expiry(), self._prefix
            acquire = None if self._fixed else self._acquire_window if self._sliding \
                else storage.acquire_entry
            incr = storage.incr
            sliding_s = window_s if self._sliding else None  # how an eviction clears it
            keys: dict[str, str] = {}
            self._key_caches[method] = keys
            max_keys = self._max_keys
            breaker, outage = self.breaker, self._outage

            # the check below with this hit inline (a frame fewer per call): the same
            # steps in the same order, the hit's errors caught alike
            def check_one(key: str) -> Rejection | None:
                if breaker.dirty and not breaker.allow():
                    return self._storage_skipped(method)
                if len(key) > _MAX_KEY_CHARS:  # (one len() a call: a key is kept, and cached)
                    key = _kept_key(key)
                try:
                    wkey = keys.get(key)
                    if wkey is None:
                        if len(keys) > max_keys:  # never while the LRU holds its keys
                            keys.clear()
                        wkey = keys[key] = item.key_for(prefix, method, key)
                        track(wkey, ((wkey, sliding_s),), keys, (key,))
                    else:
                        try:
                            touch(wkey)  # the most recently used caller
                        except KeyError:  # another checker of the method evicted it
                            track(wkey, ((wkey, sliding_s),), keys, (key,))
                    if (incr(wkey, window_s, 1) <= limit if acquire is None
                            else acquire(wkey, limit, window_s, 1)):
                        rejection = None
                    else:
                        rejection = self._rejection(item, method,
                                                    self._window(item, method, key))
                except Exception as exc:  # a bug in a storage step: fail as configured
                    breaker.failure(breaker.is_open)  # synchronous: let through open
                    return self._storage_failed(method, exc)
                if breaker.dirty or outage.down_since is not None:
                    self._succeeded()
                return rejection

            return check_one
        else:
            sliding, prefix, items = self._sliding, self._prefix, rule.items
            cache = self._window_keys if sliding else None  # what _window_key remembers

            def hit(key: str) -> Rejection | None:
                caller = (method, key)
                try:
                    touch(caller)  # the most recently used caller
                except KeyError:
                    track(caller, tuple((item.key_for(prefix, method, key),
                                         item.get_expiry() if sliding else None)
                                        for item in items), cache,
                          tuple((id(item), method, key) for item in items))
                return self._hit_now(rule, method, key)

        breaker, outage = self.breaker, self._outage

        def check(key: str) -> Rejection | None:
            if breaker.dirty and not breaker.allow():
                return self._storage_skipped(method)
            if len(key) > _MAX_KEY_CHARS:  # (one len() a call: a key is kept, and cached)
                key = _kept_key(key)
            try:
                rejection = hit(key)
            except Exception as exc:  # a bug in a storage step: fail as configured
                breaker.failure(breaker.is_open)  # synchronous: let through open, the probe
                return self._storage_failed(method, exc)
            if breaker.dirty or outage.down_since is not None:
                self._succeeded()
            return rejection

        return check

    def _track(self, caller: Any, clears: tuple[tuple[str, int | None], ...],
               cache: dict[Any, Any] | None, cached: tuple[Any, ...]) -> None:
        """Keep ``caller``'s counts (storage keys ``clears``: ``(key, None)``, or a
        sliding window's ``(key, window seconds)``) as the most recently used; forget
        the least recently used callers beyond ``max_keys``: their counts cleared from
        the storage and their entries ``cached`` from ``cache`` (the storage keys meshkit
        remembers for them)."""
        lru = self._lru
        lru[caller] = (clears, cache, cached)
        lru.move_to_end(caller)  # when it was there already (a checker made again)
        if len(lru) <= self._max_keys:
            return
        storage = self._storage
        while len(lru) > self._max_keys:
            _, (old, old_cache, old_cached) = lru.popitem(last=False)
            for skey, window_s in old:
                if window_s is None:
                    storage.clear(skey)
                else:  # the previous, current and (not yet swept) the one before
                    now = _MEMORY_CLOCK.time()
                    storage.clear_sliding_window(skey, window_s)
                    storage.clear(storage.sliding_window_keys(skey, window_s,
                                                              now - window_s)[0])
            if old_cache is not None:
                for entry in old_cached:
                    old_cache.pop(entry, None)
            self.keys_evicted += 1
            if self.keys_evicted == 1:
                _log.warning("rate limit callers evicted", max_keys=self._max_keys,
                             storage=self._storage_name,
                             consequence="the least recently used callers start a fresh "
                                         "window; later evictions are counted in "
                                         "StorageLimiter.keys_evicted")

    def _forget_ended(self) -> bool:
        """Forget the least recently used callers that the storage holds no count of any
        more (their windows ended and its sweep dropped them), as an eviction would but
        uncounted: a caller whose windows ended costs nothing (without this, its LRU
        entry and cached storage keys, about 600 bytes, stayed until evicted). Walks from
        the least recently used end and stops at the first caller with a count left, so
        a sweep costs one check per caller forgotten, plus one; a caller behind one
        still counted waits for a later sweep (at most about two windows after its last
        call). Run by the storage after each sweep, on the thread that counts, in steps
        of at most :data:`_SWEEP_STEP_KEYS` callers (100,000 ended callers forgotten at
        once held the event loop up to 260 ms).

        Returns:
            Whether to call it again (the step's callers all forgotten, more may be).
        """
        lru = self._lru
        storage = self._storage
        counters, events = storage.storage, storage.events
        now = _MEMORY_CLOCK.time()
        for _ in range(_SWEEP_STEP_KEYS):
            if not lru:
                return False
            caller, (clears, cache, cached) = next(iter(lru.items()))
            for skey, window_s in clears:
                if window_s is None:
                    if skey in counters or skey in events:
                        return False
                else:  # the previous, current and (not yet swept) the one before
                    held = (*storage.sliding_window_keys(skey, window_s, now),
                            storage.sliding_window_keys(skey, window_s, now - window_s)[0])
                    if any(key in counters for key in held):
                        return False
            del lru[caller]
            if cache is not None:
                for entry in cached:
                    cache.pop(entry, None)
        return bool(lru)

    def _succeeded(self) -> None:
        self.breaker.success()
        if self._outage.down_since is not None:
            lasted = self._outage.succeeded()
            if lasted is not None:
                self._recoveries.report((), outage_s=round(lasted, 3))

    async def aclose(self) -> None:
        """Close the storage's connections (best effort; ``limits`` has no close API),
        cancel the memory storage's scheduled sweep, and log the count of failed window
        reads not told yet (``rate limit windows not read``).

        Call it after the server has stopped; a later :meth:`check` would reconnect. The
        hits of cancelled calls still in flight (:meth:`check`) are cancelled first,
        neither a failure nor a success.
        """
        self._unread.flush()
        self._outages.flush()
        self._recoveries.flush()
        self._bad_keys.flush()
        storage: Any = self._storage
        if isinstance(storage, SweepThrottledMemoryStorage):
            storage.close()
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # (connections of another loop: let go of, not closed)
            self._moved_to(loop)
        # the hits of cancelled calls still out: their connections close now, so they end
        # here, abandoned (else each failed "connection lost" once closed: an outage
        # logged as the server stops)
        finishing = [hit for hit in self._finishing if hit.get_loop() is loop]
        for hit in finishing:
            hit.cancel()
        if finishing:
            await asyncio.wait(finishing)
        for pool in self._pools():  # (through Sentinel: the sentinels' too)
            disconnect = getattr(pool, "disconnect", None)
            if callable(disconnect):
                result = disconnect()
                if inspect.isawaitable(result):  # redis-py's asyncio pool
                    await result

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()`` (``os.register_at_fork(after_in_child=...)``):
        let go of the Redis driver's connections, which are the parent's, and start a pool
        of its own.

        coredis sees its pool was made by another process at the child's first hit and
        disconnects the connections through asyncio: a transport's close removes its
        socket from the epoll instance the child's copy of the parent's loop shares with
        the parent, which then never read that connection again (its next hit waited
        ``storage_timeout_s`` out: a storage failure, in every worker's parent). Here
        the child's copies of those sockets are made to name ``/dev/null`` instead (as
        the registries' children do, :func:`~meshkit._fork.name_dev_null`), the connections are kept
        referenced (never closed nor collected through asyncio here), and the pool
        starts empty, owned by the child. Other storages are left as they are."""
        self._let_go_of_connections()

    def _moved_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """The first Redis check on ``loop``, another loop than the last one's (a second
        ``asyncio.run()``, a server restarted in a new thread's loop, pytest-asyncio's
        loop per test): let go of the driver's connections, which belong to the old loop
        (a hit sent down one never got its answer: it waited ``storage_timeout_s`` out, a
        storage failure), as :meth:`_forget_parent` does, so the next hit connects on
        this one. The hits of cancelled calls still out on another loop are forgotten (a
        loop closed before they ended never ends them): a probe among them is
        :meth:`StorageBreaker.abandoned`, else its slot stayed taken for good (every later
        call skipping the storage)."""
        if self._loop is not None:
            self._let_go_of_connections()
        for hit, probe in list(self._finishing.items()):
            if hit.get_loop() is not loop:
                del self._finishing[hit]
                if probe:
                    self.breaker.abandoned()
        self._loop = loop

    def _let_go_of_connections(self) -> None:
        """Empty the Redis driver's pool without closing its connections through asyncio
        (their loop may be closed, or shared with a parent process): their sockets are
        made to name ``/dev/null`` (:func:`~meshkit._fork.name_dev_null`) and the connections kept
        referenced. Through Sentinel (``async+redis+sentinel://``) the pools of the
        clients to the sentinels (which name the primary) and to the replicas are let go
        of too: a hit on a new loop first asks a sentinel down its old-loop connection;
        and a cluster's (``async+redis+cluster://``) pool, which keeps its connections
        per node. Other storages are left as they are."""
        for pool in self._pools():
            held = getattr(pool, "_available_connections", None)
            in_use = getattr(pool, "_in_use_connections", None)
            if held is None or in_use is None:  # a cluster's: a queue and a set per node
                queues = getattr(pool, "_cluster_available_connections", None)
                sets = getattr(pool, "_cluster_in_use_connections", None)
                if not isinstance(queues, dict) or not isinstance(sets, dict):
                    continue
                held = [conn for queue in queues.values()
                        for conn in getattr(queue, "_queue", ()) if conn is not None]
                in_use = [conn for conns in sets.values() for conn in conns]
            if not callable(getattr(pool, "reset", None)):
                continue
            connections = [*held, *in_use]
            if connections:
                _inherited_connections.append(connections)
                name_dev_null(sock for conn in connections
                               if (transport := getattr(conn, "_transport", None)) is not None
                               and (sock := transport.get_extra_info("socket")) is not None)
            pool.reset()

    def _pools(self) -> list[Any]:
        """The Redis driver's connection pools: the client's to the primary, and through
        Sentinel its replicas' and each sentinel's (none for other storages)."""
        bridge = getattr(self._storage, "bridge", None)
        sentinel = getattr(bridge, "sentinel", None)
        clients = [getattr(bridge, "storage", None), getattr(bridge, "storage_replica", None),
                   *(getattr(sentinel, "sentinels", None) or ())]
        return list({id(pool): pool for client in clients if (
            pool := getattr(client, "connection_pool", None)) is not None}.values())

    def _window_key(self, item: Any, method: str, key: str) -> tuple[Any, str, int, int]:
        """``(item, storage key, amount, window seconds)`` of a sliding-window hit: what
        ``SlidingWindowCounterRateLimiter.hit`` computes per hit (``key_for`` joins and
        escapes five strings), remembered per item, method and caller key."""
        ck = (id(item), method, key)
        got = self._window_keys.get(ck)
        if got is None or got[0] is not item:
            if len(self._window_keys) >= _MAX_WINDOW_KEYS:
                self._window_keys.clear()
            got = self._window_keys[ck] = (item, item.key_for(self._prefix, method, key),
                                           item.amount, item.get_expiry())
        return got

    def _hit_now(self, rule: Rule, method: str, key: str) -> Rejection | None:
        acquire = self._acquire_window
        for item in rule.items:
            if acquire is not None:  # SlidingWindowCounterRateLimiter.hit, its key cached
                _, wkey, amount, window_s = self._window_key(item, method, key)
                admitted = acquire(wkey, amount, window_s, 1)
            else:
                admitted = self._strategy.hit(item, self._prefix, method, key)
            if not admitted:
                rejection = self._rejection(item, method, self._window(item, method, key))
                for other in rule.items:  # another part spent too: the longest wait
                    if other is not item:
                        rejection = self._longer(rejection, other, method,
                                                 self._window(other, method, key))
                return rejection
        return None

    async def _hit(self, rule: Rule, method: str, key: str) -> Rejection | None:
        """Count the call against each part of ``rule``, each hit one storage round trip
        bounded by ``storage_timeout_s`` (raising, as the storage or the timeout does);
        the first part that refuses ends it with the :meth:`_refused` rejection."""
        acquire = self._acquire_window
        for item in rule.items:
            async with asyncio.timeout(self._timeout_s):
                if acquire is not None:  # SlidingWindowCounterRateLimiter.hit, key cached
                    _, wkey, amount, window_s = self._window_key(item, method, key)
                    admitted = await acquire(wkey, amount, window_s, 1)
                else:
                    admitted = await self._strategy.hit(item, self._prefix, method, key)
            if not admitted:
                return await self._refused(rule, item, method, key)
        return None

    async def _refused(self, rule: Rule, item: Any, method: str, key: str) -> Rejection:
        """The rejection of a call part ``item`` of ``rule`` refused (a storage's answer:
        never a storage failure). Its ``retry_after_s`` comes from the window states read
        from the storage (:meth:`_read_window`); when the refusing part's cannot be read,
        it is that part's window length, rounded up; another part whose state cannot be
        read is left out."""
        window = await self._read_window(item, method, key, counts=False)
        if window is None:
            rejection = Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"rate limit exceeded for {method}: {item}",
                                  max(1, math.ceil(item.get_expiry())))
        else:
            rejection = self._rejection(item, method, window)
        for other in rule.items:  # another part spent too: the longest wait
            if other is not item:
                window = await self._read_window(other, method, key, counts=True)
                if window is not None:
                    rejection = self._longer(rejection, other, method, window)
        return rejection

    async def _read_window(self, item: Any, method: str, key: str, *,
                           counts: bool) -> Any | None:
        """:meth:`_window` from the (async) storage, each round trip bounded by
        ``storage_timeout_s``; ``None`` when a read fails or times out (logged at debug
        level). For a fixed window the count (a second round trip) is read only with
        ``counts``: a refusing part's ``retry_after_s`` needs only its expiry. A failed
        read is logged once per limit and error type and
        :data:`WINDOW_READ_LOG_INTERVAL_S`, the others counted (module docstring)."""
        try:
            if self._fixed:
                storage_key = item.key_for(self._prefix, method, key)
                async with asyncio.timeout(self._timeout_s):
                    reset = await self._storage.get_expiry(storage_key)
                if not counts:
                    return WindowStats(reset, 0)
                async with asyncio.timeout(self._timeout_s):
                    count = await self._storage.get(storage_key)
                return WindowStats(reset, max(0, item.amount - count))
            async with asyncio.timeout(self._timeout_s):
                return await self._window(item, method, key)
        except Exception as exc:  # the hit refused: a lost read only loses retry-after
            self._unread.report((str(item), type(exc).__name__),
                                error=f"{type(exc).__name__}: {exc}")
            return None

    def _window(self, item: Any, method: str, key: str) -> Any:
        """The window state a rejection's ``retry_after_s`` comes from (an awaitable from
        an async storage): the sliding window's four figures, else the strategy's
        ``WindowStats``."""
        if self._sliding:
            return self._storage.get_sliding_window(item.key_for(self._prefix, method, key),
                                                    item.get_expiry())
        return self._strategy.get_window_stats(item, self._prefix, method, key)

    def _rejection(self, item: Any, method: str, window: Any) -> Rejection:
        if self._sliding:  # durations: no clock needed
            wait = sliding_window_wait_s(
                amount=item.amount, window_s=item.get_expiry(),
                previous_count=window[0], previous_expires_in_s=window[1],
                current_count=window[2], current_expires_in_s=window[3])
            after = retry_after_s(wait, 0.0)
        elif window.remaining > 0:
            # room in the window read after the hit (a moving window's refusing hit left
            # it between the two storage steps): its "oldest hit" is the next one, whose
            # leaving no call waits for; admitted now
            wait, after = 0.0, 1
        else:  # a reset time on the storage's clock: memory:// the monotonic one
            now = _MEMORY_CLOCK.time() if self.synchronous else time.time()
            wait = window.reset_time - now
            after = retry_after_s(window.reset_time, now)
        # the wait to the millisecond where the storage tells it (see _exact_wait): a
        # Redis fixed window's reset is its PTTL from when the answer came (never early),
        # a sliding window's PTTLs were read on Redis, before the answer came
        pushback = max(1, math.ceil(wait * 1000)) if self._exact_wait else None
        return Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"rate limit exceeded for {method}: {item}", after, pushback)

    def _longer(self, rejection: Rejection, item: Any, method: str,
                window: Any) -> Rejection:
        """``rejection``, or part ``item``'s when that part is spent too and its wait is
        longer: a rule's ``retry-after`` is when every part admits again (RFC 9110
        10.2.3), not the first refusing part's (``1/second;1/minute`` sent 1 s, then 59)."""
        if self._sliding:
            spent = sliding_window_wait_s(
                amount=item.amount, window_s=item.get_expiry(),
                previous_count=window[0], previous_expires_in_s=window[1],
                current_count=window[2], current_expires_in_s=window[3]) > 0
        else:
            spent = window.remaining <= 0
        if not spent:
            return rejection
        other = self._rejection(item, method, window)
        return other if _wait_ms(other) > _wait_ms(rejection) else rejection

    def _storage_failed(self, method: str, exc: Exception) -> Rejection | None:
        self._report_failure(exc)
        return self._storage_skipped(method)

    def _report_failure(self, exc: Exception) -> None:
        """Count a storage failure towards the outage; log the one that starts it (at
        most one in full per :data:`STORAGE_OUTAGE_LOG_INTERVAL_S`, the others counted);
        count it in :attr:`storage_errors`."""
        self.storage_errors += 1
        if self._outage.failed():
            self._outages.report((), error=f"{type(exc).__name__}: {exc}")

    def _key_failed(self, method: str | None, exc: Exception) -> Rejection | None:
        """A hit Redis answered with an error about the caller's key
        (:func:`_is_key_error_reply`): the storage is up, so to the breaker and the outage
        log it answered (one bad key hit ``breaker_failures`` times in a row opened the
        breaker for every caller, with Redis up); the call fails as ``on_storage_error``
        says and is counted in :attr:`storage_errors`; logged as a warning once per
        error type and :data:`STORAGE_OUTAGE_LOG_INTERVAL_S` (``rate limit key
        unusable``, never the caller key). ``method`` ``None``: a cancelled call's hit
        (no one's answer)."""
        self._succeeded()
        self.storage_errors += 1
        self._bad_keys.report((type(exc).__name__,), error=f"{type(exc).__name__}: {exc}")
        return None if method is None else self._storage_skipped(method)

    def _storage_skipped(self, method: str) -> Rejection | None:
        if self._deny:
            return Rejection(grpc.StatusCode.UNAVAILABLE,
                             f"rate limiter unavailable for {method}")
        return None



_limiters = reset_in_forked_child(StorageLimiter)

_HIT_GUARD_MARGIN_S = 0.1
"""What :meth:`StorageLimiter.check` waits for a hit beyond its round trips' timeouts
(at most three round trips per part of the rule, each ``storage_timeout_s``) before it
stops waiting: the hit's own timeouts fire first unless the driver swallowed one."""

# hits check() stopped waiting for (a driver swallowed their timeout): referenced until
# they end (asyncio keeps only weak references to tasks), their outcome no one's
_let_go: set[asyncio.Future[Any]] = set()


def _forget_let_go(hit: asyncio.Future[Any]) -> None:
    """A hit :data:`_let_go` ended: dropped, its exception read (no "never retrieved")."""
    _let_go.discard(hit)
    if not hit.cancelled():
        hit.exception()


_KEY_VALUE_REPLIES = ("value is not an integer", "value is not a valid float",
                      "increment or decrement would overflow",
                      "increment would produce NaN")
"""How Redis' error replies about a key's value begin (coredis strips the ``ERR``): one
caller's counter key holding something other than a number."""


def _is_key_error_reply(exc: BaseException) -> bool:
    """Whether ``exc`` (limits' ``StorageError``, or the driver's own error) is Redis'
    answer about one caller's key: ``WRONGTYPE`` (the key holds another type: replicas
    running another ``strategy`` on the same keys) or ``ERR value is not an integer``
    and its kin (the key written by something else). Redis answered: the storage is up,
    the failure that caller's alone (not the storage breaker's, not an outage)."""
    err = getattr(exc, "storage_error", None)
    if not isinstance(err, BaseException):
        err = exc
    if not type(err).__module__.startswith("coredis"):
        return False
    from coredis.exceptions import ResponseError, WrongTypeError  # (coredis: installed)

    if isinstance(err, WrongTypeError):
        return True
    return type(err) is ResponseError and str(err).startswith(_KEY_VALUE_REPLIES)


class RateLimitInterceptor(WrappingInterceptor):
    """Server interceptor that rejects calls over their rate limit before the handler runs.

    The check runs inside the wrapped handler (the caller's peer and metadata are only on
    the ``ServicerContext``), before a unary handler is called or a stream handler reads
    or writes anything. A rejected call ends with ``RESOURCE_EXHAUSTED`` and trailing
    metadata ``retry-after`` (whole seconds, >= 1) and ``grpc-retry-pushback-ms`` (the
    wait in milliseconds, ``-1`` when the call's deadline ends first or the wait is past
    2**31 - 1 ms: module docstring);
    failing closed ends it with ``UNAVAILABLE`` and trailing metadata
    :data:`STORAGE_REFUSAL_METADATA` (any :class:`Rejection` with that code: the limiter
    could not decide), which mesh clients count against no endpoint while most replicas
    refuse so together. The check runs on
    the event loop; a plain-function (synchronous) handler then runs in a thread, as
    grpc.aio runs it
    (:func:`meshkit._handlers.async_behaviour`).

    Args:
        options: :class:`RateLimitOptions` (rules, strategy, storage, key function).
        limiter: a custom :class:`Limiter` instead of the :class:`StorageLimiter` built
            from ``options`` (only ``options.key`` is then used).

    Raises:
        ConfigError: as :class:`StorageLimiter` documents; ``limiter`` no
            :class:`Limiter` (a storage URI, whose place is
            ``RateLimitOptions.storage_uri``; a class given for an instance): named by its
            type only, a URI may hold a password.
    """

    def __init__(self, options: RateLimitOptions | None = None, *,
                 limiter: Limiter | None = None) -> None:
        super().__init__()
        check_secret_holder("options", options, RateLimitOptions)
        if limiter is not None and (isinstance(limiter, type) or not all(
                callable(getattr(limiter, m, None)) for m in ("applies_to", "check"))):
            # else every call it guards failed UNKNOWN ("... no attribute 'applies_to'")
            raise ConfigError("limiter must be a Limiter (an object with applies_to(method) "
                              "and async check(method, key), such as StorageLimiter(...)) "
                              f"or None, got a {type(limiter).__name__}"
                              + (f" {limiter.__name__}" if isinstance(limiter, type) else ""))
        opts = options or RateLimitOptions()
        self.limiter: Limiter = StorageLimiter(opts) if limiter is None else limiter
        self._key = opts.key
        self.registered: Callable[[str], bool] | None = None
        """Whether a full method name is one the server registered, asked once per method
        when its handler is resolved; :func:`meshkit.serve` sets it (the methods its
        servicers add and ``ServeOptions.generic_methods``, as telemetry's). The calls of
        a method it did not register are counted under the name the limiter's
        ``counted_as`` gives (:meth:`StorageLimiter.counted_as`: one budget per rule and
        caller for all such names), so a caller cannot make up a new method name per
        call for a catch-all generic handler and get a new budget each time. ``None``
        (a plain ``grpc.aio`` server): every method is counted under its own name."""

    def _before_for(self, method: str) -> Before | None:
        """The limit check of ``method``, or ``None`` when no rule applies to it: a plain
        function when the limiter counts without I/O (``synchronous``: ``memory://``),
        returning ``None`` to admit or the refusal's awaitable. A method the server did
        not register (:attr:`registered`) is counted under the limiter's ``counted_as``
        name, resolved here, once per method: nothing per call."""
        limiter = self.limiter
        counted = method  # the name the limiter counts the calls under
        registered = self.registered
        if registered is not None and not registered(method):
            counted_as = getattr(limiter, "counted_as", None)
            if callable(counted_as):
                counted = counted_as(method)
        if not limiter.applies_to(counted):
            return None
        key_of = self._key
        refuse = self._refuse
        if getattr(limiter, "synchronous", False) is True:
            check_now = cast(Any, limiter).checker(counted)
            if check_now is None:
                return None

            if key_of is by_peer:  # the default key, inline: a frame fewer per call

                def before_peer(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    peer = context.peer()
                    key = _PEER_HOSTS.get(peer)
                    if key is None:
                        key = _peer_key(peer)  # (a str: no check of the key's type)
                    rejection = check_now(key)
                    return None if rejection is None else refuse(rejection, context)

                return before_peer

            def before_now(context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                key = key_of(method, context)
                if not isinstance(key, str):
                    raise _not_a_key(key_of, key)
                rejection = check_now(key)
                return None if rejection is None else refuse(rejection, context)

            return before_now
        check = limiter.check

        async def before(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            key = key_of(method, context)
            if not isinstance(key, str):
                raise _not_a_key(key_of, key)
            rejection = await check(counted, key)
            if rejection is not None:
                await refuse(rejection, context)

        return before

    async def aclose(self) -> None:
        """Release the limiter's storage connections, if it has an ``aclose()``; call it
        once the server has stopped."""
        aclose = getattr(self.limiter, "aclose", None)
        if callable(aclose):
            await aclose()

    @staticmethod
    async def _refuse(rejection: Rejection, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if rejection.code is _RESOURCE_EXHAUSTED:
            _rejected.set(True)  # the call's own task: read by the telemetry wrapper
        after = rejection.retry_after_s
        if after is None:
            trailing: tuple[tuple[str, str], ...] = ()
        else:  # gRFC A6 pushback: the wait, or -1 (do not retry) past the caller's deadline
            wait_ms = _wait_ms(rejection)
            remaining = getattr(context, "time_remaining", None)  # None: a stand-in's
            left = remaining() if remaining is not None else None
            # -1 too for a wait past gRFC A6's signed 32-bit milliseconds (24.8 days:
            # "1/month"): grpc-java cannot read it, grpc core would wait it out
            pushback = "-1" if wait_ms > _MAX_PUSHBACK_MS or (
                left is not None and left * 1000 < wait_ms) else str(wait_ms)
            trailing = (("retry-after", str(after)), ("grpc-retry-pushback-ms", pushback))
        if rejection.code is _UNAVAILABLE:
            # failing closed: marked so mesh clients count it against no endpoint
            trailing = (*trailing, STORAGE_REFUSAL_METADATA)
        await context.abort(rejection.code, rejection.details, trailing)
