"""The etcd registry: a :class:`~meshkit.discovery.Registry` on etcd v3.

**Client.** etcd's v3 JSON gateway (grpc-gateway) on each member's client port, spoken with
aiohttp, already a meshkit dependency. Its path prefix depends on the version (etcd's gRPC
gateway guide, etcd.io/docs/v3.3/dev-guide/api_grpc_gateway/: "etcd v3.3 uses
[CLIENT-URL]/v3beta/* while keeping [CLIENT-URL]/v3alpha/*. etcd v3.4 uses
[CLIENT-URL]/v3/* while keeping [CLIENT-URL]/v3beta/*"; 3.5 drops ``/v3beta``): a registry
speaks ``/v3`` until a member answers a plain 404 (not a gateway error, which carries a
gRPC code), then retries that call under ``/v3beta`` at once and keeps the prefix that
answered (logged), so etcd >= 3.3 works. Under ``/v3beta`` the revoke is etcd 3.3's
``/v3beta/kv/lease/revoke``. Compared in 2026 with the asyncio clients on PyPI:

* ``aetcd`` 1.0 (maintained, protobuf < 8, grpcio > 1.66: installs beside our pins) opens an
  *insecure* channel to one ``host:port`` only: no TLS, no client certificates, no list of
  members to fail over to, which ``etcd+https://`` and a cluster need.
* ``etcd-client-py`` 0.5 (Rust ``etcd-client`` through PyO3; maintained) has no documented
  lease keep-alive, watch start revision or client-certificate options, and its API is shaped
  for one application (communicator objects).
* ``etcd3`` (python-etcd3) is unmaintained since 2020 and breaks with protobuf >= 4;
  ``aioetcd3``/``aio-etcd`` are abandoned (2018-2020).

The gateway needs no generated stubs (so nothing ties us to a protobuf gencode version),
client certificates are an ``ssl.SSLContext``, and failing over between members is ours to
do (the etcd Go client's behaviour: any member serves any request; on a connection error or
``UNAVAILABLE`` the next one is tried). The calls, as etcd's API reference
(etcd.io/docs/v3.4/learning/api/ and .../dev-guide/api_grpc_gateway/) defines them:

========================  ==========================================================
``POST /v3/lease/grant``  a lease of ``ttl_s`` seconds for this registry's instances, and
                          one of ``last_seen_ttl_s`` for their last-seen records
``/v3/lease/keepalive``   renews it every ``keepalive_interval_s`` (``TTL`` 0: lost); the
                          last-seen lease every ``last_seen_ttl_s / 10``
``/v3/lease/revoke``      when the last instance is deregistered (both leases)
``/v3/kv/put``            ``<prefix><service>/<instance_id>`` = JSON, under the lease;
                          ``<prefix minus '/'>@last-seen/<service>/<instance_id>`` (e.g.
                          ``/meshkit/services@last-seen/orderd/orderd-1``), the same JSON,
                          under the last-seen lease
``/v3/kv/deleterange``    deregistration (the last-seen record, the id's record in the
                          earlier layout, then the key)
``/v3/kv/range``          a watch's full read (prefix range), at start and after a
                          broken stream, a compaction or a replaced store; keys only
                          before a quiet stream is resumed
``/v3/kv/txn``            ``services()``: the keys of the prefix and of the records'
                          prefix (keys only); ``failing()``: the last-seen records (both
                          places) and the keys of a service, ranges read at one revision;
                          the owned-key check, every ``ttl_s``: each owned key's
                          ``mod_revision`` compared, the keys read only when one differs
``/v3/watch``             a streaming prefix watch from ``revision + 1``
========================  ==========================================================

With ``user`` and ``password`` (etcd's authentication on), ``/v3/auth/authenticate`` gives
the token every request carries (``Authorization``); it is got again when etcd answers
``invalid auth token`` (a token idle past ``--auth-token-ttl``, default 300 s), one
authenticate for all the requests of an event loop to a member. While etcd's
authentication is not enabled, requests go without a token (logged), as etcdctl's do.

Rules (each one tested against a real etcd in ``tests/discovery/test_etcd*.py``):

* **Lease.** One lease per registry (like etcd's ``concurrency.Session``): every instance
  this process registers is a key under it; the keep-alive renews all of them (a child
  forked from the process has a lease of its own, never renews its parent's: see
  :meth:`EtcdRegistry._forget_parent`). A process that dies stops renewing and its keys
  go when the lease expires (``ttl_s``, plus up to 0.5 s of etcd's expiry check).
  **Lease loss** (the keep-alive answers ``TTL`` 0: the lease expired while this process
  could not reach etcd, or was revoked, or the store was replaced) grants a new lease and
  puts every instance again (``status().reopened`` + 1).
* **Last seen (failing instances).** Each instance also has a last-seen record,
  ``<prefix minus its '/'>@last-seen/<service>/<instance_id>``: a sibling of ``prefix``,
  outside its range (``@`` sorts after ``0``, the end byte of ``[prefix, prefix_end)``;
  ``prefix`` always ends with ``/``), so no reader of the prefix meets a record: not a
  watch, and not a meshkit from before the records, whose ``services()`` takes the first
  path segment of every key under ``prefix`` for a service. (Earlier builds kept the
  records at ``<prefix>@last-seen/``: an older reader then listed a service
  ``@last-seen``, each instance twice in ``meshkit services`` and a dead one a passing
  target of ``meshkit prometheus-targets`` for ``last_seen_ttl_s``.) An etcd role must
  grant both ranges: the prefix without its ``/`` (``/meshkit/services``) covers them;
  a record etcd refuses is logged and tried again by each keep-alive, the registration
  unharmed. The records are under a second lease of ``last_seen_ttl_s`` (default
  ``max(10 * ttl_s, 300)``) that the same keep-alive renews. ``deregister`` deletes the
  record before the key; a process that dies leaves it, so for ``last_seen_ttl_s`` after
  its last renewal the instance has a record and no key: ``failing()`` lists it and
  ``services()`` its service, the local registry's semantics (an expired heartbeat not
  collected yet), which ``meshkit services`` and ``meshkit prometheus-targets`` (``up ==
  0``, ``MeshkitInstanceDown``) rely on. The record is written after the key at
  ``register`` and never fails it: a record etcd does not take yet is written by the
  keep-alive (logged). ``last_seen_ttl_s=0`` writes none.
  **Transition.** A process of such a build keeps writing its records at
  ``<prefix>@last-seen/`` while it runs, and leaves one there for up to
  ``last_seen_ttl_s`` when it dies; ``failing()`` and ``services()`` read that place too
  (one more range in ``failing()``'s txn; ``services()`` reads it with the prefix), so a
  rolling upgrade from it keeps reporting its dead instances failing (the alert
  ``MeshkitInstanceDown`` needs 1 min of it) instead of dropping them as their lease
  expires; ``services()`` maps such a record to its service, never to ``@last-seen``.
  ``deregister`` deletes a record of the id at that place too (one more delete), so an
  id drained by a new process is never listed failing from an old record. Such a build's
  readers do not read the new place (they see a dead new instance leave with its lease).
* **Ownership.** An instance is this registry's, by its ``(service, instance_id)`` (its
  key), from a successful put until ``deregister`` deletes its key (see "Lost keys" for
  another's delete): a failed ``deregister`` raises and leaves it registered (kept alive,
  put again after a lease loss, retriable). One id registered for two services (a pod
  serving both under ``instance_id=$POD_NAME`` through one registry) is two instances,
  two keys under the one lease, each deregistered on its own; ``register`` of the same
  service and id again replaces it with one put over its key, so a failed put leaves the
  previous registration as it was. A put left unanswered of an instance not registered
  (etcd may have applied it) is deleted by the keep-alive, tried each round until etcd
  takes the delete, so a failure never leaves the instance unlisted or a key nothing
  deletes (tested against an in-memory gateway whose calls fail on demand).
* **Lost keys.** A key deleted while its lease lives (``etcdctl del``, a restore, another
  tool) would leave a healthy instance unlisted for as long as its process lives, the
  lease being renewed all along. Every ``ttl_s`` the keep-alive checks the keys this
  registry owns: one ``/v3/kv/txn`` comparing each key's and last-seen record's
  ``mod_revision`` with that of this registry's latest put of it (64 keys a txn, under
  etcd's default ``--max-txn-ops`` of 128), reading them (its failure branch, same
  request) only when one differs. A key that is not this registry's value under its
  lease, deleted or **overwritten** by another writer (another value, or no lease, which
  would outlive the owner), is put back (logged, ``status().reopened`` + 1 each): the
  process that registered an id is its authority, as a Consul agent's anti-entropy is
  over the catalog, so two processes registering one id each put theirs back once a
  ``ttl_s`` (logged: a configuration error to fix). A lost last-seen record is written
  again after the keys. **Bound:** a key lost while etcd answers is put back within
  ``ttl_s + keepalive_interval_s`` (13.3 s at the defaults), plus the round's own
  requests; a dead owner's key is gone within ``ttl_s`` too, so watchers already live
  with a view that old. **Cost:** one request per ``ttl_s`` per registry with
  instances, whatever their number up to 32 (a third of the keep-alive's requests at
  the default ``keepalive_interval_s``), compares only while nothing is lost, and no
  per-call work. A watch of the registry's own keys would notice at once, but holds a
  stream per range (one per service: one over the whole prefix would carry every other
  process's changes to each process) with its own failover and compaction handling, for
  a fault that takes an operator's hand. Only instances owned now are checked, under
  the lock ``deregister`` takes: a deregistered instance is never put back.
* **Watch resume.** A watch reads the prefix once, then streams events from the next
  revision. When the stream breaks (member killed, network) it reconnects, to the next
  member if the one it used fails, reads the prefix again (one range, as Kubernetes'
  reflectors list again) and streams from that read's revision, so no change is lost and
  a replaced store is told (see "Last known good"). If etcd compacted past the revision a
  stream resumes from (the watch is cancelled with ``compact_revision``) it reads the
  prefix again and resumes from there. Streams ask for ``hasleader``, so a member that
  loses its leader ends them. A stream quiet for ``ttl_s`` is ended and resumed from its
  revision on a new watch request, after a keys-only read of the prefix (keys and their
  ``mod_revision``, no values) finds the keys the watch knew: a stream whose connection
  died without a sign (a dropped NAT or conntrack entry, a load balancer's idle timeout)
  is left, and one whose member went silent (a partition, a frozen process or VM) too,
  the requests failing over to the next member after ``request_timeout_s``, instead of
  waiting on it for good (etcd's own client uses gRPC keepalive on the stream's
  connection for this; a request over another connection, as a probe of the member,
  would not tell a dead connection). The keys tell a store replaced while such a
  stream was dead (see "Last known good"; its ``created`` answer alone would not when
  the new store's revision passed the watch's) and a key deleted meanwhile: then the
  prefix is read in full, as after a broken stream. **Cost:** one keys-only range and
  one watch request per ``ttl_s`` of quiet per watch; none while events flow.
* **Last known good.** While etcd cannot be read, a watch keeps its last set (yields
  nothing), never an empty set because of an error; ``status(service)`` says
  ``readable=False`` (``status()`` too once every watched service's reads fail: a prefix
  etcd's authentication refuses this user is that service's fault alone) and the
  outage is logged once (a reminder every 60 s, a line when it ends): once for all while
  every watched service's reads fail (etcd down; the line names them, ``services``, the
  first 20, and ``service_count``), else once per failing service, at its second failed
  read in a row (etcd going down fails the watches one after the other). If after an
  outage etcd comes back with a *replaced store* (another cluster id, a revision lower
  than one already seen, or a key whose ``mod_revision`` is at most the watch's revision
  but not the one the watch knew: a restored or wiped data directory, also one restarted
  with the same flags, so the same cluster id, whose revision passed the watch's), the
  instances of the last set that it does not list are kept for ``fault_grace_s`` (default
  ``ttl_s``), merged with what it lists, as their owners need up to one keep-alive
  interval to find their lease gone and register again; an explicit deletion seen
  meanwhile drops one at once. (A wiped store of the same cluster id none of whose keys
  under the watch's prefix is that old is not told: its view applies at once.)
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from meshkit._config import (
    check_bool,
    check_number,
    check_path,
    check_rng,
    check_secret_holder,
    check_strings,
    shown_path,
)
from meshkit._fork import reset_in_forked_child
from meshkit._uris import hide_userinfo
from meshkit.discovery._options import (
    at_sign_may_be_userinfo,
    check_seconds,
    env_fields,
    env_value,
    options_with,
    parse_bool,
    parse_go_duration,
    query_fields,
    shown_uri,
    split_address,
    split_uri,
)
from meshkit.discovery._resolver import (
    LookupThreads,
    OwnThreadsResolver,
    abandon_session,
    cancelled_by_close,
    close_per_loop,
    close_per_loop_nowait,
    drop_inherited_sockets,
)
from meshkit.discovery._shared import (
    CLOSED,
    SLICE_S,
    CloseRace,
    decoded_in_slices,
    describe,
    due_to_log,
    foreign_task,
    full_jitter,
    hold_until_cancelled,
    kept_count,
    same_in_slices,
)
from meshkit.discovery._types import (
    Derived,
    Instance,
    Outage,
    RegistryStatus,
    ServiceReads,
    ServiceSnapshot,
    StatusTracker,
    is_default,
)
from meshkit.errors import ConfigError, RegistryError

__all__ = ["EtcdOptions", "EtcdRegistry"]

_log = structlog.get_logger("meshkit.discovery.etcd")

DEFAULT_PORT = 2379
#: The longest lease etcd grants, seconds (its ``MaxLeaseTTL``): a grant asking more is
#: refused with ``etcdserver: too large lease TTL`` (etcd 3.3 upgrade notes: "when the
#: requested TTL is larger than 9,000,000,000 seconds").
_MAX_LEASE_TTL_S = 9_000_000_000
#: etcdctl's default ``--endpoints``, without a scheme: https when TLS is asked for
_ETCDCTL_DEFAULT_ENDPOINT = "127.0.0.1:2379"
#: etcdctl's timeout variables (Go durations) and the fields they set
_ENV_TIMEOUTS = {"ETCDCTL_DIAL_TIMEOUT": "connect_timeout_s",
                 "ETCDCTL_COMMAND_TIMEOUT": "operation_timeout_s"}
_FLOAT_FIELDS = ("ttl_s", "keepalive_interval_s", "request_timeout_s", "operation_timeout_s",
                 "connect_timeout_s",
                 "backoff_base_s", "backoff_max_s", "fault_grace_s", "last_seen_ttl_s")
#: The last-seen records' key segment: they live under ``<prefix minus its '/'>@last-seen/``
#: (:func:`_seen_prefix`), outside the prefix's range. Records of the earlier layout, under
#: ``<prefix>@last-seen/``, are still read (see "Last seen" in the module docstring); ``@``
#: is never in a service name (``Instance.service`` is a DNS label), so no watch meets them.
_SEEN = "@last-seen/"
#: The last-seen lease is renewed every ``last_seen_ttl_s / _SEEN_RENEWALS`` seconds (at the
#: keep-alive's pace when that is slower): 30 s for the default 300 s.
_SEEN_RENEWALS = 10
#: Keys compared by one ``/kv/txn`` of the owned-key check (its compares, and the ranges of
#: its failure branch, each at most this many): etcd refuses a txn of more operations than
#: its ``--max-txn-ops`` (default 128).
_CHECK_CHUNK = 64
_STR_FIELDS = ("prefix", "ca_file", "cert_file", "key_file")
_BOOL_FIELDS = ("verify",)
#: The URI's option names: an error quotes the value of any other key masked (a password
#: under another name must not reach a log; see :func:`shown_uri`).
_URI_FIELDS = frozenset(_FLOAT_FIELDS + _STR_FIELDS + _BOOL_FIELDS)
#: The URI's options whose value may hold an unencoded '@' (a file path): anywhere else
#: after '//' one is taken for user info (see :func:`at_sign_may_be_userinfo`).
_AT_FIELDS = frozenset({"ca_file", "cert_file", "key_file"})
#: gRPC codes (as the gateway reports them) after which another member may answer:
#: UNAVAILABLE ("no leader", "leader changed", "request timed out"), DEADLINE_EXCEEDED.
_TRY_ELSEWHERE = frozenset({4, 14})
_NOT_FOUND = 5  # gRPC NOT_FOUND: "etcdserver: requested lease not found"
#: The gateway's path prefixes: etcd 3.4 and later serve ``/v3`` (3.4 also ``/v3beta``),
#: etcd 3.3 only ``/v3beta`` (and ``/v3alpha``): etcd.io/docs/v3.3/dev-guide/api_grpc_gateway/.
_V3, _V3BETA = "/v3", "/v3beta"
#: Calls whose path differs under ``/v3beta`` (etcd 3.3's rpc.proto binds LeaseRevoke to
#: ``/v3beta/kv/lease/revoke``; 3.4 to ``/v3/lease/revoke`` and ``/v3/kv/lease/revoke``).
_V3BETA_PATHS = {"/lease/revoke": "/kv/lease/revoke"}
#: The least ``keepalive_interval_s`` and ``backoff_max_s``, seconds (the local
#: registry's floor): below it the keep-alive or a retry runs without pause (a typo, a unit
#: slip: milliseconds), a core and the members kept busy.
_MIN_INTERVAL_S = 0.01
#: Seconds between two warnings about the same unusable value (every read meets it again).
_UNUSABLE_LOG_EVERY_S = 60.0
#: How often a task waiting for the registry's lock checks whether its holder's event loop
#: was closed while holding it (seconds); see :class:`_LeaseLock`.
_DEAD_HOLDER_CHECK_S = 1.0


_REDACTED = "[REDACTED]"


def _redacted(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every one of ``secrets`` (the password, auth tokens; None and empty
    ones skipped) replaced by ``[REDACTED]``, also in their JSON-escaped forms (a body
    echoing a request holds them so): an answer of etcd or of a proxy in front of it
    that quotes the request it refused (``/auth/authenticate``'s body, the
    ``Authorization`` header) must not bring them into an error, a log or ``status()``.
    Done before any cut: a secret cut in two is no longer found whole."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= {secret, json.dumps(secret)[1:-1],
                      json.dumps(secret, ensure_ascii=False)[1:-1]}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, _REDACTED)
    return text


class _EtcdError(Exception):
    """An error answer of the gateway: HTTP status, gRPC code and etcd's message."""

    @classmethod
    def of(cls, endpoint: str, status: int, text: str,
           secrets: Iterable[str | None] = ()) -> _EtcdError:
        """The error of a non-200 answer whose body is ``text``: the gateway's JSON error
        (``code``, ``message``/``error``) if it is one, else the text itself (code -1), so
        that e.g. a plain-text 404 reads ``HTTP 404, gRPC code -1: 404 page not found``;
        ``secrets`` redacted (:func:`_redacted`) before the message is cut to 300
        characters."""
        secrets = tuple(secrets)
        text = _redacted(text, secrets)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(endpoint, status, -1, text.strip()[:300])
        try:
            code = int(data.get("code", -1))
        except (TypeError, ValueError):
            code = -1
        # again once decoded: escapes other than json.dumps's (\u0041 for 'A') undone
        return cls(endpoint, status, code, _redacted(
            str(data.get("message") or data.get("error") or data), secrets)[:300])

    @property
    def no_route(self) -> bool:
        """HTTP 404 that is not a gateway error (those carry a gRPC code, e.g. NOT_FOUND
        for an unknown lease): the member does not serve this path prefix."""
        return self.status == 404 and self.code == -1

    def __init__(self, endpoint: str, status: int, code: int, message: str) -> None:
        super().__init__(f"{endpoint}: HTTP {status}, gRPC code {code}: {message}")
        self.endpoint = endpoint
        self.message = message
        self.code = code
        self.status = status
        self.retry_elsewhere = code in _TRY_ELSEWHERE or status in (502, 503, 504)


#: Errors that come from talking to etcd. Public methods raise ``RegistryError(...) from
#: exc``; watches and the keep-alive log them and retry.
_FOREIGN: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, _EtcdError,
)


def _parse_endpoint(text: str, default_scheme: str) -> str:
    """``host[:port]`` or ``scheme://host[:port]`` as ``scheme://host:port``.

    Raises:
        ConfigError: not such an address (quoted without user info); one with user info
            (``http://root:<password>@host:2379``) is told where they go instead.
    """
    try:
        scheme, host, port = split_address(text, "etcd endpoint")
    except ConfigError as exc:
        if "user info" not in str(exc):
            raise
        raise ConfigError(f"{exc}; etcd's user name and password are given as "
                          f"EtcdOptions(user=..., password=...)") from None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme or default_scheme}://{host}:{port or DEFAULT_PORT}"


def _env_credentials(env: Mapping[str, str]) -> dict[str, Any]:
    """``user`` and ``password`` from etcdctl's ``ETCDCTL_USER``/``ETCDCTL_PASSWORD``, as
    etcdctl reads ``--user``/``--password`` (``authCfgFromCmd``): with a password the user
    is taken whole, else ``name:password`` is split at the first ``:``. Taken as they are
    (a password may begin or end with a space); empty counts as unset.

    Raises:
        ConfigError: a user without a password (etcdctl asks for it on the terminal),
            or a password without a user (etcdctl drops it): the variables named, their
            values never quoted.
    """
    user, password = env.get("ETCDCTL_USER") or None, env.get("ETCDCTL_PASSWORD") or None
    if user is None:
        if password is not None:
            raise ConfigError("ETCDCTL_PASSWORD is set without ETCDCTL_USER (etcdctl would "
                              "not authenticate, and every request fail with etcd's "
                              "'user name is empty'); set ETCDCTL_USER too, or unset it")
        return {}
    if password is None:
        name, colon, password = user.partition(":")
        if not colon:  # not quoted: a user name only, but the same variable as passwords
            raise ConfigError("ETCDCTL_USER holds no password ('name:password') and "
                              "ETCDCTL_PASSWORD is not set: etcdctl would ask for it on "
                              "the terminal; set ETCDCTL_PASSWORD or give "
                              "EtcdOptions(user=..., password=...)")
        if not name:
            raise ConfigError("ETCDCTL_USER ('name:password') has an empty user name")
        user = name
    return {"user": user, "password": password}


def _shown_user(user: str | None) -> str | None:
    """``user`` as a ``repr`` or a log shows it: up to its first ``:``, the rest
    ``[REDACTED]``. A user name holding ``:`` is etcdctl's ``--user name:password`` whole
    (``ETCDCTL_USER=root:pw`` set beside ``ETCDCTL_PASSWORD``, which etcdctl, and
    :meth:`EtcdOptions.from_env`, take as the name ``root:pw``): what follows may be a
    password."""
    if user is None or ":" not in user:
        return user
    return f"{user.partition(':')[0]}:{_REDACTED}"


def _userinfo_refused(uri: str) -> str:
    """The error of an etcd URI refused for user info (quoted as :func:`shown_uri` does)."""
    return (f"etcd URI must not carry user info, got {shown_uri(uri, _URI_FIELDS)!r} (an "
            f"'@' after '//' is taken for user info unless it is in the value of ca_file, "
            f"cert_file or key_file; write any other as %40); etcd's user name and "
            f"password are given as EtcdOptions(user=..., password=...)")


def _load_client_cert(tls: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    """Load the client certificate ``cert_file`` and its key ``key_file`` into ``tls``,
    never asking for a pass phrase.

    Without a ``password`` OpenSSL asks ``Enter PEM pass phrase:`` for an encrypted key on
    the process's terminal (stdin without one) and waits there, in the event loop (the
    error without a terminal: ``OSError: [Errno 22] Invalid argument``); etcdctl cannot
    load such a key either (Go's ``tls.LoadX509KeyPair``).

    Raises:
        OSError: the key is encrypted (its file named) or a file cannot be read;
            ssl.SSLError: a file holds no usable certificate or key.
    """
    shown = shown_path(key_file if key_file is not None else cert_file)

    def refuse() -> bytes:
        raise OSError(f"the client key {shown} is encrypted (protected by a pass phrase): "
                      "give key_file (ETCDCTL_KEY) an unencrypted key, as etcdctl needs")

    tls.load_cert_chain(cert_file, key_file, password=refuse)


def _split_endpoints(text: str, default_scheme: str) -> tuple[str, ...]:
    return tuple(_parse_endpoint(e, default_scheme) for e in text.split(",") if e.strip())


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdOptions:
    """Options of :class:`EtcdRegistry`. Times are seconds.

    Args:
        endpoints: client URLs of the etcd members, ``scheme://host:port`` (``http`` or
            ``https``; ``host:port`` means http, a missing port 2379), like etcdctl's
            ``--endpoints``/``ETCDCTL_ENDPOINTS``. Requests go to one member and move to the
            next when it cannot be reached or answers ``UNAVAILABLE``. Default
            ``("http://127.0.0.1:2379",)``. All must share one scheme.
        prefix: key prefix; an instance is ``<prefix><service>/<instance_id>``. Default
            ``"/meshkit/services/"``; must start and end with ``/``.
        ttl_s: TTL of the registry's lease, whole seconds >= 1 (etcd's unit; etcd raises
            TTLs below its minimum, 1.5 election timeouts, to that minimum) and at most
            9000000000 (etcd refuses a longer lease: "too large lease TTL"). Default 10.
        keepalive_interval_s: seconds between keep-alives; default ``ttl_s / 3``; must be
            below ``ttl_s`` and at least 0.01.
        request_timeout_s: time limit of one request to one member (default 2): after it
            the next member is tried, so keep it below ``keepalive_interval_s`` (a request
            that a member forwarded to a leader that just died is answered only after
            etcd's own timeout, 5 s and two election timeouts). A keep-alive of the lease
            is given ``min(request_timeout_s, ttl_s / 3)`` per member, so that one member
            that hangs is left for the next before the lease runs out.
        operation_timeout_s: how long a write (register, deregister, keep-alive) goes on
            trying the members, with backoff between passes, before it fails (default 10):
            long enough to ride out a leader election.
        connect_timeout_s: time limit of opening a connection to one member (default 1).
        backoff_base_s: first retry delay cap of a failing watch or keep-alive (default
            0.1); the n-th retry sleeps ``uniform(0, min(backoff_max_s,
            backoff_base_s * 2**(n-1)))`` (full jitter).
        backoff_max_s: cap of that delay (default 5; at least 0.01).
        fault_grace_s: how long a watch keeps the instances a replaced store does not list
            (see the module docstring); default ``ttl_s``; 0 turns it off.
        last_seen_ttl_s: how long :meth:`EtcdRegistry.failing` lists an instance whose
            owner died without deregistering: the TTL of the lease of the instances'
            last-seen records (see :class:`EtcdRegistry`), whole seconds, at least
            ``ttl_s``. Default ``max(10 * ttl_s, 300)`` (the local registry keeps a lapsed
            instance 10 TTLs; ``meshkit prometheus-targets`` keeps a failing target 300 s);
            0 writes no last-seen records (``failing()`` is then always empty).
        ca_file: PEM bundle that verifies the members' certificates (etcdctl ``--cacert``,
            ``ETCDCTL_CACERT``); default: the system's trust store.
        cert_file: PEM client certificate for members run with ``--client-cert-auth``
            (``--cert``, ``ETCDCTL_CERT``); needs ``key_file``.
        key_file: its PEM private key (``--key``, ``ETCDCTL_KEY``).
        verify: verify the members' certificates (default True); False is etcdctl's
            ``--insecure-skip-tls-verify`` (``ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true``):
            TLS without verification, ``cert_file`` still presented.
        user: etcd user name, for a cluster with authentication on (``etcdctl auth
            enable``): every request then carries a token the registry gets from
            ``/v3/auth/authenticate`` with ``user`` and ``password``, and gets again when
            etcd answers ``invalid auth token`` (a token expired, ``--auth-token-ttl``,
            default 300 s, or a member restarted); while etcd's authentication is not
            enabled yet, requests go without one (a warning), as etcdctl's do, so clients
            can be given credentials before ``etcdctl auth enable``. Client certificates
            alone do not authenticate there: etcd's JSON gateway, which the registry
            speaks, does not take a certificate's common name for a user (etcd.io/docs,
            "Why gRPC gateway": "gRPC-gateway does not support authentication using TLS
            Common Name"). Default None: no authentication. Goes with ``password`` (the name
            alone: not etcdctl's ``--user name:password`` form; such a ``user`` without
            ``password`` is refused unquoted). A name holding ``:`` is shown in a
            ``repr`` or a log up to it, the rest ``[REDACTED]`` (and redacted from
            errors): ``ETCDCTL_USER=name:password`` beside ``ETCDCTL_PASSWORD`` is taken
            whole, as etcdctl takes it.
        password: that user's password (never quoted in an error nor a ``repr``). Never
            read from a URI; :meth:`from_env` takes ``ETCDCTL_USER``/``ETCDCTL_PASSWORD``
            as etcdctl does (``ETCDCTL_USER=name:password`` split there). etcd's
            refusal of the name or password (``authentication failed``) stands for
            ``backoff_max_s``: requests meanwhile fail with it without asking etcd again
            (each ask is a bcrypt check there).

    The defaults worked out from ``ttl_s`` (``keepalive_interval_s``, ``fault_grace_s``,
    ``last_seen_ttl_s``) read as the numbers in effect (floats), and are held as
    :class:`~meshkit.discovery._types.Derived`: ``dataclasses.replace(options,
    ttl_s=60)`` works them out again from the new ``ttl_s`` (the options equal
    ``EtcdOptions(ttl_s=60)``), where it kept those of the old TTL (or failed a check of
    a value never written); a value given is kept, and checked against the new fields.

    Raises:
        ConfigError: a value is invalid or of the wrong type (``None`` for ``endpoints``,
            ``prefix`` or ``ttl_s``, an endpoint or a ``prefix`` that is no string, a
            file that is no path); the message names the field and quotes the value.
    """

    endpoints: tuple[str, ...] = (f"http://127.0.0.1:{DEFAULT_PORT}",)
    prefix: str = "/meshkit/services/"
    ttl_s: float = 10
    keepalive_interval_s: float | None = None
    request_timeout_s: float = 2.0
    operation_timeout_s: float = 10.0
    connect_timeout_s: float = 1.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0
    fault_grace_s: float | None = None
    last_seen_ttl_s: float | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = field(default=None, repr=False)
    verify: bool = True
    user: str | None = field(default=None, repr=False)  # shown by __repr__, masked
    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        """The fields as a dataclass shows them, ``password`` and ``key_file`` left out,
        and ``user`` up to a ``:`` (see :func:`_shown_user`)."""
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if f.repr]
        shown.append(f"user={_shown_user(self.user)!r}")
        return f"EtcdOptions({', '.join(shown)})"

    def __post_init__(self) -> None:
        check_bool("verify", self.verify)
        if self.user is not None and not (isinstance(self.user, str) and self.user):
            raise ConfigError(f"user must be a non-empty string or None, got a "
                              f"{type(self.user).__name__}" + (
                                  "" if self.user else " (empty)"))
        if self.password is not None and not isinstance(self.password, str):
            raise ConfigError(f"password must be a string or None, got a "
                              f"{type(self.password).__name__}")
        if (self.user is None) != (self.password is None):
            # a user written as etcdctl's --user takes it, 'name:password': not quoted
            raise ConfigError("user and password go together (etcd's password "
                              "authentication), got " + (
                                  "a password and no user" if self.user is None
                                  else f"user={self.user!r} and no password"
                                  if ":" not in self.user
                                  else "a user holding ':' (not quoted) and no password: "
                                  "not etcdctl's --user 'name:password'; give the "
                                  "password as password=..."))
        # quoted without user info: an endpoint URL may carry a password
        if isinstance(self.endpoints, str):
            raise ConfigError(f"endpoints must be a sequence of URLs, got "
                              f"{shown_uri(self.endpoints)!r}")
        items = tuple(self.endpoints) if isinstance(self.endpoints, Iterable) else ()
        for item in items:
            if not isinstance(item, str):  # bytes from os.environb, say: its type only
                raise ConfigError(f"endpoints must hold strings (URLs), got a "
                                  f"{type(item).__name__}")
        endpoints = tuple(_parse_endpoint(e, "http") for e in check_strings(
            "endpoints", items if isinstance(self.endpoints, Iterable) else self.endpoints))
        if not endpoints:
            raise ConfigError(f"endpoints must name at least one member, got {self.endpoints!r}")
        schemes = {e.split("://", 1)[0] for e in endpoints}
        if len(schemes) > 1:
            raise ConfigError(f"endpoints must share one scheme, got {self.endpoints!r}")
        object.__setattr__(self, "endpoints", endpoints)
        if not (isinstance(self.prefix, str) and self.prefix.startswith("/")
                and self.prefix.endswith("/")):
            raise ConfigError(f"prefix must be a string; it must start and end with '/', "
                              f"got {self.prefix!r}")
        # first: the defaults below are worked out from it (again after a replace(): a
        # Derived is no value of the user's)
        check_number("ttl_s", self.ttl_s, low_open=True)
        if is_default(self.keepalive_interval_s):
            object.__setattr__(self, "keepalive_interval_s", Derived(self.ttl_s / 3))
        if is_default(self.fault_grace_s):
            object.__setattr__(self, "fault_grace_s", Derived(self.ttl_s))
        if is_default(self.last_seen_ttl_s):
            object.__setattr__(self, "last_seen_ttl_s",
                               Derived(min(_MAX_LEASE_TTL_S, max(10 * self.ttl_s, 300))))
        check_seconds(self, _FLOAT_FIELDS, zero_ok=("fault_grace_s", "last_seen_ttl_s"))
        if not float(self.ttl_s).is_integer() or self.ttl_s < 1:
            raise ConfigError(f"ttl_s must be whole seconds >= 1 (etcd's unit), "
                              f"got {self.ttl_s!r}")
        if self.ttl_s > _MAX_LEASE_TTL_S:
            raise ConfigError(f"ttl_s must be <= {_MAX_LEASE_TTL_S} (etcd's longest lease, "
                              f"MaxLeaseTTL), got {self.ttl_s!r}")
        seen = self.last_seen_ttl_s
        assert seen is not None
        if seen != 0 and not (float(seen).is_integer() and self.ttl_s <= seen
                              <= _MAX_LEASE_TTL_S):
            raise ConfigError(f"last_seen_ttl_s must be 0 (off) or whole seconds from "
                              f"ttl_s={self.ttl_s!r} to {_MAX_LEASE_TTL_S} (etcd's longest "
                              f"lease), got {seen!r}")
        assert self.keepalive_interval_s is not None
        if self.keepalive_interval_s >= self.ttl_s:
            raise ConfigError(f"keepalive_interval_s must be < ttl_s={self.ttl_s!r}, "
                              f"got {self.keepalive_interval_s!r}")
        for name in ("keepalive_interval_s", "backoff_max_s"):
            if getattr(self, name) < _MIN_INTERVAL_S:  # would renew or retry without pause
                raise ConfigError(f"{name} must be at least {_MIN_INTERVAL_S} s, got "
                                  f"{getattr(self, name)!r}")
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError(f"backoff_max_s must be >= backoff_base_s="
                              f"{self.backoff_base_s!r}, got {self.backoff_max_s!r}")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(check_path(name, path)):
                raise ConfigError(f"{name} must be an existing file, got {shown_path(path)}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(f"cert_file and key_file go together, got "
                              f"cert_file={shown_path(self.cert_file)}, "
                              f"key_file={shown_path(self.key_file)}")
        if self.scheme != "https" and (self.ca_file or self.cert_file):
            raise ConfigError(f"ca_file/cert_file need https endpoints, got {endpoints!r}")

    @property
    def scheme(self) -> str:
        """``"http"`` or ``"https"``: the scheme of the endpoints."""
        return self.endpoints[0].split("://", 1)[0]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> EtcdOptions:
        """Options from etcdctl's environment variables, then ``overrides``.

        Reads ``ETCDCTL_ENDPOINTS`` (comma-separated URLs: ``endpoints``),
        ``ETCDCTL_CACERT`` (``ca_file``), ``ETCDCTL_CERT`` (``cert_file``),
        ``ETCDCTL_KEY`` (``key_file``), ``ETCDCTL_INSECURE_SKIP_TLS_VERIFY`` (a boolean:
        true sets ``verify=False``) and ``ETCDCTL_INSECURE_TRANSPORT`` (a boolean, default
        true); empty variables count as unset. As etcdctl dials them
        (``etcdctl/ctlv3/command/global.go``, ``newClientCfg``), an endpoint of
        ``ETCDCTL_ENDPOINTS`` written without a scheme uses TLS (``https``) when a TLS
        file is set (by a variable or an override), ``ETCDCTL_INSECURE_TRANSPORT`` is
        false or ``ETCDCTL_INSECURE_SKIP_TLS_VERIFY`` true (TLS without the server's
        certificate checked: etcd's ``client/v3`` ``newTLSConfig``), else plain http;
        one written with its scheme keeps it. So does etcdctl's default endpoint,
        ``127.0.0.1:2379``, when ``ETCDCTL_ENDPOINTS`` is unset and no ``endpoints``
        override is given (``https://127.0.0.1:2379`` then).

        ``ETCDCTL_DIAL_TIMEOUT`` (etcdctl's ``--dial-timeout``: ``connect_timeout_s``)
        and ``ETCDCTL_COMMAND_TIMEOUT`` (``--command-timeout``, the bound of a whole
        command, retries across members included: ``operation_timeout_s``) are Go
        durations as etcdctl reads them (``time.ParseDuration``: ``"2s"``, ``"500ms"``,
        ``"1m30s"``; see :func:`~meshkit.discovery._options.parse_go_duration`), above
        0; unset, meshkit's defaults stay (1 s and 10 s; etcdctl's are 2 s and 5 s).

        ``ETCDCTL_DISCOVERY_SRV`` (etcdctl's ``--discovery-srv``) is not looked up: set
        without endpoints (``ETCDCTL_ENDPOINTS``, an override, a URI's hosts) it is
        refused, rather than dropped for the default member.

        ``ETCDCTL_USER`` and ``ETCDCTL_PASSWORD`` (etcd's password authentication) give
        ``user`` and ``password`` as etcdctl's ``--user``/``--password`` do: with
        ``ETCDCTL_PASSWORD`` the user is ``ETCDCTL_USER`` whole, else ``ETCDCTL_USER`` is
        ``name:password`` (split at the first ``:``). Taken as they are (not stripped).
        A ``user`` or ``password`` override wins over both variables (the pair is taken
        from one place). The password is never quoted nor logged.

        Args:
            environ: the variables (default ``os.environ``).
            overrides: any :class:`EtcdOptions` field, winning over the environment.

        Raises:
            ConfigError: a variable or override is invalid (the value quoted, never a
                password), ``ETCDCTL_USER`` without a password (no ``:`` and no
                ``ETCDCTL_PASSWORD``: etcdctl would ask for it) or ``ETCDCTL_PASSWORD``
                without ``ETCDCTL_USER`` (named, their values not quoted),
                ``ETCDCTL_DISCOVERY_SRV`` is set without endpoints,
                ``ETCDCTL_DIAL_TIMEOUT``/``ETCDCTL_COMMAND_TIMEOUT`` is no Go duration
                above 0 (named, quoted),
                or an override names no field.
        """
        return cls._from_env(environ, False, overrides)

    @classmethod
    def _from_env(cls, environ: Mapping[str, str] | None, tls: bool,
                  overrides: Mapping[str, Any]) -> EtcdOptions:
        """:meth:`from_env`; ``tls``: endpoints of ``ETCDCTL_ENDPOINTS`` written without a
        scheme are https whatever the variables say (an ``etcd+https://`` URI)."""
        env = os.environ if environ is None else environ
        kwargs = _env_credentials(env) if (
            "user" not in overrides and "password" not in overrides) else {}
        kwargs |= env_fields(env, {"ETCDCTL_CACERT": "ca_file", "ETCDCTL_CERT": "cert_file",
                                  "ETCDCTL_KEY": "key_file"})
        skip = env_value(env, "ETCDCTL_INSECURE_SKIP_TLS_VERIFY")
        if skip is not None:
            kwargs["verify"] = not parse_bool("ETCDCTL_INSECURE_SKIP_TLS_VERIFY", skip)
        insecure = env_value(env, "ETCDCTL_INSECURE_TRANSPORT")
        # skipping the check asks for TLS too (etcd client/v3 newTLSConfig)
        tls = tls or kwargs.get("verify") is False or (insecure is not None
                      and not parse_bool("ETCDCTL_INSECURE_TRANSPORT", insecure)) or any(
            {**kwargs, **overrides}.get(name) is not None
            for name in ("ca_file", "cert_file", "key_file"))
        if (raw := env_value(env, "ETCDCTL_ENDPOINTS")) is not None:
            kwargs["endpoints"] = _split_endpoints(raw, "https" if tls else "http")
        for var, name in _ENV_TIMEOUTS.items():
            if (raw := env_value(env, var)) is not None:
                seconds = parse_go_duration(var, raw)
                if not seconds > 0:  # etcdctl: 0 waits for ever; meshkit needs a bound
                    raise ConfigError(f"{var} must be a Go duration above 0 such as "
                                      f"'2s', got {raw!r}")
                kwargs[name] = seconds
        srv = env_value(env, "ETCDCTL_DISCOVERY_SRV")
        if srv is not None and "endpoints" not in kwargs and "endpoints" not in overrides:
            # dropped, the registry would dial the default member and fail far from here
            raise ConfigError(
                f"ETCDCTL_DISCOVERY_SRV is set ({srv!r}), but meshkit's etcd registry does "
                f"not look up the members' SRV records; set ETCDCTL_ENDPOINTS (or "
                f"endpoints) to the members' client URLs")
        if tls and "endpoints" not in kwargs and "endpoints" not in overrides:
            # etcdctl's default endpoint, 127.0.0.1:2379, has no scheme either: TLS then
            kwargs["endpoints"] = _split_endpoints(_ETCDCTL_DEFAULT_ENDPOINT, "https")
        return options_with(cls, kwargs, overrides)

    @classmethod
    def from_uri(cls, uri: str, environ: Mapping[str, str] | None = None) -> EtcdOptions:
        """Options from a registry URI, on top of :meth:`from_env`.

        Forms: ``etcd://host:2379[,host2:2379...]`` (http), ``etcd+http://...``,
        ``etcd+https://host:2379,...`` (TLS; ``ca_file``, ``cert_file``, ``key_file`` in the
        query or from ``ETCDCTL_CACERT``/``ETCDCTL_CERT``/``ETCDCTL_KEY``); ``etcd://`` with
        no host takes ``ETCDCTL_ENDPOINTS`` (else the default; ``etcd+https://`` takes
        those written without a scheme as https). Query parameters set fields
        by name, e.g. ``etcd://10.0.0.1:2379,10.0.0.2:2379?ttl_s=5&prefix=/prod/``.

        Raises:
            ConfigError: bad scheme, endpoint or option (the offending part is quoted; the
                URI with any user info and the values of keys that are no option masked);
                user info, that is an ``@`` after ``//`` anywhere but in the value of
                ``ca_file``, ``cert_file`` or ``key_file`` (a ``prefix`` holding one
                writes it ``%40``).
        """
        parts, scheme = split_uri(uri, "etcd", "etcd")
        # An '@' after "//", not just the netloc's: a password may hold an unencoded '/',
        # '?' or '#', where the parser ends the netloc (the rest, password's tail and all,
        # would be quoted as a path, or reach the endpoint check as 'root:<password>'); one
        # in a TLS file's path in the query is no user info
        if at_sign_may_be_userinfo(uri, _AT_FIELDS):
            raise ConfigError(_userinfo_refused(uri))
        if parts.path not in ("", "/"):
            # shown as the URI is: 'etcd:root:<pw>@etcd:2379' (no '//') is all path
            raise ConfigError(f"etcd URI takes no path (use ?prefix=), got "
                              f"{hide_userinfo(parts.path)!r} "
                              f"(in {shown_uri(uri, _URI_FIELDS)!r})")
        kwargs: dict[str, Any] = {}
        default_scheme = "https" if scheme == "etcd+https" else "http"
        if parts.netloc:
            try:
                kwargs["endpoints"] = _split_endpoints(parts.netloc, default_scheme)
            except ConfigError:
                if "@" in uri:  # 'root:<pw>' of 'etcd://root:<pw>?ca_file=x@h': unquoted
                    raise ConfigError(_userinfo_refused(uri)) from None
                raise
        kwargs.update(query_fields(urllib.parse.parse_qs(parts.query, keep_blank_values=True),
                                   floats=_FLOAT_FIELDS, strs=_STR_FIELDS,
                                   bools=_BOOL_FIELDS,
                                   where=f"etcd URI {shown_uri(uri, _URI_FIELDS)!r}"))
        # etcd+https:// without a host: ETCDCTL_ENDPOINTS without a scheme are https
        options = cls._from_env(environ, scheme == "etcd+https", kwargs)
        if scheme == "etcd+https" and options.scheme != "https":
            raise ConfigError(f"{shown_uri(uri, _URI_FIELDS)!r} asks for https but the "
                              f"endpoints are {options.endpoints!r}")
        return options


async def _messages(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON messages of a gateway stream (one a line), whatever their size."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError(f"not a gateway stream message: {line[:200]!r}")
                yield message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` of a prefix range (the prefix with its last byte plus one)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _seen_prefix(prefix: str) -> str:
    """The key prefix of the last-seen records of the instances under ``prefix`` (which
    ends with ``/``): ``prefix`` without its last ``/``, then ``@last-seen/``. Its range
    lies outside ``[prefix, _prefix_end(prefix))``: at the byte where they part, ``@``
    (0x40) sorts after ``0`` (0x30), the prefix range's end byte, so a reader of the
    prefix (a watch, ``services()``, an older meshkit, ``etcdctl get --prefix``) never
    meets a record."""
    return prefix[:-1] + _SEEN


def _encode(instance: Instance) -> str:
    return json.dumps({
        "service": instance.service, "instance_id": instance.instance_id,
        "host": instance.host, "port": instance.port, "tags": list(instance.tags),
        "meta": dict(instance.meta), "weight": instance.weight,
    }, sort_keys=True)


def _decode(value: bytes) -> Instance:
    """The instance of a key's value, JSON as :func:`_encode` writes it (``tags`` and
    ``meta`` may be missing or null; ``weight`` too: 1).

    Raises:
        ValueError: not JSON.
        KeyError: a field is missing.
        TypeError: a field of another shape (another writer's: tags that are no list,
            meta no object, a port or weight no integer), which a conversion would take
            apart or change (``tuple("v2")`` is the tags ``('v', '2')``, ``int(50051.9)``
            the port 50051); the caller skips such a value, as the local registry skips
            such a row.
        ConfigError: a value :class:`Instance` refuses.
    """
    data = json.loads(value)
    if not isinstance(data, dict):
        raise TypeError(f"an etcd value must be a JSON object, got {type(data).__name__}")
    tags = data.get("tags") or []
    meta = data.get("meta") or {}
    port, weight = data["port"], data.get("weight", 1)
    weight = 1 if weight is None else weight
    if not (isinstance(tags, list) and isinstance(meta, dict)
            and type(port) is int and type(weight) is int):
        raise TypeError("an etcd value's tags must be a JSON list, meta an object, port "
                        "and weight integers")
    return Instance(service=data["service"], instance_id=data["instance_id"], host=data["host"],
                    port=port, tags=tuple(tags), meta=meta, weight=weight)


class _KeyMismatchError(ValueError):
    """A value that names another service or instance id than the key it is under."""


@dataclass(frozen=True, slots=True)
class _Update:
    """What a watch's follower task read: its state (the instances by key; the follower
    goes on changing it in place, so the reader takes it as it is when the update is
    read: the latest, which later updates queued would give anyway), the ids deleted
    since the previous update, and whether the store was found replaced. The set of
    instances is made once per read of the queue, not once per watch message: a rolling
    deploy of n instances, each its own message, made n sets of n instances."""

    state: Mapping[bytes, Instance]
    deleted: frozenset[str]
    replaced: bool


@dataclass(slots=True)
class _Cursor:
    """Where a watch's follower is: the state it built and the ``mod_revision`` of each
    key of it (also of a key whose value is unusable), the last revision applied, whether
    a full read is due, the cluster id, how many full reads in a row came without an
    event between them, the service watched, and when the current stream was
    established."""

    state: dict[bytes, Instance] = field(default_factory=dict)
    mods: dict[bytes, int] = field(default_factory=dict)
    revision: int = 0
    reread: bool = True
    cluster: str | None = None
    resyncs: int = 0
    service: str | None = None
    #: monotonic time the current stream was established (etcd's "created"), None
    #: while none is: a stream that lived past the longest backoff broke afresh
    created_at: float | None = None


class _LeaseLock:
    """The registry's lock (``_lease_lock``): one holder at a time among the tasks of
    every event loop, first come first served. The registry's state (lease, owned keys)
    is shared by the loops that use it, a later ``asyncio.run()`` or loops of several
    threads at once, and an ``asyncio.Lock`` binds to the first loop that waits on it;
    here each waiter waits on a future of its own loop, handed the lock in that loop
    (thread-safe). A holder whose loop was closed while it held the lock (a loop stopped
    and closed with the task pending never releases) is passed over: the lock goes to
    the next waiter, checked when one comes and every ``_DEAD_HOLDER_CHECK_S`` while one
    waits. Uncontended: a ``threading.Lock`` taken and released, no future."""

    __slots__ = ("_holder", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._holder: asyncio.AbstractEventLoop | None = None  # the holder's loop
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        with self._mutex:
            if self._holder is None:
                self._holder = loop
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            if self._holder.is_closed():
                self._pass_locked()
        try:
            while True:
                done, _ = await asyncio.wait((waiter,), timeout=_DEAD_HOLDER_CHECK_S)
                if done:
                    return
                with self._mutex:
                    if self._holder is not None and self._holder.is_closed():
                        self._pass_locked()
        except asyncio.CancelledError:
            with self._mutex:
                if waiter in self._waiters:  # not handed the lock
                    self._waiters.remove(waiter)
                    waiter.cancel()
                    raise
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed and granted: pass it on
            else:
                waiter.cancel()  # handed, not granted yet: _grant passes it on
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        with self._mutex:
            self._pass_locked()

    def _pass_locked(self) -> None:
        """Hand the lock to the first waiter whose loop is open (granted in that loop),
        else leave it free (``_mutex`` held)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            loop = waiter.get_loop()
            if waiter.done() or loop.is_closed():
                continue
            try:
                loop.call_soon_threadsafe(self._grant, waiter)
            except RuntimeError:  # closed meanwhile
                continue
            self._holder = loop
            return
        self._holder = None

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        """In ``waiter``'s loop: wake it, holding the lock; pass the lock on if it has
        been cancelled since it was handed the lock."""
        if waiter.done():
            self._release()
        else:
            waiter.set_result(None)


_LOG_STARTED = {
    False: "etcd cannot be read; watches keep their last endpoints (or wait for a first read)",
    True: "etcd cannot be written; the lease is not renewed",
}
_LOG_STILL = {False: "etcd still cannot be read", True: "etcd still cannot be written"}
_LOG_BACK = {False: "etcd readable again", True: "etcd writable again"}
#: At most this many services named in one log line (an outage of every watched service)
_NAMED_SERVICES = 20


class EtcdRegistry:
    """A :class:`~meshkit.discovery.Registry` on etcd v3 (see the module docstring).

    Usage::

        reg = EtcdRegistry(EtcdOptions(endpoints=("http://10.0.0.1:2379",
                                                  "http://10.0.0.2:2379"), ttl_s=5))
        await reg.register(Instance(service="orderd", instance_id="orderd-1",
                                    host="10.0.0.5", port=50051))
        async for instances in reg.watch("orderd"): ...
        await reg.close()

    Args:
        options: :class:`EtcdOptions`; default :meth:`EtcdOptions.from_env`
            (``ETCDCTL_ENDPOINTS`` etc.).
        rng: random source of the backoff jitter (default a new ``random.Random()``,
            reseeded in a forked child; one given is never reseeded).

    Raises:
        ConfigError: ``options`` is no :class:`EtcdOptions` (an endpoint URL given for
            ``EtcdOptions(endpoints=...)``: named by its type only, it may hold a
            password), or ``rng`` no random source (a seed given for
            ``random.Random(seed)``; quoted).

    Instances whose owner died without deregistering are listed by :meth:`failing` (and
    their service by :meth:`services`) for ``last_seen_ttl_s`` (default ``max(10 * ttl_s,
    300)`` s) after their key went with its lease, from a last-seen record each instance
    keeps under ``<prefix minus '/'>@last-seen/`` (outside the prefix's range) on a
    second, longer lease (see the module docstring); a deregistered instance is not.
    Watches never list those records.

    A key of a registered instance deleted or overwritten by someone else while the lease
    lives is put back by the keep-alive within ``ttl_s + keepalive_interval_s`` (one
    ``/kv/txn`` per ``ttl_s``; see "Lost keys" in the module docstring).

    The HTTP session is created on first use, inside the running event loop, so the
    registry can be built anywhere; one per event loop (an aiohttp session belongs to
    one), so the registry carries over from one ``asyncio.run()`` to the next and serves
    loops of several threads at once: each loop that registered runs a keep-alive while
    it runs (about one round per interval between them), so the lease lives while any of
    them does; the registry's lock excludes the tasks of every loop; a loop's session is
    closed as that loop ends (``asyncio.run()`` cancelling what is left); and
    :meth:`close` ends the watches, keep-alives and sessions of every loop still running,
    each in its own. Members given by host name are looked up on two threads of the
    registry's own (``meshkit-etcd-dns``), never on the event loop's default executor;
    a registry used before an ``os.fork()`` works in the child too (a pre-fork server's
    workers), where it gets lookup threads, a lock and HTTP sessions of its own, also
    when another thread of the parent was using it at the fork, and forgets its parent's
    lease and instances (as the local registry does): the child's instances go under a
    lease of its own, and the parent's are never renewed by a child, so they leave when
    the parent dies; a default ``rng`` is reseeded there (workers do not retry in
    lock-step), and the child lets go of its copies of the parent's connections (the
    parent's close ends them while workers live) (``os.register_at_fork``; see
    :meth:`_forget_parent`).

    Errors: ``register``/``deregister`` raise :class:`RegistryError` (chained from the
    aiohttp or etcd error); watches and the keep-alive never raise for etcd errors, they
    log on ``meshkit.discovery.etcd`` once per outage and retry with backoff.
    """

    def __init__(self, options: EtcdOptions | None = None, *,
                 rng: random.Random | None = None) -> None:
        check_secret_holder("options", options, EtcdOptions)
        check_rng("rng", rng, ("uniform",))
        self.options = options if options is not None else EtcdOptions.from_env()
        self._rng = rng if rng is not None else random.Random()
        self._own_rng = rng is None  # reseeded in a forked child (see _forget_parent)
        # one aiohttp session per event loop (a session belongs to one): a later
        # asyncio.run(), or loops of several threads at once, each with the task of its
        # loop that closes it (hold_until_cancelled); replaced under _loops_mutex, read without
        self._sessions: dict[asyncio.AbstractEventLoop,
                             tuple[aiohttp.ClientSession, asyncio.Task[None]]] = {}
        self._loops_mutex = threading.Lock()
        self._ssl: ssl.SSLContext | bool | None = None
        # the sessions' name lookups (see OwnThreadsResolver); its threads start at the
        # first lookup (none for IP address endpoints) and end at close()
        self._dns = LookupThreads("etcd")
        self._current = 0  # index of the member requests go to first
        self._lease: int | None = None
        # taken by register, deregister and the keep-alive's lease-loss, key-check and
        # record steps, from whichever event loop each runs in
        self._lease_lock = _LeaseLock()
        # the instances registered, by (service, instance_id): one id may be registered
        # for several services (each its own key, <prefix><service>/<id>)
        self._owned: dict[tuple[str, str], Instance] = {}
        # Keys of puts left unanswered (etcd may have applied them) of instances not
        # registered, not deleted yet (the keep-alive deletes them).
        self._stale: set[bytes] = set()
        # The last-seen records' lease, when it is next renewed (monotonic), and the
        # (service, instance_id) of owned instances whose record is not written yet (the
        # keep-alive retries).
        self._seen_lease: int | None = None
        self._seen_renew_at = 0.0
        self._unseen: set[tuple[str, str]] = set()
        # The revision of this registry's latest put of each key it owns (instances' keys
        # and last-seen records), and when the owned-key check is next due (monotonic).
        self._revs: dict[bytes, int] = {}
        self._check_at = 0.0
        seen_ttl_s = self.options.last_seen_ttl_s
        assert seen_ttl_s is not None
        self._seen_ttl_s = int(seen_ttl_s)
        # the records' prefix, and that of the earlier layout (inside the prefix's range;
        # read by services()/failing() and deleted by deregister, see the module docstring)
        self._seen_root = _seen_prefix(self.options.prefix)
        self._legacy_seen_root = f"{self.options.prefix}{_SEEN}"
        assert self.options.keepalive_interval_s is not None
        self._seen_period_s = max(self.options.keepalive_interval_s,
                                  self._seen_ttl_s / _SEEN_RENEWALS)
        # what one member is given to answer a keep-alive of the lease (see _keep_once)
        self._keepalive_timeout_s = min(self.options.request_timeout_s,
                                        self.options.ttl_s / 3)
        # the keep-alive task of each event loop that registered (under _loops_mutex),
        # and when one of them last did a round (monotonic): one round per interval
        self._keepers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._kept_at = -float("inf")
        self._race = CloseRace()
        self._tracker = StatusTracker("etcd")
        # (service, watch number) -> instances it keeps after a replaced store
        self._kept: dict[tuple[str, int], int] = {}
        # each watched service's reads (its watches' ranges and streams): one refused
        # watch (etcd's permission denied on its prefix) is that service's fault, not
        # every service's (see _outcome)
        self._reads = ServiceReads("etcd")
        # services whose own read outage began and is not logged yet: logged at its
        # second failed read, unless every watched service fails by then (the
        # registry's outage: one line naming them all) or it reads again first
        self._unlogged: set[str] = set()
        # services whose own outage's start was logged: only theirs log its end
        self._own_logged: set[str] = set()
        # the key of each unusable value -> monotonic time it was last logged
        self._unusable_logged: dict[bytes, float] = {}
        self._watch_ids = itertools.count()
        # The gateway's path prefix: /v3 (etcd >= 3.4) until a member answers a plain 404
        # and /v3beta (etcd 3.3) works instead; see _post_one.
        self._api = _V3
        # The auth token of the requests, with options.user (see _auth_headers); None
        # until got, and after etcd refused it; "" while etcd's auth is not enabled
        self._token: str | None = None
        # the /auth/authenticate in flight in each event loop to each member, which every
        # request of that loop to that member that finds no token waits for (see
        # _authenticate)
        self._authenticating: dict[tuple[asyncio.AbstractEventLoop, str],
                                   asyncio.Task[str]] = {}
        # etcd's last refusal of the user name or password and until when (monotonic) it
        # stands for every request without asking again (see _authenticate)
        self._auth_refused: tuple[float, _EtcdError] | None = None
        _registries.add(self)  # reset in a forked child: _forget_parent

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()`` (``os.register_at_fork(after_in_child=...)``):
        start afresh, as the local registry does (closed if the parent's registry was).

        * **Locks.** The lock (``_lease_lock``) may have been held at the fork by a task
          of another thread's loop, one that does not run in the child (nor does the
          forking thread's own loop run asyncio code there: asyncio finds no running loop
          in a forked child), so its holder would never release it and every
          register/deregister of the child would wait for good: the child gets a new,
          free one (a task of the parent's loops that ever released the old one would not
          touch it). ``_loops_mutex`` may have been held by another thread: a new one.
        * **Ownership.** The lease, owned instances and last-seen lease are the
          parent's: a child that kept them would put its own keys under the parent's
          lease and renew it (and put back the parent's keys at its key check) after the
          parent died, keeping a dead process's instances listed for as long as its
          workers live. The child owns nothing until it registers (a lease of its own);
          the parent's instances stay the parent's, and go with its lease when it dies.
        * **Jitter.** A generator the registry made itself (no ``rng`` given) is
          reseeded (from ``os.urandom``): with the parent's state every worker forked
          from one registry drew the same backoff delays, so after an etcd member's
          restart their keep-alives, watches and write retries fired in lock-step (the
          herd jitter exists to break up; CPython reseeds its own module-level generator
          in a child for this reason). A generator the caller gave is the caller's.
        * **Tasks and sessions.** The keep-alives and HTTP sessions of the parent's loops
          are kept referenced (``_inherited``), never used nor closed through asyncio
          here: a transport closed in the child would remove its descriptor from the
          epoll instance the child's copy of the parent's loop shares with the parent,
          silencing the parent's watch streams and pooled connections, and with TLS
          write a ``close_notify`` onto the parent's stream. The child's copies of their
          socket descriptors are made to name ``/dev/null`` instead, so that the
          parent's close of a connection ends it while workers live, and a later close
          in the child does the parent no harm
          (:func:`~meshkit.discovery._resolver.drop_inherited_sockets`). The keep-alives
          are cancelled, should the child ever run the forking thread's loop on. The
          lookup threads are renewed by
          :class:`~meshkit.discovery._resolver.LookupThreads`."""
        self._loops_mutex = threading.Lock()
        self._lease_lock = _LeaseLock()
        if self._own_rng:
            self._rng.seed()
        _inherited.append((self._keepers, self._sessions))
        drop_inherited_sockets(session for session, _ in self._sessions.values())
        for task in self._keepers.values():
            with contextlib.suppress(Exception):  # a loop of the parent's; not running
                task.cancel()
        self._keepers = {}
        self._sessions = {}
        self._authenticating = {}
        race = CloseRace()  # no waits of the parent's loops to wake at a close
        race.closed = self._race.closed
        self._race = race
        self._lease = None
        self._owned = {}
        self._stale = set()
        self._seen_lease = None
        self._seen_renew_at = 0.0
        self._unseen = set()
        self._revs = {}
        self._check_at = 0.0
        self._kept_at = -float("inf")
        self._kept = {}
        self._reads = ServiceReads("etcd")
        self._unlogged = set()
        self._own_logged = set()

    @classmethod
    def from_uri(cls, uri: str, *, environ: Mapping[str, str] | None = None,
                 rng: random.Random | None = None) -> EtcdRegistry:
        """A registry from ``etcd://host:2379,host2:2379`` or ``etcd+https://...?opt=v``.

        See :meth:`EtcdOptions.from_uri`; etcdctl's variables in ``environ`` (default
        ``os.environ``) apply.

        Raises:
            ConfigError: the URI or an option in it is invalid.
        """
        return cls(EtcdOptions.from_uri(uri, environ), rng=rng)

    def __repr__(self) -> str:
        return f"EtcdRegistry(endpoints={self.options.endpoints!r}, ttl_s={self.options.ttl_s})"

    async def __aenter__(self) -> EtcdRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ------------------------------------------------------------------------
    def _get_session(self) -> aiohttp.ClientSession:
        """The running event loop's aiohttp session, made on first use in it (those of
        closed loops are dropped then), with a task of that loop that closes it when the
        loop ends or :meth:`close` cancels it
        (:func:`~meshkit.discovery._shared.hold_until_cancelled`); one whose task has
        ended (closed it) is replaced.

        Raises:
            RegistryError: the registry is closed.
        """
        if self._race.closed:
            raise RegistryError(f"etcd registry for {self.options.endpoints!r} is closed")
        loop = asyncio.get_running_loop()
        held = self._sessions.get(loop)
        if held is not None and not held[1].done():
            return held[0]
        with self._loops_mutex:
            # again under the mutex close() marks it closed under before it takes the
            # sessions: one made after that check would be stored after close() took
            # them, and nobody would close it
            if self._race.closed:
                raise RegistryError(
                    f"etcd registry for {self.options.endpoints!r} is closed")
            opts = self.options
            tls = self._ssl
            if tls is None:
                tls = True
                if opts.scheme == "https" and not opts.verify:
                    # etcdctl --insecure-skip-tls-verify: no verification, the client
                    # certificate still presented
                    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    tls.check_hostname = False
                    tls.verify_mode = ssl.CERT_NONE
                    if opts.cert_file is not None:
                        _load_client_cert(tls, opts.cert_file, opts.key_file)
                elif opts.scheme == "https":
                    tls = ssl.create_default_context(cafile=opts.ca_file)
                    if opts.cert_file is not None:
                        _load_client_cert(tls, opts.cert_file, opts.key_file)
                self._ssl = tls
            # a closed loop's session was closed by its owner as that loop ended, unless
            # the loop was closed with the owner pending (stopped, not run to its end)
            sessions = {other: h for other, h in self._sessions.items()
                        if not other.is_closed()}
            for other, (dropped, owner) in self._sessions.items():
                if other.is_closed() and not owner.done():
                    self._abandon(dropped)
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout_s),
                # No connection limit (aiohttp's default is 100): each watch holds one
                # connection for its watch stream, which never ends, so with a limit 100
                # watches would leave register, deregister and the keep-alive waiting for
                # good (the lease would expire): one connection per watch, plus the
                # requests in flight.
                # Host names are looked up on the registry's own threads: on the loop's
                # default executor (aiohttp's default) an application's blocking jobs
                # held the keep-alive's lookup until the lease expired.
                connector=aiohttp.TCPConnector(
                    ssl=tls, limit=0, resolver=OwnThreadsResolver(self._dns, "etcd registry")),
            )
            # the longest a write (a drain's deregister) takes
            bound_s = opts.operation_timeout_s + opts.request_timeout_s
            sessions[loop] = (session, loop.create_task(
                hold_until_cancelled(session.close, self._race, bound_s, _FOREIGN),
                name="meshkit-etcd-session"))
            self._sessions = sessions
        return session

    def _abandon(self, session: aiohttp.ClientSession) -> None:
        """Let go of ``session``, of an event loop closed with its owner task pending
        (:func:`~meshkit.discovery._resolver.abandon_session`: its connections shut down
        now, etcd sees them end and a watch stream is no longer fed)."""
        abandon_session(session, "meshkit-etcd-abandoned", _FOREIGN)

    def _backoff_delay(self, attempt: int) -> float:
        return full_jitter(self._rng, attempt, self.options.backoff_base_s,
                           self.options.backoff_max_s)

    def _failed_over(self, index: int) -> None:
        """Member ``index`` failed: the next request starts with the one after it."""
        n = len(self.options.endpoints)
        if self._current % n == index % n:
            self._current = (index + 1) % n

    async def _post(self, path: str, body: Mapping[str, Any], *,
                    persist: bool = True, request_timeout_s: float | None = None,
                    sliced: bool = False) -> dict[str, Any]:
        """POST ``body`` to call ``path`` (e.g. ``/kv/put``, under the gateway prefix: see
        :meth:`_post_one`) of one member after another until one answers, each member
        given ``request_timeout_s`` seconds (default: the option's).

        With ``persist`` (writes: register, deregister, keep-alive) the members are tried
        again, after a backoff, until ``operation_timeout_s`` has passed (no attempt starts
        after it, so a write fails within ``operation_timeout_s + request_timeout_s``
        whatever the number of members): a leader election
        (about one to two election timeouts) makes every member answer ``UNAVAILABLE`` or
        time out for a while. Without it (a watch's read, which retries on its own) one
        pass over the members. ``sliced``: the answer decoded in slices, the event loop
        let run between (:func:`~meshkit.discovery._shared.decoded_in_slices`: a large
        answer, a prefix read in full).

        Raises:
            _EtcdError: an error answer that another member would give too (e.g. NOT_FOUND),
                or the last member's error.
            aiohttp.ClientError, OSError, TimeoutError, ValueError: the last member's error.
            RegistryError: the registry was closed meanwhile, before an attempt (chained
                from the previous attempt's error, if any): its session is closed; or
                during one, while it waited for the member's name lookup (chained from
                the ``CancelledError`` the closed session's connector gave it). A cancel
                of the calling task propagates as ``CancelledError``.
        """
        session = self._get_session()
        endpoints = self.options.endpoints
        deadline = time.monotonic() + self.options.operation_timeout_s
        error: BaseException | None = None
        for attempt in itertools.count(1):
            start = self._current
            for i in range(start, start + len(endpoints)):
                if self._race.closed:  # close() closes the session: aiohttp's RuntimeError
                    raise RegistryError(f"etcd registry for {endpoints!r} is closed") from error
                if persist and error is not None and time.monotonic() >= deadline:
                    break  # no attempt past operation_timeout_s, however many members
                try:
                    return await self._post_one(session, endpoints[i % len(endpoints)],
                                                path, body, request_timeout_s, sliced=sliced)
                except _EtcdError as exc:
                    if not exc.retry_elsewhere:
                        raise
                    error = exc
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    error = exc
                except asyncio.CancelledError as exc:
                    # close() closed the session while the request waited for the
                    # member's name lookup (its connector cancels the lookups): no
                    # cancel of the caller's task, which would propagate
                    if not cancelled_by_close(self._race.closed):
                        raise
                    raise RegistryError(f"etcd registry for {endpoints!r} is closed") from exc
                self._failed_over(i)
            delay = self._backoff_delay(attempt)
            if not persist or time.monotonic() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        assert error is not None
        raise error

    def _url(self, endpoint: str, api: str, path: str) -> str:
        """The URL of gateway call ``path`` (e.g. ``/kv/put``) under prefix ``api``."""
        return f"{endpoint}{api}{_V3BETA_PATHS.get(path, path) if api == _V3BETA else path}"

    def _use_api(self, api: str, endpoint: str) -> None:
        """Remember ``api`` as this registry's gateway prefix (logged when it changes)."""
        if api != self._api:
            _log.info("etcd gateway path prefix switched", endpoint=endpoint,
                      previous=self._api, now=api)
            self._api = api

    async def _auth_headers(self, session: aiohttp.ClientSession, endpoint: str,
                            bound_s: float) -> dict[str, str]:
        """The headers that authenticate a request (none without ``user``): the token,
        got first from ``endpoint``'s ``/auth/authenticate`` (within ``bound_s``
        seconds) when there is none yet or the last one was refused; none while etcd's
        authentication is not enabled (see :meth:`_new_token`).

        Raises:
            _EtcdError: etcd refused the user name or password (``authentication failed,
                invalid user ID or password``; the password never quoted), or the
                member's error.
            aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError: the request
                failed, or its answer has no token.
        """
        if self.options.user is None:
            return {}
        token = self._token
        if token is None:
            token = await self._authenticate(session, endpoint, bound_s)
        return {"Authorization": token} if token else {}

    async def _authenticate(self, session: aiohttp.ClientSession, endpoint: str,
                            bound_s: float) -> str:
        """A new token (kept as ``_token``), from one ``/auth/authenticate`` per event loop
        and member for every request that finds none: the first ones of a process, or all
        those etcd refused at once (the token expired under many watches, a member
        restarted), as the Go client refreshes its one token under a lock. Each
        authenticate is a bcrypt check of the password and a Raft proposal on etcd: one
        per request was a storm of them. It runs in a task of its own (``endpoint``'s,
        within ``bound_s`` seconds), so a waiter cancelled, or past its own ``bound_s``,
        leaves it to the others. Shared per member, not per loop: a request that gave up
        on a member whose authenticate hangs (partitioned, catching up after a restart)
        and went on to the next one would otherwise wait there for the hung one's and
        fail with its timeout (with two endpoints, every request while it hangs).

        etcd's refusal of the user name or password (``authentication failed``) stands
        for ``backoff_max_s`` seconds: a request meanwhile gets it at once, unasked (each
        ask is a bcrypt check on etcd, and every watch retrying on its own backoff sent
        one: a fleet with a stale password kept etcd's CPU busy); the first after asks
        again.

        Raises:
            as :meth:`_auth_headers`; ``CancelledError`` when :meth:`close` ended it.
        """
        key = (asyncio.get_running_loop(), endpoint)
        task = self._authenticating.get(key)
        if task is None or task.done():
            refused = self._auth_refused
            if refused is not None and time.monotonic() < refused[0]:
                held = refused[1]
                raise _EtcdError(held.endpoint, held.status, held.code,
                                 f"{held.message} (refused less than "
                                 f"{self.options.backoff_max_s:g} s ago: not asked again yet)")
            self._drop_closed_authenticates()
            task = key[0].create_task(self._new_token(session, endpoint, bound_s),
                                      name="meshkit-etcd-authenticate")
            self._authenticating[key] = task
            task.add_done_callback(functools.partial(self._authenticated, key))
        async with asyncio.timeout(bound_s):  # the waiter's own bound (a keep-alive's)
            return await asyncio.shield(task)

    def _drop_closed_authenticates(self) -> None:
        """Forget the authenticate tasks of event loops closed with them in flight (a
        loop closed without running its tasks to their end: they never end, and kept the
        loop referenced for as long as the registry lived). ``list()`` copies the keys at
        once: other threads add and remove theirs meanwhile."""
        for key in list(self._authenticating):
            if key[0].is_closed():
                self._authenticating.pop(key, None)

    def _authenticated(self, key: tuple[asyncio.AbstractEventLoop, str],
                       task: asyncio.Task[str]) -> None:
        """The authenticate task of ``key`` (loop, member) ended: forget it, its error
        taken (its waiters got it, or were all cancelled: no 'exception was never
        retrieved' at its collection)."""
        if self._authenticating.get(key) is task:
            del self._authenticating[key]
        if not task.cancelled():
            task.exception()

    async def _new_token(self, session: aiohttp.ClientSession, endpoint: str,
                         bound_s: float) -> str:
        """A token from ``/auth/authenticate``, or ``""`` (no token: requests go without
        one) when etcd's authentication is not enabled yet, as etcd's Go client and
        etcdctl go on then (clients are given their credentials before ``etcdctl auth
        enable``); once it is, etcd answers ``user name is empty`` and
        :meth:`_token_refused` has one got."""
        try:
            data = await self._post_call(session, endpoint, "/auth/authenticate", {
                "name": self.options.user, "password": self.options.password}, bound_s,
                headers={})
        except _EtcdError as exc:
            if "authentication failed" in exc.message:  # the name or password
                self._auth_refused = (time.monotonic() + self.options.backoff_max_s, exc)
            if "authentication is not enabled" not in exc.message:
                raise
            _log.warning("etcd's authentication is not enabled: requests go without a "
                         "token until it is", endpoint=endpoint,
                         user=_shown_user(self.options.user))
            token = ""
        else:
            token = str(data["token"])
        self._token = token
        return token

    def _shown(self, data: object) -> str:
        """An unexpected answer ``data`` as an error quotes it: 300 characters, the
        secrets redacted first (:func:`_redacted`)."""
        return _redacted(str(data), self._secrets())[:300]

    def _secrets(self, token: str | None = None) -> tuple[str | None, ...]:
        """What an error must not show (:func:`_redacted`): with ``user``, the password,
        the token in use and ``token`` (the one a request sent, maybe replaced since)."""
        if self.options.user is None:
            return ()
        # a name holding ':' may be etcdctl's 'name:password' taken whole (_shown_user)
        return (self.options.password, self._token, token,
                self.options.user.partition(":")[2])

    def _token_refused(self, error: _EtcdError, token: str | None) -> bool:
        """Whether ``error`` says the token sent (``token``) is no longer taken: etcd's
        ``invalid auth token`` (UNAUTHENTICATED: expired, ``--auth-token-ttl``, or a
        member restarted: simple tokens live in one member's memory), ``revision of auth
        store is old`` (users or roles changed since it was issued) or ``user name is
        empty`` (sent none); then it is dropped (unless another is already in use), so
        the next request authenticates again, as etcd's Go client does."""
        if self.options.user is None:
            return False
        refused = error.code == 16 or any(text in str(error) for text in (
            "invalid auth token", "revision of auth store is old", "user name is empty"))
        if refused and (self._token or None) == token:  # "": none sent, auth was off
            self._token = None
        return refused

    async def _post_one(self, session: aiohttp.ClientSession, endpoint: str, path: str,
                        body: Mapping[str, Any],
                        request_timeout_s: float | None = None, *,
                        sliced: bool = False) -> dict[str, Any]:
        """POST ``body`` to call ``path`` of one member and return its JSON answer, within
        ``request_timeout_s`` seconds (default: the option's); ``sliced``: as :meth:`_post`
        (the answer read within them, decoded after). With ``user``, authenticated (see
        :meth:`_auth_headers`): a token etcd no longer takes is replaced and the call
        made again, once.

        Raises:
            _EtcdError: as :meth:`_post_call`, or etcd refused the user name or password.
            aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError: as
                :meth:`_post_call`.
        """
        bound = self.options.request_timeout_s if request_timeout_s is None \
            else request_timeout_s
        for again in (False, True):
            headers = await self._auth_headers(session, endpoint, bound)
            try:
                return await self._post_call(session, endpoint, path, body, bound,
                                             headers=headers, sliced=sliced)
            except _EtcdError as exc:
                if again or not self._token_refused(exc, headers.get("Authorization")):
                    raise
        raise AssertionError("unreachable")  # the second attempt returns or raises

    async def _post_call(self, session: aiohttp.ClientSession, endpoint: str, path: str,
                         body: Mapping[str, Any], bound: float, *,
                         headers: Mapping[str, str], sliced: bool = False) -> dict[str, Any]:
        """POST ``body`` to call ``path`` of one member with ``headers`` and return its
        JSON answer, within ``bound`` seconds; ``sliced``: as :meth:`_post` (the answer
        read within them, decoded after).

        The status is checked before the body is parsed. A 404 that is not a gateway error
        (no gRPC code: the member does not serve the prefix, as etcd 3.3 does not serve
        ``/v3``, or 3.5 ``/v3beta``) is retried once at once under the other prefix, which
        is remembered for this registry's later calls and watches if it answers.

        A redirect is not followed (etcd sends none): it is a non-200 answer.

        Raises:
            _EtcdError: a non-200 answer (quoting the gateway's error or the body's text).
            aiohttp.ClientError, OSError, TimeoutError: the request failed.
            ValueError: a 200 answer that is not a JSON object.
        """
        api = self._api
        for tried in (api, _V3BETA if api == _V3 else _V3):
            # no redirect followed: etcd never sends one, and aiohttp would re-send a
            # 307/308's body (/auth/authenticate's password) to wherever it points
            async with asyncio.timeout(bound), session.post(
                    self._url(endpoint, tried, path), json=body, headers=headers,
                    allow_redirects=False) as resp:
                if resp.status != 200:
                    error = _EtcdError.of(endpoint, resp.status, await resp.text(),
                                          self._secrets(headers.get("Authorization")))
                    if error.no_route and tried == api:
                        continue
                    raise error
                if not sliced:
                    data = await resp.json(content_type=None)
                else:  # read here, decoded below (after the bound) in slices
                    raw = await resp.read()
            if sliced:  # (a prefix read in full: 2,000 values, about 0.8 MB)
                data = await decoded_in_slices(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"{endpoint}: answer to {path} is not a JSON object: "
                                 f"{self._shown(data)}")
            self._use_api(tried, endpoint)
            return data
        raise AssertionError("unreachable")  # the second prefix's answer returns or raises

    def _outcome(self, write: bool, error: str | None, service: str | None = None) -> None:
        """Record a read or write outcome; log the start, reminders and end of an outage.

        A read of a watch of ``service`` is that service's (:meth:`status` with it; its
        outages logged naming it); the registry's own read outcome fails only while every
        watched service's latest read failed (a prefix etcd's authentication refuses this
        user is no fault of the others'), its ``read_errors`` counting every failure."""
        if service is not None and not write:
            self._service_outcome(service, error)
            return
        tracker = self._tracker
        endpoints = list(self.options.endpoints)
        if error is None:
            duration = tracker.write_ok() if write else tracker.read_ok()
            if duration is not None:
                _log.info(_LOG_BACK[write], endpoints=endpoints, outage_s=round(duration, 3))
            return
        outage: Outage | None = tracker.write_failed(error) if write else tracker.read_failed(
            error)
        if outage == "started":
            _log.warning(_LOG_STARTED[write], endpoints=endpoints, error=error)
        elif outage == "reminder":
            _log.warning(_LOG_STILL[write], endpoints=endpoints, error=error,
                         failing_for_s=round(tracker.failing_for_s(write), 1))

    def _service_outcome(self, service: str, error: str | None) -> None:
        """:meth:`_outcome` of a read of a watch of ``service``."""
        reads = self._reads.record(service)
        if reads is None:  # its last watch ended meanwhile: the registry's only
            self._outcome(False, error)
            return
        endpoints = list(self.options.endpoints)
        tracker = self._tracker
        if error is None:
            registry_failing = tracker.read.ok is False
            duration = reads.read_ok()
            registry_back = tracker.read_ok()
            # its own outage's end is logged only when its start was (one covered by
            # the registry's start line ends with the registry's end line)
            logged = service in self._own_logged
            self._unlogged.discard(service)
            self._own_logged.discard(service)
            if registry_failing:  # the registry's outage ended: one line for all
                duration = registry_back
            elif not logged:
                duration = None
            if duration is not None:
                _log.info(_LOG_BACK[False], endpoints=endpoints, service=service,
                          outage_s=round(duration, 3))
            return
        # logged: the registry's outage while every watched service's reads fail (one
        # warning naming them all, and its reminders), else this service's own, from
        # its second failed read in a row: etcd going down fails every watch one after
        # the other, which would otherwise log one start per watched service first
        outage = reads.read_failed(error)
        failing_for_s = reads.failing_for_s(False)
        named: dict[str, object] = {}
        if self._reads.all_failing():
            outage = tracker.read_failed(error)
            failing_for_s = tracker.failing_for_s(False)
            if outage == "started":
                self._unlogged.clear()  # this line names them
                failing = self._reads.failing()
                if len(failing) > 1:
                    named = {"services": failing[:_NAMED_SERVICES],
                             "service_count": len(failing)}
            else:  # its own outage is part of the registry's, logged
                self._unlogged.discard(service)
        else:  # counted, the registry still reads (another service's watches do)
            tracker.read.errors += 1
            tracker.last_error = error
            if outage == "started":
                self._unlogged.add(service)
                outage = None
            elif service in self._unlogged:  # the second failure in a row: its own fault
                self._unlogged.discard(service)
                self._own_logged.add(service)
                outage = "started"
        if outage == "started":
            _log.warning(_LOG_STARTED[False], endpoints=endpoints, service=service,
                         error=error, **named)
        elif outage == "reminder":
            _log.warning(_LOG_STILL[False], endpoints=endpoints, service=service,
                         error=error, failing_for_s=round(failing_for_s, 1))

    def _watch_ended(self, service: str) -> None:
        """A watch of ``service`` ended: the last one takes its reads' record along; if it
        was failing and the other watched services read, the registry reads again (their
        streams report only when something comes)."""
        if self._reads.watch_ended(service, self._tracker):
            self._tracker.read_ok()
        if self._reads.get(service) is None:  # its last watch: no start to log now
            self._unlogged.discard(service)
            self._own_logged.discard(service)

    def _key(self, instance: Instance) -> bytes:
        return f"{self.options.prefix}{instance.service}/{instance.instance_id}".encode()

    def _seen_key(self, instance: Instance) -> bytes:
        """The key of ``instance``'s last-seen record:
        ``<prefix minus '/'>@last-seen/<service>/<instance_id>``."""
        return f"{self._seen_root}{instance.service}/{instance.instance_id}".encode()

    def _legacy_seen_key(self, instance: Instance) -> bytes:
        """Where earlier builds kept ``instance``'s last-seen record:
        ``<prefix>@last-seen/<service>/<instance_id>``."""
        return f"{self._legacy_seen_root}{instance.service}/{instance.instance_id}".encode()

    def _instance_at(self, key: bytes, value: bytes, *, record: bool = False) -> Instance:
        """The instance of the value at ``key`` (an instance's key, or with ``record`` a
        last-seen record's, either layout): :func:`_decode`, and the instance must be the
        one its key names. Another writer's copy of a value under another key (``etcdctl
        put`` of paymentd-1's value under ``orderd/orderd-9``, or of orderd-1's under
        ``orderd/orderd-9``) would list another service's instance in a watch of this
        one, or keep an instance listed after its owner deregistered it (its copy's key
        outlives the delete of its own): it is skipped, as a value of the wrong shape.

        Raises:
            ValueError, KeyError, TypeError, ConfigError: as :func:`_decode`.
            _KeyMismatchError: the value names another service or instance id.
        """
        instance = _decode(value)
        own = ((self._seen_key(instance), self._legacy_seen_key(instance)) if record
               else (self._key(instance),))
        if key not in own:
            raise _KeyMismatchError("the value names another service or instance id")
        return instance

    @staticmethod
    def _ident(instance: Instance) -> tuple[str, str]:
        """What this registry owns an instance by: ``(service, instance_id)``, as its key
        ``<prefix><service>/<instance_id>`` does."""
        return instance.service, instance.instance_id

    def _owned_names(self) -> list[str]:
        """The owned instances as ``<service>/<instance_id>``, sorted (for logs)."""
        return [f"{service}/{instance_id}" for service, instance_id in sorted(self._owned)]

    # -- registration --------------------------------------------------------------------
    async def _grant(self, ttl_s: float | None = None) -> int:
        """Grant a lease of ``ttl_s`` seconds (default ``ttl_s`` of the options)."""
        ttl = self.options.ttl_s if ttl_s is None else ttl_s
        data = await self._post("/lease/grant", {"TTL": str(int(ttl))})
        if data.get("error"):
            raise _EtcdError(self.options.endpoints[self._current], 200, -1,
                             _redacted(str(data["error"]), self._secrets()))
        return int(data["ID"])

    async def _put(self, instance: Instance, lease: int, key: bytes | None = None) -> None:
        """Put ``instance`` as JSON at ``key`` (default its own key) under ``lease``, and
        remember the key's revision (the answer's header revision: the put's own) for the
        owned-key check (-1 when the answer has none: the check then reads the key)."""
        key = self._key(instance) if key is None else key
        data = await self._post("/kv/put", {"key": _b64(key),
                                            "value": _b64(_encode(instance).encode()),
                                            "lease": str(lease)})
        self._revs[key] = int((data.get("header") or {}).get("revision") or -1)

    async def register(self, instance: Instance) -> None:
        """Put ``instance`` under this registry's lease and keep the lease alive.

        Grants the lease (``ttl_s``) on first use, then ``PUT <prefix><service>/<id>`` with
        the instance as JSON. What the registry owns is keyed by ``(service,
        instance_id)``, as etcd's keys are: registering the same service and id again
        replaces it (a restarted process, another address or metadata), in one put over
        the same key, so a failed put leaves the previous registration as it was (still
        listed and kept alive); the same ``instance_id`` registered for another service is
        another instance, and both stay registered, each kept alive by the lease, put again
        after a lease loss and deregistered on its own (two servers sharing a registry
        under one ``instance_id``, ``$POD_NAME`` say, keep both). A put left unanswered (a
        timeout, a cancel of the caller) that etcd applied anyway is deleted by the
        keep-alive (tried again each round until etcd takes the delete; the key goes with
        the lease in any case), unless that service and id are registered (already, or
        again meanwhile).

        Raises:
            RegistryError: no member could be reached or one refused (chained from the
                aiohttp error or etcd's answer), or the registry was closed meanwhile; the
                previous registration of the id, if any, is unchanged. Also when
                :meth:`close` ran while etcd answered (also from another thread's loop):
                no keep-alive is started then (the key goes with the lease, as
                :meth:`close` leaves every instance).
        """
        async with self._lease_lock:
            try:
                ident = self._ident(instance)
                registered = ident in self._owned
                # Put again: it must not be deleted as the key of an unanswered put, nor
                # its records as those of a failed deregistration.
                self._stale.difference_update((self._key(instance), self._seen_key(instance),
                                               self._legacy_seen_key(instance)))
                if self._lease is None:
                    self._lease = await self._grant()
                try:
                    try:
                        await self._put(instance, self._lease)
                    except _EtcdError as exc:
                        if exc.code != _NOT_FOUND:
                            raise
                        await self._regrant_locked()  # the lease expired meanwhile
                        await self._put(instance, self._lease)
                except BaseException as exc:
                    # no answer (cancelled, timed out, the member gone, or one that may
                    # come after the put was applied): etcd may have applied it, and its
                    # key, under the lease the keep-alive renews for the instances
                    # owned, would stay listed while this process lives; the keep-alive
                    # deletes it as a stale key (not the key of an instance registered:
                    # that one stays this registry's, its value checked). Not after a
                    # refusal.
                    refused = isinstance(exc, _EtcdError) and not exc.retry_elsewhere
                    if not refused and not registered:
                        self._stale.add(self._key(instance))
                    raise
            except _FOREIGN as exc:
                error = RegistryError(f"cannot register {instance.instance_id!r} with etcd "
                                      f"{list(self.options.endpoints)}: {describe(exc)}")
                self._outcome(True, str(error))
                raise error from exc
            self._owned[ident] = instance
            self._outcome(True, None)
            await self._record_seen_locked(instance)
        self._ensure_keeper(instance)

    def _ensure_keeper(self, instance: Instance) -> None:
        """Start a keep-alive task in the running loop unless one runs there already (after
        ``instance`` registered). Those of other loops still running (servers in other
        threads) run on: the lease is kept while any loop that registered runs, whichever
        of them ends first (one that ended, or whose loop was closed with it pending, is
        dropped).

        Raises:
            RegistryError: the registry is closed (:meth:`close` ran while etcd answered,
                maybe in another thread): no keep-alive is started, as it would run for
                good (close() has taken the keep-alives already; it marks the registry
                closed under the same ``_loops_mutex``).
        """
        loop = asyncio.get_running_loop()
        with self._loops_mutex:
            if self._race.closed:
                raise RegistryError(f"cannot keep {instance.instance_id!r} alive: etcd registry "
                                    f"for {self.options.endpoints!r} is closed")
            keepers = {other: task for other, task in self._keepers.items()
                       if not task.done() and not other.is_closed()}
            if loop not in keepers:
                keepers[loop] = loop.create_task(self._keep(), name="meshkit-etcd-keepalive")
            self._keepers = keepers

    def _is_record(self, key: bytes) -> bool:
        """Whether ``key`` is a last-seen record's (either layout), not an instance's."""
        return key.startswith((self._seen_root.encode(), self._legacy_seen_root.encode()))

    async def _delete_stale_locked(self) -> BaseException | None:
        """Delete the keys of unanswered puts of instances not registered, and the keys
        and last-seen records of failed deregistrations, records first (no reader finds
        the instance failing while it leaves) (``_lease_lock`` held); one that cannot be
        deleted now is tried again by the next keep-alive round. Never raises for etcd
        errors (logged): returns the error, or ``None`` when all are deleted."""
        for key in sorted(self._stale, key=lambda k: (not self._is_record(k), k)):
            try:
                await self._post("/kv/deleterange", {"key": _b64(key)})
            except _FOREIGN as exc:
                _log.warning("cannot delete the key of an unanswered registration (or a failed "
                             "deregistration) yet; "
                             "the keep-alive tries again", key=key.decode(),
                             error=describe(exc))
                return exc
            self._stale.discard(key)
            self._revs.pop(key, None)
        return None

    async def _regrant_locked(self) -> None:
        """Grant a new lease and put every owned instance under it (``_lease_lock`` held)."""
        self._lease = None
        # the unanswered puts' keys were under the lost lease: gone with it (the records
        # of failed deregistrations are under the last-seen lease: still to delete)
        self._stale = {key for key in self._stale if self._is_record(key)}
        lease = await self._grant()
        for instance in list(self._owned.values()):
            await self._put(instance, lease)
        self._lease = lease
        self._check_at = time.monotonic() + self.options.ttl_s  # every key was just put
        self._tracker.reopened += 1

    async def _keep_once(self) -> None:
        """One keep-alive of the lease; on lease loss a new lease and every instance again;
        when due (every ``ttl_s``), the owned-key check (:meth:`_check_keys_locked`).

        The keep-alive itself runs outside ``_lease_lock``, so that a slow registration
        (e.g. during a leader election) cannot hold it back past the lease's TTL.
        """
        lease = self._lease
        stale_error = None
        if self._stale:
            async with self._lease_lock:
                stale_error = await self._delete_stale_locked()
        if not self._owned:
            if stale_error is not None:  # the round's only write failed: status() says so
                raise stale_error
            return
        alive = False
        if lease is not None:
            # each member given a third of the TTL at most: one that hangs (a black-holed
            # path, a member stuck on a dead leader) is left for the next in time, before
            # the lease runs out, whatever request_timeout_s (>= ttl_s, it expired while
            # the keep-alive waited: the instances left every watch and came back)
            data = await self._post("/lease/keepalive", {"ID": str(lease)},
                                    request_timeout_s=self._keepalive_timeout_s)
            alive = int((data.get("result") or {}).get("TTL") or 0) > 0
        if not alive:
            async with self._lease_lock:
                # else registered again meanwhile, or nothing left to keep
                if self._lease == lease and self._owned:
                    _log.warning("etcd lease lost; registering the instances again",
                                 lease=lease, instances=self._owned_names())
                    await self._regrant_locked()
        elif time.monotonic() >= self._check_at:
            async with self._lease_lock:
                if self._lease == lease and self._owned:
                    await self._check_keys_locked()
            self._check_at = time.monotonic() + self.options.ttl_s
        await self._keep_seen_once()

    async def _check_keys_locked(self) -> None:
        """Put back the owned keys that are no longer this registry's (``_lease_lock``
        held): deleted, or overwritten by another writer, while the lease lives.

        One ``/kv/txn`` per ``_CHECK_CHUNK`` keys (one for up to 32 instances with their
        last-seen records): it compares each key's ``mod_revision`` with the revision of
        this registry's latest put of it, and only when one differs reads the keys (its
        failure branch, same request). A key that holds this registry's value under its
        lease (e.g. its revision was unknown) is kept as it is; an instance's key that does
        not is put back (logged, ``status().reopened`` + 1 each); a last-seen record that
        does not is written again by the keep-alive's record step (after the keys). Only
        instances owned now are checked, under the lock ``deregister`` takes, so a
        deregistered instance is never put back.

        Raises:
            _EtcdError, aiohttp.ClientError, OSError, TimeoutError, ValueError: the check
                or a put failed (the keep-alive retries the round).
        """
        lease = self._lease
        if lease is None:
            return
        owned: list[tuple[bytes, Instance, bool]] = []  # key, instance, is a record
        for ident, instance in sorted(self._owned.items()):
            owned.append((self._key(instance), instance, False))
            if (self._seen_ttl_s and self._seen_lease is not None
                    and ident not in self._unseen):
                owned.append((self._seen_key(instance), instance, True))
        for start in range(0, len(owned), _CHECK_CHUNK):
            chunk = owned[start:start + _CHECK_CHUNK]
            data = await self._post("/kv/txn", {
                "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(self._revs.get(key, -1))}
                            for key, _, _ in chunk],
                "failure": [{"request_range": {"key": _b64(key)}} for key, _, _ in chunk]})
            if data.get("succeeded"):
                continue
            responses: list[dict[str, Any]] = list(data.get("responses") or ())
            if len(responses) != len(chunk):
                raise ValueError(f"a txn of {len(chunk)} ranges answered {self._shown(data)}")
            for (key, instance, record), response in zip(chunk, responses, strict=True):
                kvs = (response.get("response_range") or {}).get("kvs") or ()
                kv: dict[str, Any] | None = kvs[0] if kvs else None
                ours = self._seen_lease if record else lease
                if kv is not None and int(kv.get("lease") or 0) == ours and _unb64(
                        kv.get("value", "")) == _encode(instance).encode():
                    self._revs[key] = int(kv.get("mod_revision") or -1)  # ours as it is
                    continue
                fields = {"key": key.decode(), "service": instance.service,
                          "instance_id": instance.instance_id,
                          "deleted": kv is None,
                          "other_lease": None if kv is None else int(kv.get("lease") or 0)}
                if record:
                    _log.warning("etcd last-seen record of a registered instance was lost; "
                                 "writing it again", **fields)
                    self._unseen.add(self._ident(instance))
                    continue
                _log.warning("etcd key of a registered instance was lost; putting it back",
                             **fields)
                await self._put(instance, lease)
                self._tracker.reopened += 1

    # -- last-seen records (failing()) -----------------------------------------------------
    async def _record_seen_locked(self, instance: Instance) -> None:
        """Write ``instance``'s last-seen record (``_lease_lock`` held), granting the
        last-seen lease on first use. Never raises for etcd errors: the registration
        has succeeded; the keep-alive writes the record once etcd takes it (logged)."""
        if not self._seen_ttl_s:
            return
        self._unseen.add(self._ident(instance))
        try:
            await self._put_unseen_locked()
        except _FOREIGN as exc:
            _log.warning("cannot write an instance's last-seen record yet; the keep-alive "
                         "tries again", service=instance.service,
                         instance_id=instance.instance_id,
                         error=describe(exc))

    async def _put_unseen_locked(self) -> None:
        """Put the last-seen record of every owned instance still without one
        (``_lease_lock`` held), under the last-seen lease, granted anew when there is
        none or etcd no longer knows it (then every owned instance's record is put).

        Raises:
            _EtcdError, aiohttp.ClientError, OSError, TimeoutError, ValueError: a grant or
                put failed; the records not written yet stay due.
        """
        for regrant in (False, True):
            if regrant or self._seen_lease is None:
                self._seen_lease = None
                self._seen_lease = await self._grant(self._seen_ttl_s)
                self._seen_renew_at = time.monotonic() + self._seen_period_s
                if regrant:
                    self._unseen = set(self._owned)
            try:
                for ident in sorted(self._unseen):
                    instance = self._owned.get(ident)
                    if instance is not None:
                        await self._put(instance, self._seen_lease,
                                        self._seen_key(instance))
                    self._unseen.discard(ident)
                return
            except _EtcdError as exc:
                if exc.code != _NOT_FOUND or regrant:
                    raise

    async def _keep_seen_once(self) -> None:
        """Renew the last-seen lease when due (every ``last_seen_ttl_s / 10``, at the
        keep-alive's pace at most) and put the records still due; a lease found lost
        (``TTL`` 0) is granted anew with every record."""
        if not self._seen_ttl_s or not self._owned:
            return
        seen = self._seen_lease
        if seen is not None and time.monotonic() >= self._seen_renew_at:
            data = await self._post("/lease/keepalive", {"ID": str(seen)})
            if int((data.get("result") or {}).get("TTL") or 0) > 0:
                self._seen_renew_at = time.monotonic() + self._seen_period_s
            else:
                async with self._lease_lock:
                    if self._seen_lease == seen and self._owned:
                        _log.warning("etcd last-seen lease lost; writing the records again",
                                     lease=seen, instances=self._owned_names())
                        self._seen_lease = None
                        self._unseen = set(self._owned)
        if self._unseen or self._seen_lease is None:
            async with self._lease_lock:
                if self._owned:
                    await self._put_unseen_locked()

    async def _keep(self) -> None:
        """The keep-alive loop of one event loop; ends when cancelled (close, or its loop
        ending), or when a round finds the registry closed (another thread's close(),
        whose cancel has not reached this loop yet). A round another loop's keeper did
        less than half an interval ago is skipped (with several loops, about one round per
        interval between them)."""
        interval = self.options.keepalive_interval_s
        assert interval is not None
        delay, failures = interval, 0
        while True:
            await asyncio.sleep(delay)
            if not failures and time.monotonic() - self._kept_at < interval / 2:
                continue
            try:
                await self._keep_once()
            except RegistryError:
                if self._race.closed:  # "... is closed": close() ran, nothing to keep
                    return
                raise
            except _FOREIGN as exc:
                failures += 1
                delay = min(interval, self._backoff_delay(failures))
                self._outcome(True, f"keep-alive: {describe(exc)}")
                continue
            failures, delay = 0, interval
            self._kept_at = time.monotonic()
            self._outcome(True, None)

    async def deregister(self, instance: Instance) -> None:
        """Delete ``instance``'s key at once; unknown instances are ignored.

        The registration deleted is that of ``instance.service`` and ``instance_id`` (its
        key ``<prefix><service>/<id>`` and last-seen record); the same id registered for
        another service stays registered and kept alive. When it was the last instance of
        this registry the lease is revoked too. If a delete fails (etcd unreachable while a
        server drains) the instance is withdrawn all the same, as the Consul and local
        registries stop keeping an instance alive whatever comes of the request: no longer
        kept alive nor put back after a lease loss, its key and records are deleted by the
        keep-alive once etcd answers (with no other instance registered, the lease is no
        longer renewed either, and they go with it within ``ttl_s``); it is never left a
        live key that nothing deletes while the lease lives on for other instances.
        (Before, it stayed registered until ``deregister`` was called again, which a
        drain never does: the stopped server stayed listed while the registry was open.)

        Raises:
            RegistryError: no member could be reached or one refused, or the registry was
                closed meanwhile; the instance is withdrawn as said above (a
                :meth:`register` of it puts it back).
        """
        async with self._lease_lock:
            ident = self._ident(instance)
            # the last-seen records first: no reader finds the instance failing (a record
            # without a key) while it leaves; also a record of the id in the earlier
            # layout, left by a process of such a build that died (read by failing())
            seen = [self._seen_key(instance)] if self._seen_ttl_s else []
            seen.append(self._legacy_seen_key(instance))
            try:
                for key in [*seen, self._key(instance)]:
                    await self._post("/kv/deleterange", {"key": _b64(key)})
                    self._revs.pop(key, None)
                self._owned.pop(ident, None)
                self._unseen.discard(ident)
                if not self._owned and self._seen_lease is not None:
                    # its records are deleted: revoking is tidiness, it would expire
                    seen_lease, self._seen_lease = self._seen_lease, None
                    with contextlib.suppress(*_FOREIGN):
                        await self._post("/lease/revoke", {"ID": str(seen_lease)},
                                         persist=False)
                if not self._owned and self._lease is not None:
                    lease, self._lease = self._lease, None
                    # the keys are deleted: the instance is deregistered whatever comes of
                    # the revoke (NOT_FOUND: it had expired; a failure: it expires)
                    with contextlib.suppress(*_FOREIGN):
                        await self._post("/lease/revoke", {"ID": str(lease)})
            except BaseException as exc:
                if self._owned.pop(ident, None) is not None:
                    # withdrawn all the same, also when cancelled (a drain's bound on the
                    # deregistration) and not called again: not kept alive nor put back;
                    # the keep-alive deletes what is left of it (the records first, see
                    # _delete_stale_locked)
                    self._unseen.discard(ident)
                    self._stale.update((*seen, self._key(instance)))
                if not isinstance(exc, _FOREIGN):
                    raise
                error = RegistryError(f"cannot deregister {instance.instance_id!r} from etcd "
                                      f"{list(self.options.endpoints)}: {describe(exc)}")
                self._outcome(True, str(error))
                raise error from exc
            self._outcome(True, None)

    # -- discovery -----------------------------------------------------------------------
    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        """Yield the instances of ``service`` now, then each time the set changes.

        Reads the prefix ``<prefix><service>/`` and follows a watch stream from the next
        revision (resumed after a disconnect, re-read after a compaction; see the module
        docstring). A failed read yields nothing: the last set stands, and before the first
        successful read there is none. A reader that asks late (busy with the last set
        during a burst of writes: a rolling deploy) gets the latest set, the changes
        queued meanwhile folded into it, not each set in between in turn. The iterator
        ends when the registry is closed.

        Args:
            service: the service name, e.g. ``"orderd"``.

        Raises:
            ConfigError: ``service`` is empty.
        """
        if not service:
            raise ConfigError(f"service must not be empty, got {service!r}")
        queue: asyncio.Queue[_Update] = asyncio.Queue()
        self._reads.watch_started(service)
        follower = asyncio.create_task(self._follow(service, queue),
                                       name=f"meshkit-etcd-watch-{service}")
        me = next(self._watch_ids)
        grace_s = self.options.fault_grace_s
        assert grace_s is not None
        last: frozenset[Instance] | None = None
        listed: frozenset[Instance] = frozenset()
        kept: frozenset[Instance] = frozenset()
        keep_until: float | None = None
        try:
            while not self._race.closed:
                timeout = None if keep_until is None else max(0.0, keep_until - time.monotonic())
                try:
                    async with asyncio.timeout(timeout):
                        update = await self._race.race(queue.get())
                except TimeoutError:
                    update = None
                if update is CLOSED:
                    return
                # what the follower queued meanwhile (a burst of writes, each its own
                # watch message, while the reader applied the last set) is folded into
                # one set: the reader gets the latest, not every stale set in turn
                state: Mapping[bytes, Instance] | None = None
                while update is not None:
                    if update.replaced and last is not None and grace_s > 0:
                        kept = last
                        keep_until = time.monotonic() + grace_s
                        _log.info("etcd store replaced: a watch keeps its last endpoints "
                                  "until their owners register again", service=service,
                                  grace_s=grace_s)
                    state = update.state
                    if kept:
                        kept = frozenset(i for i in kept
                                         if i.instance_id not in update.deleted)
                    update = queue.get_nowait() if not queue.empty() else None
                if state is not None:  # the follower's latest state, as a set once
                    listed = frozenset(state.values())
                if keep_until is not None and time.monotonic() >= keep_until:
                    kept, keep_until = frozenset(), None
                ids = {i.instance_id for i in listed}
                extra = frozenset(i for i in kept if i.instance_id not in ids)
                self._kept[service, me] = len(extra)
                current = listed | extra
                if not await same_in_slices(current, last):
                    last = current
                    yield current
        finally:
            self._kept.pop((service, me), None)
            follower.cancel()
            try:
                await asyncio.gather(follower, return_exceptions=True)
            finally:  # also when cancelled again meanwhile: else counted for ever
                self._watch_ended(service)

    def _log_unusable(self, key: bytes, exc: BaseException) -> None:
        """Warn that the value at ``key`` is skipped (a watch, :meth:`snapshot`,
        :meth:`failing`): once per key, then at most every ``_UNUSABLE_LOG_EVERY_S``
        seconds while it stays unusable (every full read of every watch, and each pass of
        ``meshkit prometheus-targets``, reads it again), as the Consul and local registries
        do. The key and the error's type only: the error's message may quote the value
        (meta may hold secrets)."""
        if not due_to_log(self._unusable_logged, key, _UNUSABLE_LOG_EVERY_S):
            return
        _log.warning("skipping unusable etcd entry", key=key.decode(errors="replace"),
                     error=type(exc).__name__)

    async def _range(self, prefix: bytes) -> tuple[dict[str, Any], dict[bytes, Instance],
                                                   dict[bytes, int]]:
        """The prefix read in full: the answer's header, the instances by key, and the
        ``mod_revision`` of every key (also one whose value is unusable, skipped, logged)."""
        data = await self._post("/kv/range", {"key": _b64(prefix),
                                              "range_end": _b64(_prefix_end(prefix))},
                                persist=False, sliced=True)
        state: dict[bytes, Instance] = {}
        mods: dict[bytes, int] = {}
        # decoded in slices, the loop let run between (2,000 keys: about 50 ms in one go)
        clock = time.perf_counter
        until = clock() + SLICE_S
        for kv in data.get("kvs") or ():
            key = _unb64(kv["key"])
            mods[key] = int(kv.get("mod_revision") or 0)
            try:
                state[key] = self._instance_at(key, _unb64(kv.get("value", "")))
            except (ConfigError, ValueError, KeyError, TypeError) as exc:
                self._log_unusable(key, exc)
            if clock() >= until:
                await asyncio.sleep(0)
                until = clock() + SLICE_S
        return data.get("header") or {}, state, mods

    async def _follow(self, service: str, queue: asyncio.Queue[_Update]) -> None:
        """Read ``service``'s prefix and follow its watch stream, forever; put each new
        state on ``queue``. Errors are recorded and retried with backoff (full jitter,
        ``backoff_base_s`` .. ``backoff_max_s``), counted from the first of a series: a
        stream left quiet, or one that broke after living longer than ``backoff_max_s``,
        starts the count afresh.

        The prefix is read in full at start, after a compaction, and after any broken
        stream (as Kubernetes' reflectors list again): the read's view replaces the
        state, whatever happened meanwhile, and the stream resumes from its revision. The
        store is taken for a replaced one (a restored or wiped data directory) when the
        read has another cluster id, a revision below the one applied, or a key whose
        ``mod_revision`` is at most the one applied but not the one known (in the same
        store such a key is unchanged since: a wiped store restarted with the same flags
        keeps its cluster id, and its revision may have passed the watch's by the time it
        reconnects); then no key it lacks counts as deleted (see :meth:`watch`). A stream
        left quiet is resumed from the revision applied once the prefix's keys say
        nothing was missed (:meth:`_unchanged`), else the prefix is read in full."""
        prefix = f"{self.options.prefix}{service}/".encode()
        cur = _Cursor(service=service)
        failures = 0
        while not self._race.closed:
            try:
                if cur.reread:
                    header, state, mods = await self._range(prefix)
                    rev = int(header.get("revision") or 0)
                    replaced = cur.cluster is not None and (
                        header.get("cluster_id") != cur.cluster or rev < cur.revision
                        or any(mod <= cur.revision and cur.mods.get(key) != mod
                               for key, mod in mods.items()))
                    deleted = frozenset() if replaced else frozenset(
                        i.instance_id for key, i in cur.state.items() if key not in state)
                    cur.state, cur.mods, cur.revision = state, mods, rev
                    cur.cluster, cur.reread = header.get("cluster_id"), False
                    self._outcome(False, None, service)
                    queue.put_nowait(_Update(state, deleted, replaced))
                    cur.resyncs += 1
                    if cur.resyncs > 2:  # re-read again and again: do not spin
                        await asyncio.sleep(self._backoff_delay(cur.resyncs - 2))
                await self._stream(prefix, cur, queue)
                if not cur.reread:  # left quiet: its connection may have died long ago
                    cur.reread = not await self._unchanged(prefix, cur)
            except _FOREIGN as exc:
                if not cur.reread:  # a broken stream: read in full (failures back off)
                    cur.reread, cur.resyncs = True, 0
                created_at, cur.created_at = cur.created_at, None
                if created_at is not None and (time.monotonic() - created_at
                                               >= self.options.backoff_max_s):
                    # a stream that worked for longer than the longest backoff broke:
                    # a first failure, not one more of a series (as a quiet leave)
                    failures = 0
                failures += 1
                self._outcome(False, f"watch of {service!r}: {describe(exc)}", service)
                await asyncio.sleep(self._backoff_delay(failures))
            else:
                failures, cur.created_at = 0, None

    async def _unchanged(self, prefix: bytes, cur: _Cursor) -> bool:
        """Whether the stream of a watch left quiet can be resumed from ``cur.revision + 1``
        (else the prefix is to be read in full): one keys-only range of the prefix (keys
        and ``mod_revision``, no values) says the store is the one ``cur`` was built from,
        and no change is missed. Not so when it has another cluster id, a revision below
        ``cur.revision``, a key whose ``mod_revision`` is at most ``cur.revision`` but not
        the one known (a wiped store restarted with the same flags whose revision passed
        the watch's while the stream's connection was dead without a sign), or lacks a
        known key (deleted meanwhile, or a replaced store: the read tells which). Keys
        changed after ``cur.revision`` come as the resumed stream's events; when there
        are none (the prefix exactly as known), ``cur.revision`` is moved on to the read's
        revision, so that a watch of a quiet service resumes from a recent revision, not
        from its last change, which a compaction (etcd's ``--auto-compaction``, run by
        every Kubernetes API server) would have removed: refused, the watch read its whole
        prefix again after each compaction, and backed off after three such reads. (A key
        put and deleted meanwhile is then never seen: the state is the same.) Cost: one
        keys-only ``/v3/kv/range`` per quiet resume.

        Raises:
            _EtcdError, aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError:
                the read failed (then the watch reads in full once it can).
            RegistryError: the registry was closed meanwhile.
        """
        data = await self._post("/kv/range", {"key": _b64(prefix),
                                              "range_end": _b64(_prefix_end(prefix)),
                                              "keys_only": True}, persist=False)
        header = data.get("header") or {}
        revision = int(header.get("revision") or 0)
        if header.get("cluster_id") != cur.cluster or revision < cur.revision:
            return False
        seen = 0
        newer = False  # a key changed after cur.revision: its events are still to come
        for kv in data.get("kvs") or ():
            mod = int(kv.get("mod_revision") or 0)
            known = cur.mods.get(_unb64(kv["key"]))
            if known is not None:
                seen += 1
                if mod != known:
                    if mod <= cur.revision:
                        return False
                    newer = True
            elif mod <= cur.revision:
                return False
            else:
                newer = True
        if seen != len(cur.mods):
            return False
        if not newer:
            # the prefix is as the watch knows it at this read's revision: resume from
            # there, not from its last change (however old: etcd compacts past it, and
            # the resume would be refused and the prefix read in full)
            cur.revision = revision
        return True

    async def _stream(self, prefix: bytes, cur: _Cursor, queue: asyncio.Queue[_Update]) -> None:
        """Follow one watch stream from ``cur.revision + 1``, applying its events to ``cur``
        (state and revision, as they come, so a broken stream resumes after the last one).

        Returns when the stream is to be followed anew: ``cur.reread`` is set then if a
        full read is due (compacted past the revision, or the member belongs to a replaced
        store), else it was quiet for ``ttl_s`` and is resumed once :meth:`_unchanged`
        finds the keys the watch knew (see :meth:`_leave_when_quiet`).

        Raises:
            _EtcdError, aiohttp.ClientError, OSError, ValueError: the stream failed.
            ConnectionResetError: the stream ended (the member went away).
        """
        session = self._get_session()
        index = self._current
        endpoint = self.options.endpoints[index % len(self.options.endpoints)]
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)),
                                   "start_revision": str(cur.revision + 1)}}
        api = self._api
        try:
            auth = await self._auth_headers(session, endpoint,
                                            self.options.request_timeout_s)
            async with asyncio.timeout(self.options.request_timeout_s):
                resp = await session.post(self._url(endpoint, api, "/watch"), json=body,
                                          headers={"Grpc-Metadata-hasleader": "true",
                                                   **auth},
                                          allow_redirects=False)  # as _post_call
        except (aiohttp.ClientError, OSError, TimeoutError):
            self._failed_over(index)
            raise
        token = auth.get("Authorization")
        async with resp:
            if resp.status != 200:
                try:  # a body that stalls after error headers must not hold the watch
                    async with asyncio.timeout(self.options.request_timeout_s):
                        text = await resp.text()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    self._failed_over(index)
                    raise
                error = _EtcdError.of(endpoint, resp.status, text, self._secrets(token))
                if self._token_refused(error, token):
                    pass  # the next attempt authenticates again
                elif error.no_route and api == self._api:
                    # the member serves the other prefix (etcd 3.3: /v3beta only); the
                    # retry uses it (a watch's full read through _post_one usually finds
                    # this out first)
                    self._use_api(_V3BETA if api == _V3 else _V3, endpoint)
                else:
                    self._failed_over(index)
                raise error
            heard = [time.monotonic()]  # when the stream last gave a message
            liveness = asyncio.ensure_future(self._leave_when_quiet(resp, heard))
            try:
                async for message in _messages(resp.content):
                    heard[0] = time.monotonic()
                    if "error" in message:
                        err = message["error"]
                        raise _EtcdError(endpoint, 200, int(err.get("grpc_code") or
                                                            err.get("code") or -1),
                                         _redacted(str(err.get("message") or err),
                                                   self._secrets(token)))
                    result = message.get("result") or {}
                    header = result.get("header") or {}
                    # canceled first: etcd refuses a watch in its "created" answer itself
                    # (created and canceled, a cancel_reason: permission denied, or any
                    # error of the watch's creation; v3rpc recvLoop), and then sends nothing
                    if result.get("created") and not result.get("canceled"):
                        if header.get("cluster_id") != cur.cluster or int(
                                header.get("revision") or 0) < cur.revision:
                            cur.reread = True  # another store answers: read it in full
                            return
                        cur.created_at = time.monotonic()
                        self._outcome(False, None, cur.service)
                        continue
                    if result.get("canceled"):
                        if int(result.get("compact_revision") or 0) > 0:
                            _log.info("etcd compacted past a watch's revision; re-reading",
                                      prefix=prefix.decode(), revision=cur.revision,
                                      compact_revision=int(result["compact_revision"]))
                            cur.reread = True
                            return
                        error = _EtcdError(endpoint, 200, -1, "watch canceled: " + _redacted(
                            str(result.get("cancel_reason") or "no reason given"),
                            self._secrets(token)))
                        self._token_refused(error, token)  # if so, got again next time
                        raise error
                    events = result.get("events") or ()
                    if not events:  # a progress notification
                        continue
                    deleted: set[str] = set()
                    state, mods = cur.state, cur.mods
                    for event in events:
                        kv = event["kv"]
                        key = _unb64(kv["key"])
                        if event.get("type") == "DELETE":
                            mods.pop(key, None)
                            gone = state.pop(key, None)
                            # the key is <prefix><service>/<instance_id>, and an id may
                            # hold '/' (a service name may not): all past the prefix
                            deleted.add(gone.instance_id if gone is not None
                                        else key.removeprefix(prefix).decode(
                                            errors="replace"))
                            continue
                        mods[key] = int(kv.get("mod_revision") or 0)
                        try:
                            state[key] = self._instance_at(key,
                                                           _unb64(kv.get("value", "")))
                        except (ConfigError, ValueError, KeyError, TypeError) as exc:
                            state.pop(key, None)
                            self._log_unusable(key, exc)
                    cur.revision = max([cur.revision, *(
                        int(e["kv"].get("mod_revision") or 0) for e in events)])
                    cur.resyncs = 0
                    self._outcome(False, None, cur.service)
                    queue.put_nowait(_Update(state, frozenset(deleted),
                                             False))
            except (aiohttp.ClientError, OSError):
                if not liveness.done():  # not left for being quiet: broken
                    self._failed_over(index)
                    raise
            finally:
                left = liveness.done()
                liveness.cancel()
                await asyncio.gather(liveness, return_exceptions=True)
        if left:  # quiet for ttl_s: the caller resumes it (its keys read first)
            return
        self._failed_over(index)
        raise ConnectionResetError("the watch stream ended")

    async def _leave_when_quiet(self, resp: aiohttp.ClientResponse,
                                heard: list[float]) -> None:
        """Close the watch stream ``resp`` once it has been quiet for ``ttl_s``
        (``heard[0]``: when it last gave a message, monotonic seconds), then return, so
        the watch resumes from its revision with a new request (after a keys-only read
        of the prefix, :meth:`_unchanged`): its stream's own connection may be dead
        without a sign (a dropped NAT or conntrack entry, a load balancer's idle timeout,
        a partition, a frozen member), which no request over another connection would
        tell. The requests fail over to the next member if this one does not answer
        within ``request_timeout_s``. Cost: one keys-only range and one watch request
        per ``ttl_s`` of quiet per watch; none while events flow."""
        quiet_s = float(self.options.ttl_s)
        while True:
            await asyncio.sleep(max(0.0, heard[0] + quiet_s - time.monotonic()))
            if time.monotonic() - heard[0] >= quiet_s:
                resp.close()  # its reader fails (aiohttp.ClientError) or ends
                return

    # -- lifecycle -----------------------------------------------------------------------
    async def services(self) -> frozenset[str]:
        """The names of the services with an entry now: a registered instance, or one whose
        owner died without deregistering (:meth:`failing`, a last-seen record not expired
        yet, also one an earlier build left under ``<prefix>@last-seen/``, never taken
        for a service ``@last-seen``). One ``/v3/kv/txn`` of two keys-only ranges, over
        ``prefix`` and over the records' prefix (one pass over the members).

        Raises:
            RegistryError: no member answered (chained).
        """
        ranges = (self.options.prefix.encode(), self._seen_root.encode())
        try:
            data = await self._post("/kv/txn", {"success": [
                {"request_range": {"key": _b64(p), "range_end": _b64(_prefix_end(p)),
                                   "keys_only": True}} for p in ranges]}, persist=False)
            responses: list[dict[str, Any]] = list(data.get("responses") or ())
            if len(responses) != 2:
                raise ValueError(f"a txn of two ranges answered {self._shown(data)}")
        except (_EtcdError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise RegistryError(f"etcd: cannot list services: {describe(exc)}") from exc
        names = set()
        for prefix, response in zip(ranges, responses, strict=True):
            for kv in (response.get("response_range") or {}).get("kvs") or ():
                rest = _unb64(kv["key"])[len(prefix):].decode(errors="replace")
                # a record of the earlier layout: <prefix>@last-seen/<service>/<id>
                service, sep, _ = rest.removeprefix(_SEEN).partition("/")
                if sep and service:
                    names.add(service)
        return frozenset(names)

    async def failing(self, service: str) -> frozenset[Instance]:
        """Instances of ``service`` whose owner died (or lost etcd for longer than
        ``ttl_s``) without deregistering: a last-seen record and no key, so watches no
        longer list them; they stay here ``last_seen_ttl_s`` (default ``max(10 * ttl_s,
        300)``) after their owner's last renewal. A drained instance deregisters, which
        deletes its record, so it is never here (as :meth:`LocalRegistry.failing
        <meshkit.discovery.LocalRegistry.failing>`). One ``/v3/kv/txn`` of three ranges
        (the records, those an earlier build left under ``<prefix>@last-seen/``, the
        keys), so all are read at one revision. Always empty with ``last_seen_ttl_s=0``.

        Raises:
            ConfigError: ``service`` is empty.
            RegistryError: no member answered (chained).
        """
        if not service:
            raise ConfigError(f"service must not be empty, got {service!r}")
        if not self._seen_ttl_s:
            return frozenset()
        seen = f"{self._seen_root}{service}/".encode()
        legacy = f"{self._legacy_seen_root}{service}/".encode()
        live = f"{self.options.prefix}{service}/".encode()
        try:
            data = await self._post("/kv/txn", {"success": [
                {"request_range": {"key": _b64(seen), "range_end": _b64(_prefix_end(seen))}},
                {"request_range": {"key": _b64(legacy),
                                   "range_end": _b64(_prefix_end(legacy))}},
                {"request_range": {"key": _b64(live), "range_end": _b64(_prefix_end(live)),
                                   "keys_only": True}},
            ]}, persist=False)
            responses: list[dict[str, Any]] = list(data.get("responses") or ())
            if len(responses) != 3:
                raise ValueError(f"a txn of three ranges answered {self._shown(data)}")
            records, legacy_records, keys = (
                (r.get("response_range") or {}).get("kvs") or () for r in responses)
        except (_EtcdError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise RegistryError(f"etcd: cannot read the failing instances of {service!r}: "
                                f"{describe(exc)}") from exc
        return self._unlisted({_unb64(kv["key"]) for kv in keys},
                              [*records, *legacy_records])

    def _unlisted(self, listed: set[bytes], records: Iterable[Any]) -> frozenset[Instance]:
        """The instances of last-seen ``records`` (the gateway's kvs) whose key is not
        among the keys ``listed``: the failing ones. An unusable record is skipped,
        logged."""
        out = set()
        for kv in records:
            try:
                instance = self._instance_at(_unb64(kv["key"]),
                                             _unb64(kv.get("value", "")), record=True)
            except (ConfigError, ValueError, KeyError, TypeError) as exc:
                self._log_unusable(_unb64(kv["key"]), exc)
                continue
            if self._key(instance) not in listed:
                out.add(instance)
        return frozenset(out)

    async def snapshot(self, service: str) -> ServiceSnapshot:
        """The registered and the failing instances of ``service`` from one read: what a
        new :meth:`watch` would yield first (its read of ``<prefix><service>/``) and what
        :meth:`failing` gives, at one revision. One ``/v3/kv/txn`` of the service's keys
        and (unless ``last_seen_ttl_s=0``) its last-seen records in both places; an
        unusable entry is skipped, logged, as by those two.

        Raises:
            ConfigError: ``service`` is empty.
            RegistryError: no member answered (chained).
        """
        if not service:
            raise ConfigError(f"service must not be empty, got {service!r}")
        prefixes = [f"{self.options.prefix}{service}/".encode()]
        if self._seen_ttl_s:
            prefixes += [f"{self._seen_root}{service}/".encode(),
                         f"{self._legacy_seen_root}{service}/".encode()]
        try:
            data = await self._post("/kv/txn", {"success": [
                {"request_range": {"key": _b64(p), "range_end": _b64(_prefix_end(p))}}
                for p in prefixes]}, persist=False)
            responses: list[dict[str, Any]] = list(data.get("responses") or ())
            if len(responses) != len(prefixes):
                raise ValueError(f"a txn of {len(prefixes)} ranges answered {self._shown(data)}")
            keys, *records = ((r.get("response_range") or {}).get("kvs") or ()
                              for r in responses)
        except (_EtcdError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise RegistryError(f"etcd: cannot read the instances of {service!r}: "
                                f"{describe(exc)}") from exc
        listed: set[bytes] = set()
        live = set()
        for kv in keys:
            key = _unb64(kv["key"])
            listed.add(key)
            try:
                live.add(self._instance_at(key, _unb64(kv.get("value", ""))))
            except (ConfigError, ValueError, KeyError, TypeError) as exc:
                self._log_unusable(key, exc)
        return ServiceSnapshot(frozenset(live),
                               self._unlisted(listed, [kv for r in records for kv in r]))

    def status(self, service: str | None = None) -> RegistryStatus:
        """This registry's health as its own requests saw it (no I/O).

        Args:
            service: a service name, e.g. ``"orderd"``: ``readable``,
                ``failing_since_s`` (its reads' outage, or the writes') and, while it
                fails, ``last_error`` say how that service's watches read (``readable``
                None while none runs, or none has read yet); default None: the
                registry's.

        ``readable``/``read_errors``: the watches' reads and streams; ``readable`` is
        False only while every watched service's latest read failed (one service's
        prefix that etcd's authentication refuses this user leaves the others
        readable: ask with ``service`` for one); ``writable``/
        ``write_errors``: register, deregister and keep-alives (with their owned-key
        checks); ``reopened``: lease losses after which every instance was registered
        again, plus each key found lost (deleted or overwritten while the lease lived) and
        put back; ``kept_endpoints``: instances the watches keep after a replaced store
        (see the module docstring); with ``service``, those its own watches keep.
        """
        status = dataclasses.replace(self._tracker.status(),
                                     kept_endpoints=kept_count(self._kept, service))
        if service is None:
            return status
        return self._reads.status(service, self._tracker, status)

    async def close(self) -> None:
        """Stop the keep-alive, end every watch and close the HTTP sessions. Idempotent; a
        close() cancelled while it waits still has every session closed (by its owner
        task, not waited for).

        Those of another event loop still running (another thread's) are ended and closed
        in that loop; the session's close there is waited for, up to ``request_timeout_s``
        seconds (a busy or stopped loop's is not waited for longer: its session is closed
        when it runs again, and a session of a loop closed meanwhile is let go of as
        below), so that the thread may stop and close its loop once this returns. The
        watches and keep-alives of those loops are not waited for. Those of a closed loop
        ended with it, unless it was closed with the session's owner task pending: then
        the session's connections are shut down and it is closed from here (its sockets'
        descriptors are closed only when collected, see :meth:`_abandon`).

        The threads that look up the members' host names (``meshkit-etcd-dns``, at most
        two) are shut down without waiting for a lookup in flight.

        Does not deregister or revoke: the instances go when the lease expires (``ttl_s``)
        and are :meth:`failing` until their last-seen records expire (``last_seen_ttl_s``),
        as an owner that died; deregister first to leave at once.
        """
        if self._race.closed:
            return
        with self._loops_mutex:
            # closed under the mutex _ensure_keeper takes: a register() answered meanwhile
            # either finds it closed (no keep-alive) or left its keep-alive here to cancel
            tasks = self._race.close()  # the running loop's; others' are cancelled in theirs
            keepers, self._keepers = self._keepers, {}
        tasks += [k for k in keepers.values() if not foreign_task(k)]
        self._drop_closed_authenticates()
        taken = False
        try:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with self._loops_mutex:
                sessions, self._sessions = self._sessions, {}
            taken = True
            await close_per_loop(sessions, self._abandon, self.options.request_timeout_s)
        finally:
            if not taken:
                # cancelled before it took the sessions (a shutdown's timeout): a second
                # close() returns at once, so each owner closes its session now
                with self._loops_mutex:
                    sessions, self._sessions = self._sessions, {}
                close_per_loop_nowait(sessions, self._abandon)
            # the lookup threads end once their lookup in flight, if any, returns (a
            # stuck DNS server's is not waited for); lookups not started are dropped
            self._dns.shutdown()


#: Every registry of the process: each starts afresh in a forked child
#: (:meth:`EtcdRegistry._forget_parent`).
_registries = reset_in_forked_child(EtcdRegistry)


#: A parent's keep-alive tasks and HTTP sessions, in a forked child: kept referenced,
#: never used nor closed. Closed or collected in the child, their transports would remove
#: their descriptors from the epoll instance the child's copy of the parent's loop shares
#: with the parent, silencing the parent's watch streams and pooled connections (and a
#: collected pending task or unclosed session is logged at ERROR). Their sockets'
#: descriptors name /dev/null in the child (_resolver.drop_inherited_sockets), which makes
#: a close there harmless to the parent should one come after all (an interpreter's exit).
_inherited: list[object] = []
