"""Registry data types and the :class:`Registry` protocol."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from meshkit._config import check_int, check_string_map, check_strings
from meshkit._fields import Normalised
from meshkit._hosts import check_host, uri_host
from meshkit.errors import ConfigError

__all__ = ["Instance", "Registry", "RegistryStatus"]

# Used with fullmatch: ``$`` would also match before a final newline ("orderd\n").
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
# hosts check_host has accepted (it parses addresses: some microseconds, and registries
# build an Instance per record at every read); cleared when it reaches _HOSTS_OK_MAX
_HOSTS_OK: set[str] = set()
_HOSTS_OK_MAX = 4096
#: The largest weight: a signed 64-bit integer (SQLite's INTEGER, Consul's and etcd's Go
#: int); a larger one could not be registered (the local registry's write raised a bare
#: OverflowError)
_WEIGHT_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One running instance of a service, as registered and as discovered.

    Args:
        service: service name, e.g. ``"orderd"``; letters, digits, ``-``, ``_``, ``.``,
            1 to 63 characters (a DNS label, as Consul recommends for service names).
        instance_id: unique id of this instance across the registry, e.g. ``"orderd-1"``.
        host: address clients connect to, an IP address (IPv6 bracketed or not, with an
            optional zone: ``"fe80::1%eth0"``) or a DNS host name, e.g. ``"127.0.0.1"``;
            anything else (``"127.0.0.1:50051"``, ``"unix:/tmp/orderd.sock"``, a
            trailing space, an unbalanced ``"[::1"``) is refused, as ``ServeOptions.host``.
        port: TCP port, 1 to 65535.
        tags: free-form tags (Consul ``Tags``), e.g. ``("v2",)`` or ``["v2"]``; any
            collection of strings, not one string (``"v2"`` would be the tags ``v`` and
            ``2``); stored as a tuple, in the order given.
        meta: string key/values (Consul ``Meta``), e.g. ``{"version": "v2", "zone": "a"}``.
        weight: relative weight for weighted balancers (Consul ``Weights.Passing``), 1 to
            ``2**63 - 1`` (a signed 64-bit integer: what SQLite, Consul and etcd store).

    Every string (``instance_id``, ``host``, each tag, each ``meta`` key and value) must
    be encodable as UTF-8: a lone surrogate (``"orderd-\\ud83d"``, what JavaScript's
    ``JSON.stringify`` writes for an id cut in the middle of an emoji, read back from a
    registry's JSON) is refused, so a registry skips such a record as it skips any other
    malformed one, rather than handing clients a name no UTF-8 protocol (gRPC metadata,
    the Prometheus exposition, JSON logs) can carry.

    Raises:
        ConfigError: a field is out of range or of the wrong type (``True`` for
            ``port``, one string for ``tags``), ``host`` is no address nor host name, or
            a string is not encodable as UTF-8;
            the message quotes the bad value (escaped: ``repr``).

    Equality and hashing use every field but ``meta`` takes part in equality only.
    """

    service: str
    instance_id: str
    host: str
    port: int
    tags: Normalised[Collection[str], tuple[str, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    weight: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.service, str) or not _NAME_RE.fullmatch(self.service):
            raise ConfigError(f"service name must match {_NAME_RE.pattern}, got {self.service!r}")
        if not isinstance(self.instance_id, str) or not 1 <= len(self.instance_id) <= 128:
            raise ConfigError(f"instance_id must be 1..128 characters, got {self.instance_id!r}")
        _check_utf8("instance_id", self.instance_id)
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty string, got {self.host!r}")
        _check_utf8("host", self.host)
        if self.host not in _HOSTS_OK:  # an Instance is built per record read: checked once
            check_host("host", self.host)
            if len(_HOSTS_OK) >= _HOSTS_OK_MAX:
                _HOSTS_OK.clear()
            _HOSTS_OK.add(self.host)
        check_int("port", self.port, high=65535)
        check_int("weight", self.weight, high=_WEIGHT_MAX)
        tags = check_strings("tags", self.tags)
        for tag in tags:
            _check_utf8("tags", tag)
        object.__setattr__(self, "tags", tags)
        meta = check_string_map("meta", self.meta)
        for key, value in meta.items():
            _check_utf8("meta keys", key)
            _check_utf8(f"meta[{key!r}]", value)
        object.__setattr__(self, "meta", meta)

    @property
    def address(self) -> str:
        """``host:port`` as a gRPC target: IPv6 hosts bracketed, a zone's ``%`` written
        ``%25`` (RFC 6874: ``host="fe80::1%eth0"`` -> ``"[fe80::1%25eth0]:50051"``; grpc
        percent-decodes target text, as grpc-go does, so ``[::1%11]`` would name the zone
        byte 0x11)."""
        return f"{uri_host(self.host)}:{self.port}"


def _check_utf8(name: str, value: str) -> None:
    """Check that ``value`` (the field ``name``) is encodable as UTF-8 (no lone surrogate).

    Raises:
        ConfigError: it is not; ``name`` and the value (``repr``, so escaped) quoted.
    """
    if not value.isascii():  # ASCII, by far the most common: encodable, nothing to do
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{name} must be encodable as UTF-8 (it holds a lone "
                              f"surrogate), got {value!r}") from None


class ServiceSnapshot(NamedTuple):
    """One read of a service: what ``snapshot(service)`` of a registry that has one
    (:class:`~meshkit.discovery.LocalRegistry`, :class:`~meshkit.discovery.ConsulRegistry`,
    :class:`~meshkit.discovery.EtcdRegistry`) gives, so that a one-shot reader (``meshkit
    services``, each pass of ``meshkit prometheus-targets``) reads a service once.

    Args:
        live: the instances a new watch of the service would yield first (its first set).
        failing: those ``failing(service)`` would give (registered, their owner died or
            hangs, not deregistered), read at the same time.
    """

    live: frozenset[Instance]
    failing: frozenset[Instance]


class Derived(float):
    """A default an options class works out from another of its fields (``ttl_s / 3``...)
    for a field left ``None``, as that field holds it: a ``float`` for every reader
    (arithmetic, which gives plain floats, comparisons, ``==`` and ``hash`` with the same
    number, ``repr``, ``str``, JSON), told apart by its type only.

    ``dataclasses.replace(options, ttl_s=60)`` builds the new options from every field's
    value, so a default stored as a plain float would pass for a value the user gave: it
    kept the old ``ttl_s``'s value, or failed a check against the new one naming a field
    the user never wrote. ``__post_init__`` works a :class:`Derived` (or ``None``) out
    again (:func:`is_default`), a plain number it keeps. Pickles, copies and
    ``dataclasses.asdict`` keep the type; a number read from a default and given to a new
    options object is the default there too.

    Args:
        value: the number (seconds, for the options that use it).
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[Derived], tuple[float]]:
        """Pickle and copy rebuild it from its number."""
        return (Derived, (float(self),))


def is_default(value: object) -> bool:
    """Whether an options field holds no value of the user's: ``None`` (left out) or a
    :class:`Derived` default, to work out (again) from the other fields."""
    return value is None or isinstance(value, Derived)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryStatus:
    """What a registry knows about its own health: a snapshot from :meth:`Registry.status`.

    Built from what the registry's own operations saw (no I/O to take it). "Read" means
    discovery (a watch poll or query); "write" means registering, renewing (heartbeat or
    TTL pass), deregistering, or the local registry's write probe.

    Args:
        kind: which registry, ``"local"``, ``"consul"`` or ``"etcd"``.
        readable: outcome of the latest read: True (it worked), False (it failed), None
            (nothing read yet).
        writable: outcome of the latest write, same three values. While it is False (and
            for a grace period after), a local registry's watches keep the endpoints of
            their last set that the registry no longer lists (their owners could not renew
            them), unless they were deregistered.
        read_errors: failed reads since the registry was built (a counter, never reset).
        write_errors: failed writes since the registry was built (a counter).
        reopened: times the backing store had to be re-established and this process's
            instances registered again: the local registry file was deleted or replaced,
            or the Consul agent had forgotten an instance, or the etcd lease was lost, or
            an etcd key was deleted or overwritten while its lease lived (one per key put
            back; a counter).
        last_error: text of the most recent read or write error, None if there never was
            one. It may name the registry file or the agent's address: for logs and the debug
            page, never for a gRPC caller (use :attr:`summary`).
        failing_since_s: wall-clock time (Unix seconds) at which the current outage began,
            the earlier of the read and write outages; None while neither is failing.
        kept_endpoints: endpoints the registry's watches keep although the registry does
            not list them as live now, because of a fault (the local registry after a write
            outage or a replaced file, until its grace period ends); 0 when its view
            applies as it is. Summed over the watches.
    """

    kind: str
    readable: bool | None = None
    writable: bool | None = None
    read_errors: int = 0
    write_errors: int = 0
    reopened: int = 0
    last_error: str | None = None
    failing_since_s: float | None = None
    kept_endpoints: int = 0

    @property
    def ok(self) -> bool:
        """False while the latest read or the latest write failed."""
        return self.readable is not False and self.writable is not False

    @property
    def summary(self) -> str | None:
        """A fixed phrase safe to show a gRPC caller (no path, address or error text).

        ``"the service registry cannot be read"`` while reads fail (the endpoint set is
        unknown or stale), ``"the service registry cannot be written"`` while only writes
        fail (endpoints are kept but may be stale), else None.
        """
        if self.readable is False:
            return "the service registry cannot be read"
        if self.writable is False:
            return "the service registry cannot be written"
        return None


Outage = Literal["started", "reminder"]


class StatusTracker:
    """The bookkeeping behind :class:`RegistryStatus`, shared by the registries. No I/O.

    Each read or write outcome is reported once (``read_ok``/``read_failed``,
    ``write_ok``/``write_failed``); the ``*_failed`` methods say whether the caller should
    log: ``"started"`` for the first failure of an outage, ``"reminder"`` at most every
    ``remind_every_s`` while it lasts, None otherwise; the ``*_ok`` methods return the
    outage's duration in seconds when they end one (the caller logs a recovery line),
    else None. Not thread-safe: callers serialise updates (reads of :meth:`status` from
    other threads see a consistent-enough snapshot).

    Args:
        kind: :attr:`RegistryStatus.kind`.
        clock: wall clock for :attr:`RegistryStatus.failing_since_s`, Unix seconds
            (default ``time.time``).
        monotonic: clock for durations and reminders, seconds (default ``time.monotonic``).
        remind_every_s: least time between two reminders of one outage, seconds (60).
    """

    __slots__ = ("_clock", "_monotonic", "_remind_every_s", "kind", "last_error",
                 "read", "reopened", "write")

    def __init__(self, kind: str, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 remind_every_s: float = 60.0) -> None:
        self.kind = kind
        self._clock = clock
        self._monotonic = monotonic
        self._remind_every_s = remind_every_s
        self.read = _Side()
        self.write = _Side()
        self.reopened = 0
        self.last_error: str | None = None

    def read_ok(self) -> float | None:
        """Record a successful read; the outage's length in seconds if this ended one."""
        return self._ok(self.read)

    def write_ok(self) -> float | None:
        """Record a successful write; the outage's length in seconds if this ended one."""
        return self._ok(self.write)

    def read_failed(self, error: str) -> Outage | None:
        """Record a failed read (``error`` for :attr:`RegistryStatus.last_error`)."""
        return self._failed(self.read, error)

    def write_failed(self, error: str) -> Outage | None:
        """Record a failed write (``error`` for :attr:`RegistryStatus.last_error`)."""
        return self._failed(self.write, error)

    def recent_write(self, max_age_s: float) -> bool | None:
        """The latest write outcome if it is at most ``max_age_s`` seconds old, else None."""
        side = self.write
        if side.checked_at is None or self._monotonic() - side.checked_at > max_age_s:
            return None
        return side.ok

    def writes_recovered_within(self, age_s: float) -> bool:
        """True if a write outage ended at most ``age_s`` seconds ago."""
        at = self.write.recovered_at
        return at is not None and self._monotonic() - at <= age_s

    def failing_for_s(self, write: bool) -> float:
        """Seconds since the current read (or write) outage began; 0.0 if none."""
        side = self.write if write else self.read
        return 0.0 if side.since_mono is None else self._monotonic() - side.since_mono

    def _ok(self, side: _Side) -> float | None:
        side.ok = True
        side.checked_at = self._monotonic()
        if side.since_mono is None:
            return None
        duration = side.checked_at - side.since_mono
        side.since_mono = side.since_wall = None
        side.recovered_at = side.checked_at
        return duration

    def _failed(self, side: _Side, error: str) -> Outage | None:
        now = self._monotonic()
        side.ok = False
        side.checked_at = now
        side.errors += 1
        self.last_error = error
        if side.since_mono is None:
            side.since_mono = side.reminded_at = now
            side.since_wall = self._clock()
            return "started"
        if now - side.reminded_at >= self._remind_every_s:
            side.reminded_at = now
            return "reminder"
        return None

    def status(self) -> RegistryStatus:
        """The current :class:`RegistryStatus` (cheap: no I/O)."""
        since = [s for s in (self.read.since_wall, self.write.since_wall) if s is not None]
        return RegistryStatus(
            kind=self.kind, readable=self.read.ok, writable=self.write.ok,
            read_errors=self.read.errors, write_errors=self.write.errors,
            reopened=self.reopened, last_error=self.last_error,
            failing_since_s=min(since) if since else None,
        )


class ServiceReads:
    """Each watched service's read record of a registry (a :class:`StatusTracker` per
    service) and how many watches of it run, for ``status(service)``: one service's
    failing reads (an etcd prefix its user may not read, a Consul path answering 500) are
    that service's fault, not every service's.

    Thread-safe: watches of several threads' event loops count at once. A service's
    record is made at its first outcome while a watch of it runs (:meth:`record`) and
    dropped with its last watch (:meth:`watch_ended`), so the records are bounded by the
    services watched. ``kind``: the registry's, e.g. ``"etcd"``."""

    __slots__ = ("_mutex", "_reads", "_watchers", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._reads: dict[str, StatusTracker] = {}
        self._watchers: dict[str, int] = {}
        self._mutex = threading.Lock()

    def watch_started(self, service: str) -> None:
        """A watch of ``service`` began (its outcomes are recorded from now on)."""
        with self._mutex:
            self._watchers[service] = self._watchers.get(service, 0) + 1

    def record(self, service: str) -> StatusTracker | None:
        """The read record of watched ``service``, made at its first outcome; None once
        its last watch ended (an outcome then is the registry's only)."""
        with self._mutex:
            reads = self._reads.get(service)
            if reads is None and self._watchers.get(service):
                reads = self._reads[service] = StatusTracker(self.kind)
            return reads

    def get(self, service: str) -> StatusTracker | None:
        """The read record of ``service`` if it has one (none made)."""
        return self._reads.get(service)

    def failing(self) -> list[str]:
        """The watched services whose latest read failed, sorted (for a log line)."""
        with self._mutex:
            return sorted(s for s, t in self._reads.items() if t.read.ok is False)

    def all_failing(self) -> bool:
        """Whether every watched service's latest read failed (the registry's reads fail
        then, and only then)."""
        return all(t.read.ok is False for t in list(self._reads.values()))

    def watch_ended(self, service: str, registry: StatusTracker) -> bool:
        """A watch of ``service`` ended: the last one takes its record along. True when
        the registry, failing, reads again because of it (its failing service gone, the
        other watched services read): the caller records the registry's read as ok."""
        with self._mutex:
            left = self._watchers.get(service, 0) - 1
            if left > 0:
                self._watchers[service] = left
                return False
            self._watchers.pop(service, None)
            gone = self._reads.pop(service, None)
            others = list(self._reads.values())
        return (gone is not None and bool(others) and registry.read.ok is False
                and not all(t.read.ok is False for t in others))

    def status(self, service: str, registry: StatusTracker,
               status: RegistryStatus) -> RegistryStatus:
        """``status`` (the registry's :class:`RegistryStatus`) as ``service``'s watches
        read: ``readable`` None while none runs or none answered yet, else its reads';
        ``failing_since_s`` its reads' outage or the registry's writes'; ``last_error``
        its own while it fails."""
        reads = self._reads.get(service)
        if reads is None:
            return replace(status, readable=None)
        own = reads.status()
        since = [t for t in (own.failing_since_s, registry.write.since_wall)
                 if t is not None]
        return replace(
            status, readable=own.readable, failing_since_s=min(since) if since else None,
            last_error=own.last_error if own.readable is False else status.last_error)

    def __len__(self) -> int:
        """How many services have a read record or a running watch."""
        with self._mutex:
            return len(self._reads.keys() | self._watchers.keys())


class _Side:
    """State of one kind of operation (reads or writes) in a :class:`StatusTracker`."""

    __slots__ = ("checked_at", "errors", "ok", "recovered_at", "reminded_at", "since_mono",
                 "since_wall")

    def __init__(self) -> None:
        self.ok: bool | None = None
        self.errors = 0
        self.checked_at: float | None = None  # monotonic time of the latest outcome
        self.since_mono: float | None = None  # start of the current outage, monotonic
        self.since_wall: float | None = None  # the same, wall clock
        self.reminded_at = 0.0
        self.recovered_at: float | None = None  # monotonic time the latest outage ended


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves and where clients find them.

    Implementations: :class:`meshkit.discovery.LocalRegistry` (embedded, one machine),
    :class:`meshkit.discovery.ConsulRegistry` (Consul agent HTTP API) and
    :class:`meshkit.discovery.EtcdRegistry` (etcd v3). Pick one by URI with
    :func:`meshkit.discovery.registry_from_uri`.

    A registry whose backend checks each instance's gRPC health itself (Consul with a
    gRPC check) may have a ``checks_instance_health`` attribute that is ``True``: a
    server then leaves taking a ``NOT_SERVING`` instance out to it instead of
    deregistering it (``ServeOptions.follow_health``). Not part of the protocol: a
    registry without it is followed by the server.
    """

    async def register(self, instance: Instance) -> None:
        """Announce ``instance`` and keep it alive (heartbeat/TTL) until deregistered or closed.

        Raises:
            RegistryError: the backing store or agent refused or could not be reached.
        """
        ...

    async def deregister(self, instance: Instance) -> None:
        """Withdraw ``instance`` at once and stop its heartbeat. Unknown instances are ignored.

        Raises:
            RegistryError: the backing store or agent could not be reached.
        """
        ...

    def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        """Stream the live endpoint set of ``service``.

        Yields the current set first (possibly empty), then a new set each time it changes.
        A watch survives backend outages: it keeps the last known set (yielding nothing) and
        resumes when the backend is back. It never yields because of an error: if the
        backend cannot be read from the start, the first set comes only with the first
        successful read, and :meth:`status` says why (``readable=False``). The iterator ends
        only when closed or cancelled.
        """
        ...

    def status(self) -> RegistryStatus:
        """A snapshot of the registry's health (see :class:`RegistryStatus`).

        Cheap and free of I/O: it reports what the registry's own reads and writes saw, so
        metrics and the balanced channel may call it as often as they like.

        The built-in registries also take an optional ``service`` (``status("orderd")``:
        how that service's watches read, ``readable`` None while none runs), and their
        ``status()`` is unreadable only while every watched service's reads fail. This
        protocol does not require it: a caller asking with a service asks ``status()``
        of a registry that takes none (its ``TypeError``).
        """
        ...

    async def close(self) -> None:
        """Stop heartbeats and watches and release resources. Does not deregister."""
        ...
