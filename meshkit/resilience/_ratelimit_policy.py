"""Rate-limit policy with no I/O: rules, per-method lookup, caller keys, retry-after, outages.

Everything here is synchronous and clock-injectable so it can be unit tested without a
server or a storage; :mod:`meshkit.resilience.ratelimit` binds it to ``grpc.aio`` and to a
``limits`` storage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from limits import RateLimitItem
from limits.aio.storage import (
    MemcachedStorage,
    MemoryStorage,
    MongoDBStorage,
    MovingWindowSupport,
    RedisClusterStorage,
    RedisSentinelStorage,
    RedisStorage,
    SlidingWindowCounterSupport,
)
from limits.aio.storage import Storage as AsyncStorage
from limits.util import SEPARATORS, SINGLE_EXPR, parse_many

from meshkit._methods import HEALTH_METHODS, MAX_CACHED_METHODS, MethodMatcher, normalized
from meshkit._uris import hide_userinfo, mask_query, shown_value, split_userinfo
from meshkit.errors import ConfigError

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
"""Strategy names accepted by ``RateLimitOptions.strategy``, as ``limits`` names them."""

MAX_RULE_WINDOW_S = 10**12
"""The longest window a rule may have, seconds (about 31,700 years; ``"1/1000 years"`` is
3.1e10): Redis' scripts fail on longer ones (the sliding window counter's from about 5e13
s, its TTL printed in exponent form; the others' past int64 milliseconds), every call then
a storage failure."""

MAX_RULE_AMOUNT = 2**53
"""The largest amount a rule may have (9,007,199,254,740,992: the integers a double, a
Lua number, holds exactly): Redis' moving-window script fails on larger ones every call
(from about 2**62: an int64's largest, ``"9223372036854775807/second"``, included), each
call then a storage failure."""

_ASYNC_SCHEMES: dict[str, type[AsyncStorage]] = {
    scheme: cls
    for cls in (MemoryStorage, RedisStorage, RedisClusterStorage, RedisSentinelStorage,
                MemcachedStorage, MongoDBStorage)
    for scheme in (cls.STORAGE_SCHEME or ())
}
"""Async storage URI schemes ``limits`` provides, e.g. ``"async+redis"`` -> ``RedisStorage``."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule: the limits that apply together to a method.

    Attributes:
        pattern: the rules-mapping key that matched (``"<default>"`` for the default rule).
        text: the rule as written, e.g. ``"10 per minute;1000 per hour"``.
        items: the parsed ``limits`` items, shortest window first (:func:`parse_rule`),
            checked in that order; all must admit the call.
    """

    pattern: str
    text: str
    items: tuple[RateLimitItem, ...]


def parse_rule(text: object, *, where: str) -> tuple[RateLimitItem, ...]:
    """Parse a rule in ``limits`` notation (``"100/second"``, ``"10 per minute;1000/hour"``).

    The parts come shortest window first, whatever order they were written in: a call is
    counted against each part in turn until one refuses it, and the parts before that
    one keep its hit (no storage takes one back), so a call a longer window refuses is
    charged only to windows that end sooner. In the written order, ``"4/minute;2/second"``
    charged the minute with every call the second refused: a burst of ten spent the
    minute's four at once (two calls a minute, where ``"2/second;4/minute"`` admitted
    four).

    Args:
        text: the rule string.
        where: what the rule belongs to, for the error message (``"default_rule"``, ...).

    Raises:
        ConfigError: not a string, not valid notation, the same limit twice
            (``"4/minute;4 per minute"``: both would count every call under one key,
            admitting 2), an amount below 1 or above
            :data:`MAX_RULE_AMOUNT`, a window of zero units (``"1/0 seconds"``, which
            ``limits`` alone reads as one unit) or one longer than
            :data:`MAX_RULE_WINDOW_S` (quoted).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be a rate limit string like '100/second', got {text!r}")
    try:
        items = tuple(parse_many(text))
    except ValueError as exc:
        raise ConfigError(
            f"{where}: malformed rate limit {text!r} (expected e.g. '100/second' or "
            f"'10 per minute;1000 per hour')"
        ) from exc
    if not items:
        raise ConfigError(f"{where}: malformed rate limit {text!r}")
    seen: set[tuple[int, int, str]] = set()
    for item in items:
        # one storage key per (amount, window): the same limit twice counted each call
        # twice under it ("4/minute;4/minute" admitted 2 a minute)
        same = (item.amount, item.multiples, item.GRANULARITY.name)
        if same in seen:
            raise ConfigError(f"{where}: the limit {item.amount} per {item.multiples} "
                              f"{item.GRANULARITY.name} is given twice in {text!r} (each "
                              "would count every call, halving it): give it once")
        seen.add(same)
        if item.amount < 1:
            raise ConfigError(f"{where}: rate limit amount must be >= 1, got {text!r}")
        if item.amount > MAX_RULE_AMOUNT:
            raise ConfigError(f"{where}: rate limit amount {item.amount} is more than "
                              f"{MAX_RULE_AMOUNT}, which a storage can count to, got {text!r}")
        if item.get_expiry() > MAX_RULE_WINDOW_S:
            raise ConfigError(f"{where}: rate limit window {item.get_expiry()} s is longer "
                              f"than {MAX_RULE_WINDOW_S} s, which a storage can keep, got "
                              f"{text!r}")
    # limits reads "1/0 seconds" as "1 per 1 second" (a 0 like a missing number): a window
    # of no time is no limit anyone meant (parse_many matched the text as a whole already)
    for part in SEPARATORS.split(text):
        match = SINGLE_EXPR.match(part)
        if match is not None and match.group(3) is not None and int(match.group(3)) == 0:
            raise ConfigError(f"{where}: rate limit window must be at least 1 unit, got 0 "
                              f"in {text!r}")
    # shortest window first (see above); the same window: the smaller amount first
    return tuple(sorted(items, key=lambda item: (item.get_expiry(), item.amount)))


class RuleTable:
    """The rate-limit rules, parsed, and which one governs a method.

    Keys are method patterns matched by :class:`~meshkit._methods.MethodMatcher`: full
    (``"/ecom.v1.OrderService/PlaceOrder"``), short (``"OrderService/PlaceOrder"``) or
    globs (``"OrderService/*"``, ``"*/Get*"``, ``"*"``). An exact pattern wins, then the
    longest glob (most literal characters; ties: fewer ``*``, then code-point order), then
    ``default_rule``; see :mod:`meshkit._methods`. :meth:`lookup` is cached per method
    (bounded), so the hot path is one dict lookup.

    The health service's methods (:data:`HEALTH_METHODS`: ``/grpc.health.v1.Health/``
    ``Check``, ``Watch`` and ``List``; orchestrators' probes, Consul's gRPC checks, mesh
    clients' health checking) are limited only by a key whose service part names
    something (:func:`names_a_service`: ``"grpc.health.v1.Health/*"``,
    ``"Health/Check"``, ``"grpc.*/*"``), never by ``default_rule`` nor by a catch-all
    glob (``"*"``, ``"*/Check"``; one that exempts, ``"*/Check": None``, still does): a
    probe refused ``RESOURCE_EXHAUSTED`` (a kubelet's liveness and readiness probes over
    a ``"1/second"`` default) or, failing closed, ``UNAVAILABLE`` during a storage outage
    is a replica taken out of service (every replica at once, for a Redis blip), which
    no limit is for. Any other name under that path (``/grpc.health.v1.Health/X``, which
    a catch-all generic handler would serve) is limited as any method, and so is a
    health method the server did not register (:meth:`counted_as`).

    Each rule also has a name of its own, :meth:`counted_as`, under which the calls of
    methods the server did not register are counted (``"<unregistered OrderService/*>"``,
    ``"<unregistered methods>"`` for the default rule): :meth:`lookup` gives that rule for
    it. No method name a caller sends is one (a gRPC path starts with ``/``).

    Args:
        rules: ``{method pattern: rule string or None}``; ``None`` exempts.
        default_rule: rule for methods no key matches; ``None`` leaves them unlimited.

    Raises:
        ConfigError: a malformed pattern or rule (quoted).
    """

    __slots__ = ("_cache", "_health", "_matcher", "_shared")

    def __init__(self, rules: Mapping[str, str | None], default_rule: str | None) -> None:
        MethodMatcher(rules, None, where="RateLimitOptions.rules")  # the patterns first
        parsed = {pattern: None if text is None else Rule(
            pattern, text, parse_rule(text, where=f"rules[{pattern!r}]"))
            for pattern, text in rules.items()}
        default = None if default_rule is None else Rule(
            "<default>", default_rule, parse_rule(default_rule, where="default_rule"))
        self._matcher: MethodMatcher[Rule | None] = MethodMatcher(
            parsed, default, where="RateLimitOptions.rules")
        # the health service: only keys naming a service limit it (class docstring); an
        # exemption by a catch-all glob ("*/Check": None) outranks a package's as before
        self._health: MethodMatcher[Rule | None] = MethodMatcher(
            {pattern: rule for pattern, rule in parsed.items()
             if rule is None or names_a_service(pattern)},
            None, where="RateLimitOptions.rules")
        # the names unregistered methods are counted under -> their rule
        self._shared: dict[str, Rule] = {
            _shared_name(rule): rule for rule in (*parsed.values(), default)
            if rule is not None}
        self._cache: dict[str, Rule | None] = dict(self._shared)

    @property
    def empty(self) -> bool:
        """True when no method can ever be limited (no default and no non-None rule)."""
        return all(r is None for r in self._matcher.values())

    def lookup(self, method: str) -> Rule | None:
        """The rule for full method name ``method`` (or a name :meth:`counted_as` gave),
        or ``None`` when it is unlimited: one dict lookup once the name has been seen."""
        try:
            return self._cache[method]
        except KeyError:
            pass
        rule = self._shared[method] if method in self._shared else (
            self._health if method in HEALTH_METHODS else self._matcher).lookup(method)
        cache = self._cache
        if len(cache) >= MAX_CACHED_METHODS + len(self._shared):
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del cache[next(iter(cache))]  # the oldest (a name of _shared comes back)
        cache[method] = rule
        return rule

    def counted_as(self, method: str) -> str:
        """The name the calls of full method name ``method`` are counted under when the
        server did not register ``method`` (a generic handler serving any name a caller
        sends): the rule's own name, shared by every such method it governs, so that a
        caller sending a new name per call does not get a new budget per name;
        ``method`` itself when no rule limits it. A name under the health service's path
        is limited here as any other: the server did not register it, so it is no
        method of its health service (a catch-all handler serves it)."""
        rule = self._matcher.lookup(method)
        return method if rule is None else _shared_name(rule)


_WILDCARDS = re.compile(r"\[[^\]]*\]|[*?]")


def names_a_service(pattern: str) -> bool:
    """Whether the method pattern ``pattern`` (valid) names a service or a package: its
    service part is more than wildcards (``"Health/*"``, ``"grpc.*/*"``; not ``"*"``,
    ``"*/Check"``, ``"?*/*"``)."""
    return bool(_WILDCARDS.sub("", normalized(pattern).partition("/")[0]))


def _shared_name(rule: Rule) -> str:
    """The name the calls of unregistered methods governed by ``rule`` are counted under."""
    if rule.pattern == "<default>":
        return "<unregistered methods>"
    return f"<unregistered {rule.pattern}>"


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string, without scheme or port.

    ``"ipv4:10.0.0.7:51234"`` -> ``"10.0.0.7"``; ``"ipv6:%5B::1%5D:51234"`` (or
    ``"ipv6:[::1]:51234"``) -> ``"::1"``; other schemes (``"unix:/run/x.sock"``) are
    returned whole, since they carry no port.
    """
    scheme, sep, rest = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    if "%" in rest:
        rest = urllib.parse.unquote(rest)
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        host = rest
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    return host


IPV6_NETWORK_PREFIX_LEN = 64
"""The prefix length :func:`~meshkit.resilience.by_peer_network` keys a global IPv6
caller by, by default: a /64 is one subnet, the least a site or a home connection is
given (RFC 6177, RIPE-690), and SLAAC lets its owner use any of its 2^64 addresses, so
keyed by the full address one internet client would have as many budgets (Cloudflare's
rate limiting rules and the advice for nginx ``limit_req`` key IPv6 by /64 for that
reason). Not the default key's: inside a cluster a /64 is no one client's (EKS and GKE
IPv6 pods take global addresses out of their subnet's /64; Kubernetes pod networks hand out
unique-local blocks of one /64), where keying by it would put every pod of a subnet in
one budget."""
_AGGREGATED_V6 = ipaddress.IPv6Network("2000::/3")


def peer_key(peer: str, *, ipv6_prefix_len: int = 128) -> str:
    """The rate-limit key of a gRPC peer string: :func:`peer_host`, an IPv4-mapped IPv6
    address (``::ffff:10.0.0.7``) as its IPv4 address, and, with ``ipv6_prefix_len``
    below 128 (:func:`~meshkit.resilience.by_peer_network`), an IPv6 address in the
    global unicast space (``2000::/3``) as its network of that length, written
    ``"2001:db8:1:2::/64"``. Unique-local (``fd00::a:1``), loopback (``::1``),
    link-local (``fe80::1%eth0``: ``fe80::/64`` is every host of the link) and other
    IPv6 addresses always keep their full address.

    ``peer_key("ipv6:[2001:db8:1:2::7]:5000")`` -> ``"2001:db8:1:2::7"``;
    ``peer_key("ipv6:[2001:db8:1:2::7]:5000", ipv6_prefix_len=64)`` ->
    ``"2001:db8:1:2::/64"``; ``peer_key("ipv4:10.0.0.7:51234")`` -> ``"10.0.0.7"``.
    """
    host = peer_host(peer)
    if ":" not in host or not peer.startswith("ipv6:"):
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:  # a zone (link-local), or not an address: as it is
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if ipv6_prefix_len < 128 and address in _AGGREGATED_V6:
        return str(ipaddress.IPv6Network((address, ipv6_prefix_len), strict=False))
    return host


def retry_after_s(reset_at_s: float, now_s: float) -> int:
    """Whole seconds until ``reset_at_s``, rounded up, at least 1 (both on one clock: the
    storage's, seconds since the epoch for Redis, the monotonic clock for ``memory://``)."""
    return max(1, math.ceil(reset_at_s - now_s))


def sliding_window_wait_s(*, amount: int, window_s: float, previous_count: int,
                          previous_expires_in_s: float, current_count: int,
                          current_expires_in_s: float) -> float:
    """Seconds until a sliding-window-counter limit admits one more hit.

    The weighted count (``limits``' sliding window counter, after Cloudflare's) is
    ``previous * previous_expires_in / window + current``. ``limits`` admits a hit while
    ``floor(weighted) + 1 <= amount`` (memory storage; Redis' ``acquire_sliding_window.lua``
    floors only the previous share, the same test since ``current`` is whole), that is
    while the weighted count is below ``amount``. While the current window lasts only the
    previous window's share decays; once it rolls over, today's hits become the previous
    window and decay in turn. (``limits``' own ``get_window_stats`` reports the current
    window's expiry, too early when the hits are in the current window: they still weigh
    fully after it.)

    Args:
        amount: the limit's allowance per window (>= 1).
        window_s: window length in seconds.
        previous_count, previous_expires_in_s, current_count, current_expires_in_s: as
            ``storage.get_sliding_window`` returns them; the current window's key lives two
            windows from its start, so its window ends ``current_expires_in_s - window_s``
            from now: now when that TTL is exactly one window (Redis shifts the window
            only once its key's PTTL is below it, so at that millisecond the figures are
            the ended window's, which a hit a millisecond later no longer meets).

    Returns:
        Seconds to wait: 0.0 if a hit would be admitted now, else the moment the weighted
        count reaches ``amount`` on its way down (a hit is admitted any time after it).
    """
    prev_expires = max(0.0, min(previous_expires_in_s, window_s))
    # a TTL of exactly one window: the window ends now (Redis' boundary millisecond, not
    # shifted yet), not in a whole window (">" sent "3/second" callers 1000 ms, "100/hour"
    # callers an hour, at each window's end)
    current_ends_in = current_expires_in_s - window_s if current_expires_in_s >= window_s \
        else current_expires_in_s
    if previous_count * prev_expires / window_s + current_count < amount:
        return 0.0
    if current_count < amount and previous_count > 0:
        # Admitted once the previous window's weighted share is below amount - current.
        t = prev_expires - (amount - current_count) * window_s / previous_count
        if t < current_ends_in:
            return max(0.0, t)
    # After the current window rolls over, its hits decay as the new previous window.
    after = window_s * (1 - amount / current_count) if current_count >= amount else 0.0
    return max(0.0, current_ends_in) + after


#: storage URI query options whose values are no secret, shown as written by
#: :func:`redact_uri`: coredis' connection options (``ConnectionPool.from_url``), the
#: database and TLS file paths, and limits' own Redis options
_STORAGE_OPTIONS = frozenset({
    "db", "client_name", "stream_timeout", "connect_timeout", "max_connections",
    "max_idle_time", "protocol_version", "idle_check_interval", "noreply", "noevict",
    "notouch", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs",
    "ssl_check_hostname", "decode_responses", "socket_timeout", "socket_connect_timeout",
    "health_check_interval", "retry_on_timeout", "implementation", "key_prefix",
})


def redact_uri(uri: str) -> str:
    """``uri`` with any user info replaced by ``***``, for logs and error messages:
    ``"async+redis://user:pw@h:6379/0"`` -> ``"async+redis://***@h:6379/0"``; likewise the
    value of any query option that is not a known harmless one (the database, timeouts,
    TLS file paths, ...: ``?password=pw`` -> ``?password=***``) and any fragment. A URI
    with none of these comes back unchanged.

    User info is everything after ``scheme://`` up to the last ``@`` (as registry URIs
    are shown, :func:`meshkit._uris.hide_userinfo`): a password may hold an unencoded
    ``/``, ``?`` or ``#``, where ``urllib.parse.urlsplit`` would find none and show it.
    """
    masked = hide_userinfo(uri)
    if "?" not in masked and "#" not in masked:
        return masked
    prefix, userinfo, rest = split_userinfo(masked)
    return f"{prefix}{userinfo}{mask_query(rest, _STORAGE_OPTIONS)}"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path), without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def storage_class(uri: object, strategy: str) -> tuple[str, type[AsyncStorage]]:
    """Resolve a storage URI to ``(async URI, limits async storage class)`` for ``strategy``.

    ``memory://`` and ``redis://...`` are accepted as aliases of ``async+memory://`` and
    ``async+redis://...``; any async scheme ``limits`` registers works.

    Raises:
        ConfigError: not a URI, an unknown scheme, a storage whose driver is not installed
            (``async+redis://`` needs the ``meshkit[redis]`` extra), or one that cannot run
            ``strategy`` (e.g. ``async+memcached://`` with ``moving-window``); quoted,
            password redacted.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigError(
            f"storage_uri must be a URI like 'memory://' or 'async+redis://host:6379', "
            f"got {redact_uri(uri) if isinstance(uri, str) else uri!r}"
        )
    given = uri
    scheme = uri.partition("://")[0]
    if not scheme.startswith("async+"):
        scheme, uri = f"async+{scheme}", f"async+{uri}"
    cls = _ASYNC_SCHEMES.get(scheme)
    if cls is None:
        raise ConfigError(
            f"unknown storage_uri {redact_uri(given)!r}: scheme must be one of "
            f"{sorted(_ASYNC_SCHEMES)} (the 'async+' may be left out)"
        )
    drivers = list(getattr(cls, "DEPENDENCIES", None) or ())
    if drivers and not any(_installed(name) for name in drivers):
        how = "pip install 'meshkit[redis]'" if "redis" in scheme else \
            f"install one of {sorted(drivers)}"
        raise ConfigError(f"storage_uri {redact_uri(given)!r} needs a driver that is not "
                          f"installed: {how}")
    need = {"moving-window": MovingWindowSupport,
            "sliding-window-counter": SlidingWindowCounterSupport}.get(strategy)
    if need is not None and not issubclass(cls, need):
        raise ConfigError(
            f"strategy {strategy!r} is not supported by storage_uri {redact_uri(given)!r}"
        )
    return uri, cls


_COREDIS_SCHEMES = ("async+redis://", "async+rediss://", "async+redis+unix://")
"""Storage URI schemes ``limits`` serves with a single coredis connection pool, whose
query options :func:`check_redis_options` checks (``ConnectionPool.from_url``)."""

_COREDIS_OPTIONS = frozenset({
    "db", "client_name", "stream_timeout", "connect_timeout",
    "max_connections", "max_idle_time", "protocol_version", "idle_check_interval",
    "noreply", "noevict", "notouch", "encoding"})
"""Query options coredis' ``ConnectionPool.from_url`` reads, or passes on to a connection
that takes them as text, on every single-server scheme; it passes any other option on
to the connection class as a keyword, which refuses an unknown one (``TypeError`` at
every connection: every hit a storage failure)."""
_COREDIS_OVERWRITTEN = frozenset({"username", "password", "host", "port"})
"""Query options coredis' ``ConnectionPool.from_url`` reads and then overwrites with the
URI's user info and ``host:port`` (``None`` where it has none): never used."""
_COREDIS_TCP_OPTIONS = frozenset({"socket_keepalive"})
"""Also taken over TCP (``async+redis://``, ``async+rediss://``)."""
_COREDIS_TLS_OPTIONS = frozenset({"ssl_keyfile", "ssl_certfile", "ssl_check_hostname",
                                  "ssl_cert_reqs", "ssl_ca_certs"})
"""Also taken over TLS (``async+rediss://``): read into the connection's TLS context."""


_NETWORK_REDIS_SCHEMES = frozenset(
    scheme for cls in (RedisStorage, RedisClusterStorage, RedisSentinelStorage)
    for scheme in (cls.STORAGE_SCHEME or ()) if not scheme.endswith("+unix"))
"""Redis (and Valkey) storage schemes whose URI names ``host:port`` locations: one for a
single server, one or more (``,``-separated) for a cluster or Sentinel."""


def _check_unix_socket_path(uri: str, *, shown: str) -> None:
    """Refuse an ``async+redis+unix://`` URI that names no socket path (coredis then
    connects over TCP to ``localhost:6379``), names ``/``, or has a host part (``limits``
    refuses it when the storage is built: ``//tmp/r.sock`` reads ``tmp`` as a host).

    Raises:
        ConfigError: quoting ``shown`` (the password redacted).
    """
    rest = split_userinfo(uri)[2]
    path = re.split(r"[?#]", rest, maxsplit=1)[0]
    if not path.startswith("/") or not path.strip("/"):
        raise ConfigError(
            f"storage_uri {shown!r}: a Unix socket URI names the socket's absolute path "
            f"and no host, async+redis+unix:///run/redis/redis.sock (three slashes; with "
            f"no path the Redis client connects to localhost:6379 over TCP instead)")


def _check_redis_locations(uri: str, *, shown: str) -> None:
    """Refuse a Redis storage URI whose ``host:port`` part the driver would misread or that
    ``limits`` cannot parse (which it reported only when the interceptor was built):
    a port ``0`` (coredis reads it as 6379: the counts kept in another Redis), a port that
    is missing, not a number or above 65535, unbalanced IPv6 brackets, no host, several
    locations for a single server, or user info holding an unencoded ``/``, ``?`` or ``#``
    (``limits`` and coredis end the host part there, and coredis does not decode a
    percent-encoded one). Not a Redis URI over the network: left alone.

    Raises:
        ConfigError: quoting ``shown`` (the password redacted) and the location.
    """
    scheme = uri.partition("://")[0]
    if scheme in RedisStorage.STORAGE_SCHEME and scheme.endswith("+unix"):
        _check_unix_socket_path(uri, shown=shown)
        return
    if scheme not in _NETWORK_REDIS_SCHEMES:
        return
    _, userinfo, rest = split_userinfo(uri)
    if any(c in userinfo for c in "/?#"):
        raise ConfigError(
            f"storage_uri {shown!r}: its user info (user name or password) holds an "
            f"unencoded '/', '?' or '#', where the URI's host part ends for limits and "
            f"the Redis client, which then cannot read it (coredis sends a "
            f"percent-encoded one as written): choose one without them")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    locations = authority.split(",")
    single = scheme in RedisStorage.STORAGE_SCHEME
    if single and len(locations) > 1:
        raise ConfigError(
            f"storage_uri {shown!r}: a single Redis server takes one host:port, got "
            f"{authority!r} (several hosts: async+redis+cluster:// or "
            f"async+redis+sentinel://)")
    for location in locations:
        where = f"storage_uri {shown!r}: location {location.strip()!r}"
        try:
            parsed = urllib.parse.urlsplit(f"redis://{location.strip()}")
            host, port = parsed.hostname, parsed.port
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc} (write host:port, an IPv6 address in "
                              f"brackets: [::1]:6379)") from None
        if not host or port is None:
            raise ConfigError(f"{where}: needs a host and a port, host:port (Redis' own "
                              f"is 6379)")
        if port == 0:
            raise ConfigError(f"{where}: port 0 is no Redis port (the Redis client reads "
                              f"it as 6379, the counts kept in another Redis): name the "
                              f"server's port, 1 to 65535")


_BOOL_WORDS = {"0": False, "f": False, "false": False, "n": False, "no": False,
               "1": True, "t": True, "true": True, "y": True, "yes": True}
"""The values coredis' ``query_param_to_bool`` reads as off and on (any case)."""
_CERT_REQS = ("none", "optional", "required")
"""``ssl_cert_reqs`` values coredis maps (``RedisSSLContext``; any other: ``KeyError``)."""


def _check_tls_options(options: Mapping[str, str],
                       refuse: Callable[[str, str, str], ConfigError]) -> None:
    """Refuse ``async+rediss://`` TLS options no connection can use: ``ssl_cert_reqs``
    other than ``none``, ``optional``, ``required`` (coredis: ``KeyError`` when the storage
    was built), ``ssl_check_hostname`` other than a yes/no word, and the name check on with
    verification off (``ssl`` refuses that context at every connection)."""
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in _CERT_REQS:
        raise refuse("ssl_cert_reqs", reqs, f"must be one of {', '.join(_CERT_REQS)}")
    check = options.get("ssl_check_hostname")
    if check is not None:
        on = _BOOL_WORDS.get(check.lower())
        if on is None:
            raise refuse("ssl_check_hostname", check, "must be true or false")
        if on and reqs == "none":
            raise refuse("ssl_check_hostname", check, "cannot check the server's name with "
                         "ssl_cert_reqs=none (no certificate verified): leave one out")


def with_tls_defaults(uri: str) -> str:
    """``uri`` as the Redis driver is given it: an ``async+rediss://`` URI without
    ``ssl_check_hostname`` gets ``ssl_check_hostname=true`` (coredis' default is false:
    any certificate its CA bundle signed, for any name, was taken) unless it turns
    verification off (``ssl_cert_reqs=none``). Other URIs come back unchanged."""
    if not uri.startswith("async+rediss://"):
        return uri
    prefix, userinfo, rest = split_userinfo(uri)
    rest, hash_, fragment = rest.partition("#")
    base, _, query = rest.partition("?")
    options = urllib.parse.parse_qs(query)
    if "ssl_check_hostname" in options or options.get("ssl_cert_reqs") == ["none"]:
        return uri
    query = f"{query}&ssl_check_hostname=true" if query else "ssl_check_hostname=true"
    return f"{prefix}{userinfo}{base}?{query}{hash_}{fragment}"


def check_redis_options(uri: str, *, shown: str) -> None:
    """Refuse a single-server Redis storage URI's query option with which no hit can
    succeed, or that the driver would drop with a ``UserWarning`` only (coredis 5:
    ``ConnectionPool.from_url`` parses ``URL_QUERY_ARGUMENT_PARSERS`` and ignores a value
    it cannot parse). A Sentinel or cluster URI (``async+redis+sentinel://``,
    ``async+redis+cluster://``) may have no query option at all: ``limits`` reads none of
    it (``?db=2`` counted in db 0). Other URIs are left alone.

    A cluster URI may have no path (a cluster has db 0 only; ``limits`` ignores it). A
    Sentinel URI's path must name the primary's service name, one segment
    (``/mymaster``). ``?noevict=`` and ``?notouch=`` must read as on (``true``, ``1``,
    ``yes``): coredis reads any value as on, ``false`` included.

    Refused too: ``?username=``, ``?password=``, ``?host=``, ``?port=``
    (:data:`_COREDIS_OVERWRITTEN`): coredis overwrites them with the URI's user info and
    ``host:port`` (a password given so was never sent: every hit ``NOAUTH`` on a Redis
    with ``requirepass``).

    Refused: an option coredis does not take (:data:`_COREDIS_OPTIONS`; ``?socket_timeout=``,
    ``?retry_on_timeout=``, redis-py's names; ``?implementation=``, ``limits``' constructor
    argument; ``?decode_responses=``, with which every hit timed out; a typo): it passes
    any option it does not parse on to its connection class, which refused it at every
    connection; ``noreply`` with any value (coredis reads every non-empty value as ``True``,
    and a hit needs Redis' reply); ``connect_timeout`` not a number > 0;
    ``stream_timeout`` not a number >= 0 (``0``: none); ``max_connections`` other than
    ``0`` (no bound: coredis' pool fails a command once that many are busy, it does not
    wait); ``max_idle_time``, ``idle_check_interval`` not an
    integer; ``protocol_version`` other than 2 or 3 (RESP2, RESP3); ``db`` (or a
    ``redis://`` path, ``/2``) not a whole number >= 0; ``client_name`` with a character
    Redis refuses in ``CLIENT SETNAME`` (a space, a control or non-ASCII character: only
    ``!`` to ``~``).

    Args:
        uri: the ``async+`` storage URI (:func:`storage_class`'s).
        shown: the URI as errors quote it (password redacted).

    Raises:
        ConfigError: naming the option and quoting ``shown`` (every option checked here
            is one :func:`redact_uri` shows as written).
    """
    scheme = uri.partition("://")[0]
    _check_redis_locations(uri, shown=shown)
    if scheme in RedisSentinelStorage.STORAGE_SCHEME:
        path = re.split(r"[?#]", split_userinfo(uri)[2], maxsplit=1)[0].partition("/")[2]
        if len([part for part in path.split("/") if part]) != 1:
            raise ConfigError(
                f"storage_uri {shown!r}: the path names the primary's service name as the "
                f"Sentinels know it, one path segment (async+redis+sentinel://host:26379/"
                f"mymaster), got {'/' + path!r} (with none the storage cannot be built or "
                f"asks for a primary named '', with several limits joins them)")
    if scheme in RedisClusterStorage.STORAGE_SCHEME:
        path = re.split(r"[?#]", split_userinfo(uri)[2], maxsplit=1)[0].partition("/")[2]
        if path:  # limits builds the cluster client from the hosts alone: db 0
            raise ConfigError(
                f"storage_uri {shown!r}: a Redis Cluster has database 0 only and limits "
                f"reads no path of a {scheme}:// URI, so {'/' + path!r} would be ignored: "
                f"leave it out (services sharing a cluster are kept apart by key_prefix)")
    if scheme in (*RedisSentinelStorage.STORAGE_SCHEME, *RedisClusterStorage.STORAGE_SCHEME):
        query = split_userinfo(uri)[2].partition("#")[0].partition("?")[2]
        for option in sorted(urllib.parse.parse_qs(query)):
            raise ConfigError(
                f"storage_uri {shown!r}: limits reads no query option of a {scheme}:// URI "
                f"(it builds the client from the hosts, the password and the path alone), "
                f"so {option!r} would be ignored: leave it out")
        return
    if not uri.startswith(_COREDIS_SCHEMES):
        return
    _, _, rest = split_userinfo(uri)
    rest = rest.partition("#")[0]
    path, _, query = rest.partition("?")
    options = {name: values[0] for name, values in urllib.parse.parse_qs(query).items()}

    def refuse(name: str, value: str, rule: str) -> ConfigError:
        return ConfigError(f"storage_uri {shown!r}: {name}={shown_value(value)} {rule}")

    def number(name: str, low: float, *, above: bool) -> None:
        value = options.get(name)
        if value is None:
            return
        try:
            got = float(value)
        except ValueError:
            got = math.nan
        if not (got > low if above else got >= low):
            raise refuse(name, value, f"must be a number {'>' if above else '>='} "
                                      f"{low:g} (seconds)") from None

    def integer(name: str, low: int | None, why: str = "") -> None:
        value = options.get(name)
        if value is None:
            return
        try:
            got = int(value)
        except ValueError:
            raise refuse(name, value, f"must be a whole number{why}") from None
        if low is not None and got < low:
            raise refuse(name, value, f"must be a whole number >= {low}{why}") from None

    taken = _COREDIS_OPTIONS
    if not uri.startswith("async+redis+unix://"):
        taken = taken | _COREDIS_TCP_OPTIONS
    if uri.startswith("async+rediss://"):
        taken = taken | _COREDIS_TLS_OPTIONS
    for option in sorted(options):
        if option in _COREDIS_OVERWRITTEN:
            belongs = "user info" if option in ("username", "password") else "host:port"
            raise ConfigError(
                f"storage_uri {shown!r}: the Redis driver (coredis) ignores the option "
                f"{option!r}: it overwrites it with the URI's {belongs} (a password given "
                f"so is never sent, a host or port never used): write "
                f"async+redis://[username:password@]host:port[/db] instead")
        if option not in taken:
            raise ConfigError(
                f"storage_uri {shown!r}: the Redis driver (coredis) takes no option "
                f"{option!r} (every connection would fail: it passes the option on to the "
                f"connection, which refuses it); it takes {', '.join(sorted(taken))}")
    if uri.startswith("async+rediss://"):
        _check_tls_options(options, refuse)
    for flag in ("noevict", "notouch"):
        if flag in options and not _BOOL_WORDS.get(options[flag].lower(), False):
            raise refuse(flag, options[flag], "would turn it on (coredis reads any value "
                         "as on): write true, or leave it out") from None
    if "noreply" in options:
        raise refuse("noreply", options["noreply"], "turns Redis' replies off (coredis reads "
                     "any value as on), and a rate-limit hit needs the reply: leave it "
                     "out") from None
    number("connect_timeout", 0, above=True)
    number("stream_timeout", 0, above=False)
    integer("max_connections", 0, " (0: no bound)")
    if int(options.get("max_connections", "0")) >= 1:  # int-parsable: checked above
        raise refuse("max_connections", options["max_connections"],
                     "would fail every hit beyond that many at once (coredis' pool raises "
                     "'Too many connections' instead of waiting for one): leave it out "
                     "(or 0)") from None
    integer("max_idle_time", None)
    integer("idle_check_interval", None)
    integer("db", 0)
    version = options.get("protocol_version")
    if version is not None and version.strip() not in ("2", "3"):
        raise refuse("protocol_version", version, "must be 2 or 3 (RESP2, RESP3)") from None
    name = options.get("client_name")
    if name is not None and not all("!" <= c <= "~" for c in name):
        raise refuse("client_name", name, "may hold only the characters '!' to '~' (Redis "
                     "refuses a client name with a space, a control or a non-ASCII "
                     "character)") from None
    host_end = path.find("/")
    db_path = path[host_end:].replace("/", "") if host_end >= 0 else ""
    if ("db" not in options and db_path and not uri.startswith("async+redis+unix://")
            and not (db_path.isascii() and db_path.isdigit())):
        raise ConfigError(f"storage_uri {shown!r}: the path names the database (db), "
                          f"a whole number >= 0, got {db_path!r}") from None


class OutageTracker:
    """Tracks whether the storage is in an outage, so it is reported once per outage.

    Args:
        clock: monotonic seconds (default :func:`time.monotonic`), injectable for tests.
    """

    __slots__ = ("_clock", "down_since")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Clock reading when the current outage began; None while healthy.
        self.down_since: float | None = None

    def failed(self) -> bool:
        """Record a storage failure; True if it starts an outage (log it), else False."""
        if self.down_since is None:
            self.down_since = self._clock()
            return True
        return False

    def succeeded(self) -> float | None:
        """Record a storage success; the outage's length in seconds if this ends one."""
        if self.down_since is None:
            return None
        lasted = self._clock() - self.down_since
        self.down_since = None
        return lasted
