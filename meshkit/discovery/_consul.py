"""The Consul registry: a :class:`~meshkit.discovery.Registry` on a Consul agent's HTTP API.

Built on ``consul.aio`` (py-consul, the maintained fork of python-consul). Which Consul
endpoints are used, and the documentation each one follows:

==========================================  =================================================
call                                        Consul API doc (developer.hashicorp.com/consul/)
==========================================  =================================================
``PUT /v1/agent/service/register``          ``api-docs/agent/service#register-service``
``PUT /v1/agent/service/deregister/<id>``   ``api-docs/agent/service#deregister-service``
``GET /v1/agent/service/<id>``              ``api-docs/agent/service#get-service-configuration``
``PUT /v1/agent/check/pass/<check_id>``     ``api-docs/agent/check#ttl-check-pass``
``GET /v1/health/service/<name>?passing``   ``api-docs/health#list-service-instances-for-service``
blocking queries (``index``, ``wait``)      ``api-docs/features/blocking``
ACL token (``X-Consul-Token``)              ``api-docs/api-structure#authentication``
ACL-filtered reads (response headers)       ``api-docs/api-structure`` ("Results Filtered
                                            by ACLs", "Default ACL Policy")
``CONSUL_HTTP_*`` environment variables     ``commands#environment-variables``
==========================================  =================================================

Liveness: each instance is registered with a TTL check (the default, ``check="ttl"``) that a
heartbeat task passes every ``ttl_s / 3`` seconds, and/or a ``GRPC`` check that the agent runs
against ``grpc.health.v1.Health/Check`` of the instance (``check="grpc"``). Both carry
``DeregisterCriticalServiceAfter`` so the agent reaps instances of dead processes. If the agent
forgets an instance (it restarted without persisted state, or reaped it because its checks
stayed critical for ``DeregisterCriticalServiceAfter``), the next heartbeat gets 404 and the
instance is registered again with the same payload, less the checks' initial ``Status``
(see "Initial status"); meanwhile the watches keep it (``fault_grace_s``, see
:meth:`ConsulRegistry.watch`). A heartbeat is due ``ttl_s / 3`` after the last one that got
through, is bounded by that and by the time left before the TTL runs out, and is retried
after a short backoff when it fails, so one unanswered request does not let the TTL lapse.

Initial status: every check is registered with ``Status: "passing"``. A check registered
without one starts ``critical`` (Consul's "Initial Health Check Status": by default the
agent sets a new check critical so a service does not enter the pool before it is confirmed
healthy; the ``Status`` field of a check definition sets the initial status instead:
``api-docs/agent/check#register-check`` and the checks configuration reference,
``docs/services/configuration/checks-configuration-reference``), and the agent runs an
interval check (``GRPC``) for the first time only after a random stagger within its
``Interval`` (hashicorp/consul#954), so a new instance would be missing from every watch
(``?passing``) for up to ``check_interval_s``. Starting passing is honest here because
``serve()`` registers only once the server serves and its health says ``SERVING``; a TTL
check must be passed within ``ttl_s`` and the gRPC check's first run corrects a wrong start
within ``check_interval_s``. ``register()`` of an id already registered starts the checks
passing in the same way (the caller registers it again because it serves). For that the
CheckIDs are new to the agent at each ``register()``: ``service:<instance_id>:ttl:<tag>``,
``service:<instance_id>:grpc:<tag>`` and ``service:<instance_id>:grpc-server:<tag>`` (the
gRPC check of ``""``), ``<tag>`` 8 random hex digits drawn per call. The
agent ignores the ``Status`` of a check whose CheckID it already holds and keeps that check's
current status (Consul ``agent/agent.go``, ``addServiceInternal``: "Restore the fields from
the snapshot"), so with fixed ids an instance whose process crashed and came back with the
same id (serve()'s default id ``<service>-<hostname>-<pid>`` is the same again in a
container, pid 1) before the agent reaped it would stay critical, out of every watch, until
its first heartbeat or the agent's next run of its gRPC check. ``replace-existing-checks``
removes the previous registration's checks in the same request. An ``instance_id`` must
name one live process: two that register the same one with one agent take each other's
checks away, and each keeper, finding its check gone, registers its own again (a warning
each time). The keeper's
re-registration after the agent forgot the instance (HTTP 404) does **not**: it runs
whatever the instance's health says, and the agent may have reaped the instance precisely
because its gRPC check stayed critical (a server that says ``NOT_SERVING``), so claiming
passing would put an instance the agent has just found unhealthy back into every watch
until the check's next run, again after every reap cycle. Its checks carry no ``Status``
and start critical, Consul's default; a TTL check is then passed at once, since this
process running the keeper is exactly what that check attests, while a gRPC check stays
critical until the agent's own run of it passes.

Connections: the watches' long polls each hold one HTTP connection to the agent for up to
``wait_s``, so the HTTP client has no connection limit (aiohttp's default of 100 would let
100 watches starve register, deregister and the heartbeats) and no session-wide time limit
beyond meshkit's own bound on each request. The agent limits concurrent connections per
client address itself (``limits.http_max_conns_per_client``, default 200, agent
configuration docs): a process watching more services than that through one agent needs
it raised. An agent given by host name is looked up on the registry's own two threads
(``meshkit-consul-dns``, started at the first lookup, ended by ``close()``), not on the event
loop's default executor (aiohttp's default resolver, ``loop.getaddrinfo``), which an
application may fill with its own blocking work: the heartbeats' lookups after a reconnect
waited behind it until the TTL checks of a live, busy process went critical.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import ipaddress
import itertools
import json
import os
import random
import re
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast

import aiohttp
import consul
import consul.aio
import consul.base
import structlog
from consul.callback import CB

from meshkit._config import (
    check_bool,
    check_number,
    check_path,
    check_rng,
    check_secret_holder,
    shown_path,
)
from meshkit._fork import reset_in_forked_child
from meshkit._hosts import bare_host
from meshkit._tasks import cancel_and_wait
from meshkit._uris import hide_userinfo
from meshkit.discovery._options import (
    at_sign_may_be_userinfo,
    check_seconds,
    env_fields,
    env_value,
    options_with,
    parse_bool,
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

__all__ = ["ConsulOptions", "ConsulRegistry"]

_log = structlog.get_logger("meshkit.discovery.consul")
_T = TypeVar("_T")

CheckKind = Literal["grpc", "ttl", "both"]
_CHECK_KINDS: tuple[str, ...] = ("grpc", "ttl", "both")

#: Errors that come from talking to the agent. They never leave a public method as such:
#: register/deregister raise ``RegistryError(...) from exc`` (a copy of ``exc`` with the token
#: and credentials redacted when it quotes them); watches and heartbeats log them.
_FOREIGN: tuple[type[BaseException], ...] = (
    consul.ConsulException,
    aiohttp.ClientError,
    OSError,  # includes ssl.SSLError and ConnectionRefusedError
    TimeoutError,  # our asyncio.timeout around each request
    ValueError,  # a malformed X-Consul-Index or body
)
_RETRYABLE: tuple[type[BaseException], ...] = (*_FOREIGN, RegistryError)
#: Errors of one read's own (the agent answered, or not in time): an error status, a
#: malformed answer, a timeout. A failed connection (aiohttp's, OSError) is the agent's.
_SERVICE_READ_ERRORS: tuple[type[BaseException], ...] = (
    consul.ConsulException, TimeoutError, ValueError)

_FLOAT_FIELDS = (
    "check_interval_s",
    "ttl_s",
    "deregister_critical_after_s",
    "wait_s",
    "backoff_base_s",
    "backoff_max_s",
    "request_timeout_s",
    "watch_query_interval_s",
    "fault_grace_s",
)
_BOOL_FIELDS = ("verify", "grpc_use_tls")
_STR_FIELDS = ("scheme", "ca_file", "ca_path", "cert_file", "key_file", "check",
               "grpc_health_service", "tls_server_name")
_URI_FIELDS = frozenset(_FLOAT_FIELDS + _BOOL_FIELDS + _STR_FIELDS)
#: The URI's options whose value may hold an unencoded '@' (a file path): anywhere else
#: after '//' one is taken for user info (see :func:`at_sign_may_be_userinfo`).
_AT_FIELDS = frozenset({"ca_file", "ca_path", "cert_file", "key_file"})
_USERINFO_REFUSED = ("Consul URI must not carry user info or a token (an '@' after '//' is "
                     "taken for user info unless it is in the value of ca_file, ca_path, "
                     "cert_file or key_file; write any other as %40); set "
                     "CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE (and CONSUL_HTTP_AUTH for "
                     "basic authentication) instead")

#: The least values of the fields that pace a loop, seconds (the local registry's floors):
#: below them a heartbeat (``ttl_s / 3``), a gRPC-checked instance's lookup
#: (``check_interval_s``), a watch's rate limit or a retry runs without pause (a typo, a
#: unit slip: milliseconds), a core and the agent kept busy.
_FLOORS = (("ttl_s", 0.1), ("check_interval_s", 0.01), ("watch_query_interval_s", 0.01),
           ("backoff_max_s", 0.01))

#: At most this many services named in one log line (an outage of every watched service)
_NAMED_SERVICES = 20

#: Burst of a watch's token bucket, as in Consul's blocking-query guide ("Rate limit").
_WATCH_BURST = 2

#: The longest duration Consul parses, whole seconds (about 292 years): it reads ``TTL``,
#: ``Interval``, ``Timeout`` and ``DeregisterCriticalServiceAfter`` as Go durations, int64
#: nanoseconds ("The representation limits the largest representable duration to
#: approximately 290 years", Go ``time.Duration``); a longer one fails
#: ``time.ParseDuration`` and the agent refuses the registration (400).
_MAX_GO_DURATION_S = (2**63 - 1) // 10**9
#: The fields sent to the agent as Go durations (``wait_s`` has its own, lower cap).
_DURATION_FIELDS = ("check_interval_s", "ttl_s", "deregister_critical_after_s")


def _go_duration(seconds: float) -> str:
    """Seconds as a Go duration string Consul parses: ``30.0 -> "30s"``, ``0.25 -> "250ms"``."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
              "m": 60.0, "h": 3600.0}
#: A meshkit TTL check's ``Notes``, then its TTL (a Go duration): the agent's answers
#: (``/v1/health/service``) tell an interval check's ``Interval`` but no TTL.
_TTL_NOTES_PREFIX = "meshkit heartbeat, TTL "
#: The longest fault grace a kept instance's own checks may imply, seconds (see
#: :func:`_checks_grace_s`): an interval check of an hour (a batch job's) would otherwise keep
#: a dead endpoint for three hours after an agent's restart. A larger options default wins.
_MAX_CHECKS_GRACE_S = 600.0


@functools.lru_cache(maxsize=64)
def _go_seconds(text: str) -> float | None:
    """A Go duration string as the agent writes one (``"10s"``, ``"1m0s"``, ``"1.5s"``,
    ``"250ms"``) in seconds; None if it is none, or not above 0."""
    parts = _GO_DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    seconds = sum(float(n) * _GO_UNIT_S[u] for n, u in parts)
    return seconds if seconds > 0 else None


def _duration_s(value: object) -> float | None:
    """A duration of a check's ``Definition`` in seconds: a Go duration string
    (``Interval``, ``Timeout``) or a number of nanoseconds (``TTL``: a ``time.Duration``
    the agent's JSON writes as such, ``agent/structs`` ``HealthCheckDefinition``); None
    when absent, not above 0 or unreadable; a number beyond a Go duration's range reads
    as its largest (2**63 ns)."""
    kind = type(value)
    if kind is str:
        return _go_seconds(cast(str, value)) if len(cast(str, value)) <= 64 else None
    if (kind is int or kind is float) and cast(float, value) > 0:
        # at most a Go time.Duration's range: a bigger int (not an agent's) would raise
        # OverflowError when divided (ints and floats compare exactly)
        return min(cast(float, value), 2.0 ** 63) / 1e9
    return None


def _checks_grace_s(checks: object, service_id: str, default_s: float) -> float:
    """How long a watch keeps an instance the agent forgot (restarted without its state),
    from the checks the agent listed for it (an entry's ``Checks`` of
    ``/v1/health/service``): what its owner needs to have it passing again. A TTL check
    (``Definition.TTL`` of one registered through the catalog; an agent tells no TTL of
    those registered through it, so a meshkit owner writes it in the check's ``Notes``,
    ``"meshkit heartbeat, TTL 15s"``): its TTL (the owner's heartbeat, every third of it,
    finds the instance forgotten and passes the check at once); another process's TTL
    check says neither. An interval check (``GRPC``, ``HTTP``, ..., the check's own
    ``Interval`` as an agent writes it, else ``Definition.Interval``): three intervals (the
    owner's lookup, then the agent's first run of the check staggered within its
    interval, then the run). The longest of the instance's checks (the node's own, without
    ``ServiceID``, left out), at most :data:`_MAX_CHECKS_GRACE_S` unless ``default_s`` is
    longer; ``default_s`` (the options' default) for a check that says neither, and for an
    instance without checks of its own. Run for every entry of every answer of a watch
    (about 2 us an entry)."""
    if type(checks) is not list or not service_id:
        return default_s
    grace = -1.0
    for check in checks:
        if type(check) is not dict or check.get("ServiceID") != service_id:
            continue
        definition = check.get("Definition")
        if type(definition) is not dict:
            definition = {}
        raw = definition.get("TTL")
        if raw is None:  # an agent's answer: the TTL only in a meshkit check's Notes
            notes = check.get("Notes")
            if type(notes) is str and notes.startswith(_TTL_NOTES_PREFIX):
                raw = notes[len(_TTL_NOTES_PREFIX):]
        implied = _duration_s(raw) if raw is not None else None
        if implied is None:
            raw = definition.get("Interval") or check.get("Interval")
            interval = _duration_s(raw) if raw is not None else None
            implied = 3 * interval if interval is not None else default_s
        if implied > grace:
            grace = implied
    if grace < 0:
        return default_s
    return min(grace, max(default_s, _MAX_CHECKS_GRACE_S))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsulOptions:
    """Options of :class:`ConsulRegistry`. Times are seconds (floats).

    Args:
        addr: the agent's HTTP address like ``CONSUL_HTTP_ADDR``: ``host:port``
            or ``scheme://host:port`` (``http``/``https``), IPv6 as ``[::1]:8500``. Default
            ``"127.0.0.1:8500"``. A URL without a port (``https://consul.example``, as
            HCP Consul gives ``CONSUL_HTTP_ADDR``) means its scheme's port, 443 (80 for
            http), as in Consul's client; any other missing port 8500 (http) or 8501
            (https).
        scheme: ``"http"``, ``"https"`` or None (default: the scheme in ``addr``, else http).
            ``https`` from either place wins, as in Consul's own client.
        token: ACL token sent as ``X-Consul-Token`` (default None: anonymous). Never shown in
            ``repr``, error messages or logs.
        http_auth: HTTP basic authentication sent with every request, ``"username"`` or
            ``"username:password"`` (``CONSUL_HTTP_AUTH``, as Consul's CLI and api client
            read it: for an agent behind an authenticating proxy; the agent itself takes
            the ACL token). Default None: none. Never shown in ``repr``, error messages or
            logs.
        ca_file: PEM CA bundle that verifies the agent's certificate (``CONSUL_CACERT``): its
            CAs are then the only trusted roots (not added to the system's), as in Consul's
            own client.
        ca_path: a directory of PEM CA certificates that verify the agent's certificate
            (``CONSUL_CAPATH``), read as Consul's client reads it (every file under it,
            subdirectories too, each holding PEM certificates); its CAs are then the only
            trusted roots. ``ca_file`` wins when both are set, as in Consul's client.
        cert_file: PEM client certificate for agents that verify clients (``CONSUL_CLIENT_CERT``).
        key_file: PEM key of ``cert_file`` (``CONSUL_CLIENT_KEY``); requires ``cert_file``.
        verify: verify the agent's TLS certificate (default True; ``CONSUL_HTTP_SSL_VERIFY``).
            False still presents ``cert_file``, as Consul's client does.
        tls_server_name: the name the agent's certificate is checked against and sent as
            SNI, instead of the host of ``addr`` (``CONSUL_TLS_SERVER_NAME``): an agent
            reached by IP address whose certificate names it (``server.dc1.consul``).
            Default None: the host of ``addr``. A host name or IP address.
        check: liveness check of registered instances: ``"ttl"`` (default), ``"grpc"`` or
            ``"both"``. ``"ttl"`` is the default because it works whenever this process can
            reach the agent: the agent needs no network path to the service and the service
            need not serve ``grpc.health.v1``; it tracks process liveness (a hung event loop
            stops the heartbeat). ``"grpc"`` makes the agent call ``grpc.health.v1.Health/Check``
            on the instance every ``check_interval_s``: what a deployment whose agent can
            reach its services wants. ``"both"`` requires both to pass. Every check is
            registered passing, so an instance is discoverable as soon as ``register()``
            returns; the keeper's re-registration after the agent forgot or reaped the
            instance registers them without a status, critical until they pass (module
            docstring, "Initial status").
        grpc_use_tls: the agent's gRPC check uses TLS (Consul ``GRPCUseTLS``; default
            False). A server serving TLS needs it with ``check="grpc"`` or ``"both"``
            (``serve()`` refuses the pair otherwise: the agent's plaintext handshake
            fails on a TLS port, so the check could never pass); under mTLS the agent
            must also present a certificate the server trusts (its TLS ``cert_file``
            issued by the mesh CA) and pass the server's authorization, else keep
            ``check="ttl"``.
        grpc_health_service: the service name the gRPC check asks about (Consul ``GRPC`` is
            ``host:port/<this>``); None (default) means the instance's service name, ``""``
            the whole server. A second gRPC check asks about ``""`` besides (none with
            ``""`` here), so an instance whose whole server says ``NOT_SERVING`` is
            failing too, as a server's ``ServeOptions.follow_health`` withdraws it from
            the local and etcd registries.
        check_interval_s: how often the agent runs the gRPC check (Consul ``Interval``; its
            ``Timeout`` is ``min(check_interval_s, request_timeout_s)``), and,
            with ``check="grpc"``, how often we ask the agent whether it still knows the
            instance (``GET /v1/agent/service/<id>``). Default 10; at least 0.01.
        ttl_s: TTL of the TTL check (Consul ``TTL``); the heartbeat passes it every
            ``ttl_s / 3`` (counted from the last pass that got through), each pass bounded
            by ``min(request_timeout_s, ttl_s / 3)`` and by the time left before the TTL
            runs out, a failed one retried after a short backoff (full jitter from
            ``backoff_base_s``, at most ``ttl_s / 3``), so one lost or unanswered request
            does not let the check of a live instance go critical. Default 15; at least
            0.1.
        deregister_critical_after_s: the agent removes an instance whose checks stay critical
            this long (Consul ``DeregisterCriticalServiceAfter``; Consul's minimum is 60 and
            its reaper runs every 30 s). Default 60. With ``check="grpc"`` or ``"both"`` it
            must exceed ``check_interval_s``: an instance registered again after the agent
            lost it starts its gRPC check critical, and would be reaped before that check's
            first run.
        wait_s: longest wait of a blocking query (Consul ``wait``, sent as ``"30s"``; Consul
            caps it at 600 and adds up to ``wait_s / 16`` of jitter). Default 30.
        backoff_base_s: first retry delay cap of a failing watch (default 0.5). The n-th retry
            sleeps ``uniform(0, min(backoff_max_s, backoff_base_s * 2**(n-1)))`` (full jitter).
        backoff_max_s: cap of the retry delay (default 30; at least 0.01).
        request_timeout_s: time limit of each non-blocking request; blocking ones get
            ``wait_s * 17/16 + request_timeout_s``. Default 10.
        watch_query_interval_s: rate limit of each watch, as Consul's blocking-query guide
            asks of clients ("Rate limit", ``api-docs/features/blocking``): a token bucket of
            burst 2 that gains one token every ``watch_query_interval_s``. A query sent right
            after a blocking query's answer takes a token (waiting for one if none is
            left), so a quiet service's answer or an occasional change is followed at once,
            and an index that keeps moving (idempotent writes, a flapping check) is polled
            once per ``watch_query_interval_s`` instead of in a busy loop: the watch then sees
            changes up to this late. Queries after an error are spaced by the backoff
            instead. Default 1.0; at least 0.01.
        fault_grace_s: how long a watch keeps the instances of its last set that the agent
            no longer lists after it answered with an ``X-Consul-Index`` below one already
            seen (an agent restarted without its state, a restored snapshot), until their
            owners have registered again; 0 turns it off. Left to its default, each kept
            instance is kept as long as the checks the agent last listed for it imply
            (their owners are other processes, their options not this one's): a TTL
            check its TTL, which a meshkit owner writes in the check's ``Notes`` as the
            agent's answers tell none (the owner notices within a third of it and passes
            the check at once); an interval check such as a gRPC one three of its
            ``Interval`` (the owner notices at its next lookup, registers the instance
            again with its checks critical, and the agent runs the check first up to an
            ``Interval`` later, its stagger, the run taking up to its ``Timeout``); the longest of
            them, at most 600 s (unless the number below is longer). An instance whose
            checks say neither (another client's TTL check, an older agent's answer) is
            kept for the number this default reads as: ``ttl_s``, and with ``check="grpc"`` or
            ``"both"`` at least ``3 * check_interval_s`` (30 with the defaults). A value
            given applies to every instance. See :meth:`ConsulRegistry.watch`. The
            default reads as the number in effect (a float) and is held as
            :class:`~meshkit.discovery._types.Derived`, so
            ``dataclasses.replace(options, ttl_s=60)`` works it out again from the new
            ``ttl_s`` (it kept the old one's), and so do ``check`` and
            ``check_interval_s``; a value given is kept.

    ``check_interval_s``, ``ttl_s`` and ``deregister_critical_after_s`` are at most
    9223372036 s, about 292 years (Consul reads them as Go durations, int64 nanoseconds).

    Raises:
        ConfigError: a value is invalid or of the wrong type (``addr=None`` from an unset
            variable, a ``bytes`` token, a file that is no path, a number for
            ``grpc_health_service``); the message names the field and quotes the value
            (never the token, of which only the type is named, nor a key's PEM given for
            ``key_file``: :func:`meshkit._config.shown_path`).

    Follows https://developer.hashicorp.com/consul/commands#environment-variables for
    :meth:`from_env`.
    """

    addr: str = "127.0.0.1:8500"
    scheme: str | None = None
    token: str | None = field(default=None, repr=False)
    http_auth: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    ca_path: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    tls_server_name: str | None = None
    check: CheckKind = "ttl"
    grpc_use_tls: bool = False
    grpc_health_service: str | None = None
    check_interval_s: float = 10.0
    ttl_s: float = 15.0
    deregister_critical_after_s: float = 60.0
    wait_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 10.0
    watch_query_interval_s: float = 1.0
    fault_grace_s: float | None = None

    def __post_init__(self) -> None:
        check_bool("verify", self.verify)
        check_bool("grpc_use_tls", self.grpc_use_tls)
        if not isinstance(self.addr, str):
            # the type only: an address may carry user info (a password)
            raise ConfigError(f"addr must be a string (host:port or scheme://host:port), "
                              f"got a {type(self.addr).__name__}")
        split_address(self.addr, "addr")
        if self.scheme not in (None, "http", "https"):
            raise ConfigError(f"scheme must be 'http' or 'https', got {self.scheme!r}")
        if self.check not in _CHECK_KINDS:
            raise ConfigError(f"check must be one of {_CHECK_KINDS}, got {self.check!r}")
        if is_default(self.fault_grace_s):  # again after a replace(): see the docstring
            check_number("ttl_s", self.ttl_s, low_open=True)  # first: worked out from it
            grace = self.ttl_s
            if self.check in ("grpc", "both"):
                # an owner back after a restart is passing once its gRPC check first runs:
                # its lookup (or heartbeat), then Consul's stagger, then the run itself
                check_number("check_interval_s", self.check_interval_s, low_open=True)
                grace = max(grace, 3 * self.check_interval_s)
            object.__setattr__(self, "fault_grace_s", Derived(grace))
        check_seconds(self, _FLOAT_FIELDS, zero_ok=("fault_grace_s",))
        for name in _DURATION_FIELDS:
            check_number(name, getattr(self, name), low_open=True, high=_MAX_GO_DURATION_S)
        for name, floor in _FLOORS:
            if getattr(self, name) < floor:  # would heartbeat, poll or retry without pause
                raise ConfigError(f"{name} must be at least {floor} s, got "
                                  f"{getattr(self, name)!r}")
        if self.wait_s > 600:
            raise ConfigError(f"wait_s must be <= 600 (Consul's limit), got {self.wait_s!r}")
        if (self.check in ("grpc", "both")
                and self.check_interval_s >= self.deregister_critical_after_s):
            # an instance the keeper registers again starts its gRPC check critical (with
            # "both" too): the agent could reap it before that check's first run, again
            # and again
            raise ConfigError(
                f"check_interval_s must be < deregister_critical_after_s="
                f"{self.deregister_critical_after_s!r} with check={self.check!r}, got "
                f"{self.check_interval_s!r}")
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError(
                f"backoff_max_s must be >= backoff_base_s={self.backoff_base_s!r}, "
                f"got {self.backoff_max_s!r}"
            )
        if self.token is not None and not isinstance(self.token, str):
            # Not quoted: the value is a secret (bytes read from a file, say).
            raise ConfigError(f"token must be a string (decode bytes read from a file), "
                              f"got a {type(self.token).__name__}")
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            # Not quoted: the value is a secret.
            raise ConfigError("token must be a non-empty single-line string")
        if self.http_auth is not None and not isinstance(self.http_auth, str):
            # Not quoted: it may hold a password.
            raise ConfigError(f"http_auth must be a string, 'username' or "
                              f"'username:password' (CONSUL_HTTP_AUTH), got a "
                              f"{type(self.http_auth).__name__}")
        if self.http_auth is not None and (
                not self.http_auth.partition(":")[0]
                or any(c in self.http_auth for c in "\r\n")):
            # Not quoted: it may hold a password.
            raise ConfigError("http_auth must be 'username' or 'username:password' on one "
                              "line, with a user name (CONSUL_HTTP_AUTH); the value is not "
                              "shown")
        if self.tls_server_name is not None and not _is_host_name(self.tls_server_name):
            raise ConfigError(f"tls_server_name must be a host name or IP address, got "
                              f"{self.tls_server_name!r}")
        if self.grpc_health_service is not None and not isinstance(
                self.grpc_health_service, str):
            raise ConfigError(f"grpc_health_service must be a string (\"\": the whole "
                              f"server) or None, got {self.grpc_health_service!r}")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(check_path(name, path)):
                raise ConfigError(f"{name} must be an existing file, got {shown_path(path)}")
        if self.ca_path is not None and not os.path.isdir(check_path("ca_path", self.ca_path)):
            raise ConfigError(f"ca_path must be an existing directory, got "
                              f"{shown_path(self.ca_path)}")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError(f"key_file needs cert_file, got key_file="
                              f"{shown_path(self.key_file)} alone")

    # -- derived values ----------------------------------------------------------------
    @property
    def effective_scheme(self) -> str:
        """``"https"`` if ``scheme`` or the scheme in ``addr`` says so, else ``"http"``."""
        addr_scheme, _, _ = split_address(self.addr, "addr")
        return "https" if "https" in (self.scheme, addr_scheme) else "http"

    @property
    def host(self) -> str:
        """The agent's host name or IP (no brackets), e.g. ``"127.0.0.1"``."""
        return split_address(self.addr, "addr")[1]

    @property
    def port(self) -> int:
        """The agent's port: the one in ``addr``; else, for an ``addr`` written as a URL
        (``https://consul.example``), its scheme's own, 443 (https) or 80 (http), as
        Consul's client and any URL reader take it; else 8500 (http) or 8501 (https)."""
        addr_scheme, _, port = split_address(self.addr, "addr")
        if port is not None:
            return port
        if addr_scheme is not None:
            # Consul's api.NewClient keeps the URL's host as the request's host, so Go's
            # net/http dials the scheme's port (HCP Consul's addresses name no port)
            return 443 if self.effective_scheme == "https" else 80
        return 8501 if self.effective_scheme == "https" else 8500

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` of the agent, IPv6 hosts bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.effective_scheme}://{host}:{self.port}"

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ConsulOptions:
        """Options from Consul's CLI environment variables, then ``overrides``.

        Reads ``CONSUL_HTTP_ADDR`` (``addr``), ``CONSUL_HTTP_TOKEN_FILE`` and
        ``CONSUL_HTTP_TOKEN`` (``token``), ``CONSUL_HTTP_AUTH`` (``http_auth``),
        ``CONSUL_HTTP_SSL`` (true: ``scheme="https"``),
        ``CONSUL_CACERT`` (``ca_file``), ``CONSUL_CAPATH`` (``ca_path``),
        ``CONSUL_CLIENT_CERT`` (``cert_file``), ``CONSUL_CLIENT_KEY`` (``key_file``),
        ``CONSUL_TLS_SERVER_NAME`` (``tls_server_name``) and ``CONSUL_HTTP_SSL_VERIFY``
        (``verify``); empty variables count as unset.

        ``CONSUL_HTTP_TOKEN_FILE`` is the path of a file holding the ACL token (how Vault
        agent, Kubernetes secrets or Nomad templates hand one over); it is read here, once
        (a token rotated in the file later is not followed), UTF-8, stripped of surrounding
        white space. As in Consul's own client its token wins over ``CONSUL_HTTP_TOKEN``,
        which serves only when the file holds nothing; a ``token`` override wins over both
        and the file is then not read.

        Args:
            environ: the variables (default ``os.environ``).
            overrides: any :class:`ConsulOptions` field, winning over the environment.

        Raises:
            ConfigError: a variable or override is invalid (the value is quoted, never the
                token), or an override names no field; ``CONSUL_HTTP_TOKEN_FILE`` names a
                file that cannot be read, is not UTF-8 text, holds more than one line, or
                holds nothing while ``CONSUL_HTTP_TOKEN`` is unset (the path is quoted, never
                what the file holds, nor a value with no ``/`` that names no file: the
                token itself set there).
        """
        env = os.environ if environ is None else environ
        kwargs = env_fields(env, {
            "CONSUL_HTTP_ADDR": "addr",
            "CONSUL_HTTP_TOKEN": "token",
            "CONSUL_HTTP_AUTH": "http_auth",
            "CONSUL_CACERT": "ca_file",
            "CONSUL_CAPATH": "ca_path",
            "CONSUL_CLIENT_CERT": "cert_file",
            "CONSUL_CLIENT_KEY": "key_file",
            "CONSUL_TLS_SERVER_NAME": "tls_server_name",
        })
        token_file = env_value(env, "CONSUL_HTTP_TOKEN_FILE")
        if token_file is not None and "token" not in overrides:
            if (token := _read_token_file(token_file)) is not None:
                kwargs["token"] = token
            elif "token" not in kwargs:
                raise ConfigError(f"CONSUL_HTTP_TOKEN_FILE={token_file!r} holds no token")
        ssl = env_value(env, "CONSUL_HTTP_SSL")
        if ssl is not None and parse_bool("CONSUL_HTTP_SSL", ssl):
            kwargs["scheme"] = "https"
        if (verify := env_value(env, "CONSUL_HTTP_SSL_VERIFY")) is not None:
            kwargs["verify"] = parse_bool("CONSUL_HTTP_SSL_VERIFY", verify)
        return options_with(cls, kwargs, overrides)

    @classmethod
    def from_uri(cls, uri: str, environ: Mapping[str, str] | None = None) -> ConsulOptions:
        """Options from a registry URI, on top of :meth:`from_env`.

        Forms: ``consul://host:port`` (scheme from ``CONSUL_HTTP_SSL``, else http),
        ``consul+http://host:port``, ``consul+https://host:port``; ``consul://`` with no host
        keeps ``CONSUL_HTTP_ADDR`` (or the default), and so do ``consul+http://`` and
        ``consul+https://``. ``consul+https`` always means https, with or without a host and
        whatever ``CONSUL_HTTP_ADDR`` or a ``scheme`` parameter says (``https`` from either
        place wins, as in Consul's own client), so the ACL token never goes out in clear
        text. Query parameters set fields by name,
        e.g. ``consul://127.0.0.1:8500?check=grpc&ttl_s=10&verify=false``. The token comes
        only from ``CONSUL_HTTP_TOKEN_FILE`` or ``CONSUL_HTTP_TOKEN`` (:meth:`from_env`): a
        token or user info in the URI is refused so that it never ends up in logs.

        Args:
            uri: the registry URI.
            environ: environment for :meth:`from_env` (default ``os.environ``).

        Raises:
            ConfigError: bad scheme, host, port or option (the offending part is quoted);
                an ``@`` after ``//`` anywhere but in the value of ``ca_file``,
                ``ca_path``, ``cert_file`` or ``key_file`` (user info, refused unquoted;
                write any other as ``%40``); ``token`` or ``http_auth`` as a parameter.
        """
        parts, scheme = split_uri(uri, "consul", "Consul")
        # An '@' after "//", not just the netloc's: a password may hold an unencoded '/',
        # '?' or '#', where the parser ends the netloc (the rest, password's tail and all,
        # would be quoted as a path or reach the address check as host 'user:password');
        # one in a TLS file's path in the query is no user info
        if at_sign_may_be_userinfo(uri, _AT_FIELDS):
            raise ConfigError(_USERINFO_REFUSED)
        kwargs: dict[str, Any] = {}
        if parts.netloc and "@" in uri:
            try:  # 'tok:<pw>' of 'consul://tok:<pw>?ca_file=x@h': refused unquoted
                split_address(parts.netloc, "addr")
            except ConfigError:
                raise ConfigError(_USERINFO_REFUSED) from None
        if parts.netloc:
            # no port: the agent's (8500, 8501 for https), not an http(s) URL's (80, 443),
            # so the host alone (consul+https sets the scheme below; https from the
            # environment wins over consul+http, as it did over an http:// address)
            kwargs["addr"] = parts.netloc if scheme == "consul" or (
                split_address(parts.netloc, "addr")[2] is None) else (
                f"{scheme.split('+')[1]}://{parts.netloc}"
            )
        if parts.path not in ("", "/"):
            # shown as the URI is: 'consul:ops:<pw>@agent' (no '//') is all path
            raise ConfigError(f"Consul URI takes no path, got {hide_userinfo(parts.path)!r} (in "
                              f"{shown_uri(uri, _URI_FIELDS)!r})")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        if "token" in query:
            raise ConfigError("token is not accepted in a Consul URI; "
                              "set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE instead")
        # errors quote the URI, the value of a key that is no option masked (a token
        # under another name must not reach a log)
        kwargs.update(query_fields(query, floats=_FLOAT_FIELDS, bools=_BOOL_FIELDS,
                                   strs=_STR_FIELDS,
                                   where=f"Consul URI {shown_uri(uri, _URI_FIELDS)!r}"))
        if scheme == "consul+https":
            # TLS whatever supplies the address (this URI, CONSUL_HTTP_ADDR or the default):
            # without it the ACL token would go out in clear text.
            kwargs["scheme"] = "https"
        return cls.from_env(environ, **kwargs)


_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")


def _is_host_name(value: object) -> bool:
    """Whether ``value`` is a DNS host name or an IP address (``tls_server_name``)."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return _HOST_NAME.fullmatch(value) is not None
    return True


def _ca_path_files(path: str) -> list[str]:
    """The PEM text of every file under the directory ``path`` (``ca_path``,
    ``CONSUL_CAPATH``), subdirectories too, in name order, as Consul's client reads a CA
    path (``rootcerts.LoadCAPath``: every file must hold PEM certificates).

    Raises:
        OSError: a file cannot be read, or holds no PEM certificate (the path quoted), or
            there is none at all (not an ``ssl.SSLError``: its ``str()`` is the repr of
            its arguments' tuple, a message in brackets and quotes).
    """
    texts: list[str] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = os.path.join(root, name)
            with open(file, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise OSError(f"ca_path {path!r}: no PEM certificate in {file!r}")
            texts.append(text if text.endswith("\n") else text + "\n")
    if not texts:
        raise OSError(f"ca_path {path!r} holds no certificate file")
    return texts


def _check_path_id(instance_id: str) -> None:
    """Refuse an ``instance_id`` that the agent endpoints' paths cannot carry as written.

    Consul takes an ID as the rest of the path (``/v1/agent/service/deregister/<id>``,
    ``/v1/agent/check/pass/service:<id>:ttl:<tag>``), but the path is resolved on the way:
    yarl (aiohttp's URLs) removes ``.`` and ``..`` parts, and Consul's Go HTTP mux cleans
    the path (``..``, ``.``, ``//``) and redirects to the clean one. So ``x/../orderd-1``
    would deregister ``orderd-1``, another instance, and its heartbeats would pass another
    check (or get 404, the keeper registering it again each round). A trailing ``/`` and
    dots inside a part (``v1.2``, ``..x``) are kept as written.

    Raises:
        ConfigError: a ``/``-separated part is ``.`` or ``..``, or one but the last is
            empty (a leading ``/`` or ``//``); the id is quoted.
    """
    if "/" not in instance_id and instance_id not in (".", ".."):
        return  # the usual id: one part
    parts = instance_id.split("/")
    if any(p in (".", "..") for p in parts) or any(not p for p in parts[:-1]):
        raise ConfigError(
            f"instance_id {instance_id!r} cannot be used with Consul: a '/'-separated part "
            "is '.', '..' or empty, which the agent's URL paths resolve to another id")


def _basic_credentials(http_auth: str) -> str:
    """The base64 credentials of HTTP basic authentication for ``http_auth``
    (``"username[:password]"``, UTF-8), as Go's ``SetBasicAuth`` builds them."""
    pair = http_auth if ":" in http_auth else f"{http_auth}:"
    return base64.b64encode(pair.encode()).decode("ascii")


def _read_token_file(path: str) -> str | None:
    """The ACL token in the file at ``path`` (``CONSUL_HTTP_TOKEN_FILE``), stripped of
    surrounding white space; None when it holds nothing else.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text or holds more than one line;
            the message quotes the path, never what the file holds.
    """
    where = f"CONSUL_HTTP_TOKEN_FILE={shown_path(path, secret_file=True)}"
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where} cannot be read: {reason}") from None
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    if any(c in token for c in "\r\n"):
        raise ConfigError(f"{where} must hold one token on one line")
    return token or None


class _TokenBucket:
    """A token bucket (no I/O): ``burst`` tokens, one more every ``interval_s`` seconds.

    Args:
        interval_s: seconds per token, > 0.
        burst: most tokens held, >= 1; the bucket starts full.
        clock: monotonic seconds (default ``time.monotonic``); tests inject a fake one.
    """

    __slots__ = ("_burst", "_clock", "_interval_s", "_stamp", "_tokens")

    def __init__(self, interval_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def reserve(self) -> float:
        """Take a token; return the seconds to wait before using it (0.0: one was there).

        A token taken ahead of time is owed: the next ones wait for it too, so callers that
        each wait what they are told are spaced ``interval_s`` apart once the burst is spent.
        """
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) / self._interval_s)
        self._stamp = now
        self._tokens -= 1.0
        return max(0.0, -self._tokens * self._interval_s)


@dataclass(slots=True)
class _Registration:
    """What one instance's keep-alive task works from. ``register()`` of the same id
    updates ``instance``/``payload``/``ttl_check_id`` in place once the agent has accepted
    the new registration (whose checks have new CheckIDs: module docstring, "Initial
    status"); ``lock`` keeps that update and the keeper's re-registration (after the agent
    forgot the instance) from interleaving, so the older payload never lands last."""

    instance: Instance
    payload: dict[str, Any]
    ttl_check_id: str | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    #: the service the agent held this id for when the keeper last found the instance
    #: forgotten (it is left to that one: warned once), else None
    yielded_to: str | None = None


def _without_initial_status(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with no ``Status`` in its checks, so that each starts ``critical``.

    Consul's checks configuration reference ("Initial health check status"): "By default,
    when checks are registered against a Consul agent, the state is set immediately to
    critical. This is useful to prevent services from being registered as passing and
    entering the service pool before they are confirmed to be healthy." Used by the keeper's
    re-registration after a 404 (module docstring, "Initial status").
    """
    checks = [{k: v for k, v in check.items() if k != "Status"}
              for check in payload.get("Checks", ())]
    return {**payload, "Checks": checks}


def _raw_response(response: Any) -> Any:
    """py-consul callback that hands back ``Response(code, headers, body)`` untouched."""
    return response


#: Set ``true`` on a read whose answer lost entries the request's token may not read
#: (``api-docs/api-structure``, "Results Filtered by ACLs"); Consul never sets it for the
#: anonymous token (no token sent), so as not to tell an unauthenticated client that there
#: is something it cannot see.
_FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"
#: The agent's ``acl.default_policy`` (``allow``/``deny``), on every answer of Consul 1.9
#: and later: also what the anonymous token may do unless given policies of its own.
_DEFAULT_POLICY_HEADER = "X-Consul-Default-ACL-Policy"
#: Seconds between two warnings about the same unusable entry (every answer reads it again).
_UNUSABLE_LOG_EVERY_S = 60.0

#: Least seconds between two warnings about ACLs hiding the entries of one read.
_ACL_WARN_EVERY_S = 600.0
# the key of the "no X-Consul-Index" warning in ConsulRegistry._acl_warned (no read's name)
_NO_INDEX = "\x00no X-Consul-Index"
#: The shortest bound of a TTL pass sent shortly before the TTL runs out, seconds.
_PASS_FLOOR_S = 0.1


def _failing(entry: Any) -> bool:
    """Whether a ``/v1/health/service/<service>`` entry has a check that is not passing
    (the service's or its node's): one ``?passing`` leaves out."""
    return any(c.get("Status") != "passing" for c in entry.get("Checks") or ())


@dataclass(frozen=True, slots=True)
class _Listing:
    """A listing read's answer: its ``X-Consul-Index`` (None: the answer had none), body,
    and what its headers say of ACLs (``filtered``: entries removed; ``default_deny``: the
    agent denies by default)."""

    index: int | None
    body: Any
    filtered: bool
    default_deny: bool


def _listing(response: Any) -> _Listing:
    """py-consul callback of a listing read: errors as py-consul's own ``CB.json``
    (``ACLPermissionDenied`` for 403, ``ConsulException`` for 5xx), ``ValueError`` for an
    ``X-Consul-Index`` that is no integer, and the ACL headers, which py-consul's own calls
    drop. A missing ``X-Consul-Index`` (a proxy between meshkit and the agent that drops
    it) is ``index=None``, not an error: Consul's Go client (``api.parseQueryMeta``) reads
    it as index 0 and goes on; py-consul's ``CB.json(index=True)`` failed every such read.
    A 404 is an error (``consul.NotFound``, quoting the status): py-consul's ``CB.json``
    reads it as "nothing" (made for a missing KV key), which would make a path a proxy
    does not route a listing of no instance, where the agent answers 200 with ``[]``
    for a service it does not know."""
    if response.code == 404:
        # whole: ConsulRegistry._describe cuts it once the ACL token is redacted
        raise consul.NotFound(f"HTTP 404: {str(response.body).strip()}")
    body = CB.json()(response)
    headers = response.headers
    raw_index = headers.get("X-Consul-Index")
    return _Listing(
        index=None if raw_index is None else int(raw_index), body=body,
        filtered=str(headers.get(_FILTERED_HEADER, "")).lower() == "true",
        default_deny=str(headers.get(_DEFAULT_POLICY_HEADER, "")).lower() == "deny")


def _undecoded_listing(response: Any) -> _Listing:
    """:func:`_listing` with the body left as the text the agent sent (a watch's answer:
    decoded by :func:`~meshkit.discovery._shared.decoded_in_slices`, not in one go in
    this callback)."""
    if response.code == 404:
        # whole: ConsulRegistry._describe cuts it once the ACL token is redacted
        raise consul.NotFound(f"HTTP 404: {str(response.body).strip()}")
    CB._status(response)
    headers = response.headers
    raw_index = headers.get("X-Consul-Index")
    return _Listing(
        index=None if raw_index is None else int(raw_index), body=response.body,
        filtered=str(headers.get(_FILTERED_HEADER, "")).lower() == "true",
        default_deny=str(headers.get(_DEFAULT_POLICY_HEADER, "")).lower() == "deny")


def _load_client_cert(tls: ssl.SSLContext, cert: tuple[str, str] | str) -> None:
    """Load the client certificate ``cert`` (a PEM path holding the key too, or a
    ``(cert, key)`` pair of paths) into ``tls``, never asking for a pass phrase.

    Without a ``password`` OpenSSL asks ``Enter PEM pass phrase:`` for an encrypted key on
    the process's terminal (stdin without one) and waits there, in the event loop; Consul's
    client cannot load such a key either (Go's ``tls.LoadX509KeyPair``).

    Raises:
        OSError: the key is encrypted (its file named) or a file cannot be read;
            ssl.SSLError: a file holds no usable certificate or key.
    """
    cert_file, key_file = cert if isinstance(cert, tuple) else (cert, None)
    shown = shown_path(key_file if key_file is not None else cert_file)

    def refuse() -> bytes:
        raise OSError(f"the client key {shown} is encrypted (protected by a pass phrase): "
                      "give key_file (CONSUL_CLIENT_KEY) an unencrypted key, as Consul's "
                      "client needs")

    tls.load_cert_chain(cert_file, key_file, password=refuse)


class _HTTPClient(consul.aio.HTTPClient):  # type: ignore[misc]  # py-consul is untyped
    """py-consul's aio HTTP client (its requests, callbacks and ``close()``) on an aiohttp
    session of meshkit's making. py-consul's own ``__init__`` builds a connector with
    aiohttp's default resolver, which looks the agent's name up in the event loop's
    default executor, and takes neither a connector nor a resolver; so only the base
    client's ``__init__`` runs here (host, port, scheme, ``verify``, ``cert``: the
    ``uri()`` of every request) and the session is built as py-consul's would be (the
    same TLS context, no connection limit, a session-wide time limit), with ``resolver``.
    The TLS context is built for an ``https`` agent only (``ssl.create_default_context()``
    loads the system CAs: tens of milliseconds of the event loop, once per loop).

    Args:
        host: the agent's host name or IP address, IPv6 bracketed (py-consul joins
            ``host:port``).
        port: the agent's port.
        scheme: ``"http"`` or ``"https"``.
        verify: verify the agent's certificate: True (system CAs), a CA bundle's path
            (its CAs the only trusted roots, as in Consul's own client), or False (no
            verification); unused for ``"http"``.
        cert: client certificate: a PEM path, a ``(cert, key)`` pair of paths, or None;
            unused for ``"http"``.
        resolver: the connector's name lookups (the registry's own threads).
        timeout_s: aiohttp's time limit of every request (``ClientTimeout(total=)``).
        http_auth: ``"username[:password]"`` sent as HTTP basic authentication with every
            request (UTF-8, as Go's ``SetBasicAuth``), or None.
        server_hostname: the name the agent's certificate is checked against (and SNI)
            instead of ``host``, or None; unused for ``"http"``.
        ca_path: a directory of PEM CA certificates, the only trusted roots when
            ``verify`` is True (:func:`_ca_path_files`), or None; unused for ``"http"``.

    Raises:
        OSError, ssl.SSLError: ``cert`` or ``verify``'s bundle cannot be loaded
            (``"https"``).
    """

    def __init__(self, host: str, port: int, scheme: str, *, verify: bool | str,
                 cert: tuple[str, str] | str | None, resolver: OwnThreadsResolver,
                 timeout_s: float, http_auth: str | None = None,
                 server_hostname: str | None = None, ca_path: str | None = None) -> None:
        consul.base.HTTPClient.__init__(self, host, port, scheme, verify, cert)
        self.loop = None  # what py-consul's own __init__ sets without a loop argument
        self._request_kwargs: dict[str, Any] = (
            {"server_hostname": server_hostname} if scheme == "https" and server_hostname
            else {})
        # http: no TLS, aiohttp's default (its context, built at its import, unused)
        tls: ssl.SSLContext | bool = True
        if scheme == "https" and not verify and not cert:
            tls = False  # verify=False: TLS without verification
        elif scheme == "https" and not verify:
            # no verification, the client certificate still presented (Consul's client:
            # InsecureSkipVerify beside Certificates)
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
            if cert:
                _load_client_cert(tls, cert)
        elif scheme == "https":
            # given to aiohttp as `ssl`, not deprecated args. A CA bundle is the only
            # trusted root, as in Consul's client (api.SetupTLSConfig: RootCAs holds the
            # CA file alone): added to the system's roots (py-consul's way), any public
            # CA's certificate for the agent's name passed for the pinned private CA's.
            tls = ssl.create_default_context(
                cafile=verify if isinstance(verify, str) else None,
                # a CA directory as Consul reads it (not OpenSSL's hashed capath); its
                # CAs alone, as with a CA file
                cadata=None if isinstance(verify, str) or ca_path is None
                else "".join(_ca_path_files(ca_path)))
            if cert:
                _load_client_cert(tls, cert)
        # the attribute py-consul's requests and close() use
        self._session = aiohttp.ClientSession(
            # No connection limit (limit=0): each watch holds a connection for its long
            # poll; with aiohttp's default (100) 100 watches would starve every other
            # request. Host names are looked up on the registry's own threads.
            connector=aiohttp.TCPConnector(ssl=tls, limit=0, resolver=resolver),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            # session-wide, built here as Go's SetBasicAuth does (base64 of
            # "username:password"): aiohttp deprecates its auth argument and BasicAuth
            headers=None if http_auth is None else {
                "Authorization": "Basic " + _basic_credentials(http_auth)},
        )


    async def _request(self, callback: Callable[[Any], Any], method: str, uri: str,
                       headers: dict[str, str] | None, data: Any = None,
                       connections_timeout: float | None = None, raw: bool = False) -> Any:
        """py-consul's ``_request`` (every call's), with ``server_hostname`` when one is
        set (aiohttp takes it per request only); py-consul's own otherwise."""
        if not self._request_kwargs:
            return await super()._request(callback, method, uri, headers, data=data,
                                          connections_timeout=connections_timeout, raw=raw)
        kwargs = dict(self._request_kwargs)
        if connections_timeout:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=connections_timeout)
        async with self._session.request(method, uri, headers=headers, data=data,
                                         **kwargs) as resp:
            body = await resp.read() if raw else await resp.text(encoding="utf-8")
        if resp.status == 599:
            raise consul.Timeout
        return callback(consul.base.Response(resp.status, resp.headers, body))


class _Client(consul.aio.Consul):  # type: ignore[misc]  # py-consul is untyped
    """py-consul's aio client whose HTTP client is :class:`_HTTPClient` (``http_connect``
    is the hook py-consul's base client calls for its HTTP client, once, in ``__init__``).

    Args:
        resolver, timeout_s, http_auth, server_hostname, ca_path: as
            :class:`_HTTPClient` takes them.
        kwargs: py-consul's ``Consul`` arguments (``host``, ``port``, ``scheme``,
            ``verify``, ``cert``, ``token``).
    """

    def __init__(self, *, resolver: OwnThreadsResolver, timeout_s: float,
                 http_auth: str | None = None, server_hostname: str | None = None,
                 ca_path: str | None = None, **kwargs: Any) -> None:
        self._resolver = resolver
        self._timeout_s = timeout_s
        self._http_auth = http_auth
        self._server_hostname = server_hostname
        self._ca_path = ca_path
        super().__init__(**kwargs)

    def http_connect(self, host: str, port: int, scheme: str, verify: bool | str = True,
                     cert: tuple[str, str] | str | None = None) -> _HTTPClient:
        return _HTTPClient(host, port, scheme, verify=verify, cert=cert,
                           resolver=self._resolver, timeout_s=self._timeout_s,
                           http_auth=self._http_auth,
                           server_hostname=self._server_hostname,
                           ca_path=self._ca_path)


class ConsulRegistry:
    """A :class:`~meshkit.discovery.Registry` backed by a Consul agent.

    Usage::

        reg = ConsulRegistry(ConsulOptions.from_env(check="grpc"))
        await reg.register(Instance(service="orderd", instance_id="orderd-1",
                                    host="10.0.0.5", port=50051))
        async for instances in reg.watch("orderd"): ...
        await reg.close()

    Args:
        options: :class:`ConsulOptions`; default :meth:`ConsulOptions.from_env` (Consul's CLI
            variables, so ``CONSUL_HTTP_ADDR`` etc. apply).
        rng: random source of the backoff jitter (default a new ``random.Random()``,
            reseeded in a forked child; one given is never reseeded).
        sleep: coroutine function sleeping a number of seconds, used for backoff between
            failed watch queries (default ``asyncio.sleep``); tests inject a fast one.

    Raises:
        ConfigError: ``options`` is no :class:`ConsulOptions` (the agent's address given
            for ``ConsulOptions(addr=...)``: named by its type only, it may hold a
            token), ``rng`` no random source (a seed given for ``random.Random(seed)``)
            or ``sleep`` not callable; quoted.

    The HTTP client is created on first use, inside the running event loop, so the registry
    can be built anywhere; one per event loop (an aiohttp session belongs to one), so the
    registry carries over from one ``asyncio.run()`` to the next and serves loops of
    several threads at once: an instance registered again in a later loop is kept alive
    by that loop, and :meth:`close` ends the watches and keep-alives of every loop still
    running, each in its own. The agent's host name (if it is no IP address) is looked up
    on two threads of the registry's own (``meshkit-consul-dns``), never on the event
    loop's default executor, which the application's blocking work may fill; :meth:`close`
    releases them. A registry used before an ``os.fork()`` works in the child too (a
    pre-fork server's workers, ``multiprocessing``'s fork start method): the child gets
    lookup threads, a lock and HTTP clients of its own, also when another thread of the
    parent was using it at the fork, a default ``rng`` reseeded (workers do not retry in
    lock-step), and lets go of its copies of the parent's connections (the parent's
    close ends them while workers live) (``os.register_at_fork``; see
    :meth:`_forget_parent`). Errors: ``register``/``deregister`` raise :class:`RegistryError`
    (chained from the aiohttp/consul exception, the token and credentials redacted);
    watches and heartbeats never raise for agent errors, they log a warning on
    ``meshkit.discovery.consul`` and retry.

    Follows https://developer.hashicorp.com/consul/api-docs/agent/service,
    https://developer.hashicorp.com/consul/api-docs/agent/check,
    https://developer.hashicorp.com/consul/api-docs/health and
    https://developer.hashicorp.com/consul/api-docs/features/blocking.
    """

    def __init__(
        self,
        options: ConsulOptions | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        check_secret_holder("options", options, ConsulOptions)
        check_rng("rng", rng, ("uniform",))
        if sleep is not None and not callable(sleep):
            raise ConfigError(f"sleep must be a coroutine function taking seconds, such as "
                              f"asyncio.sleep, or None, got {sleep!r}")
        self.options = options if options is not None else ConsulOptions.from_env()
        self._rng = rng if rng is not None else random.Random()
        self._own_rng = rng is None  # reseeded in a forked child (see _forget_parent)
        self._sleep = sleep if sleep is not None else asyncio.sleep
        # one py-consul client per event loop (an aiohttp session belongs to one): a
        # later asyncio.run(), or loops of several threads at once; each with the task of
        # its loop that closes it (see hold_until_cancelled). Replaced, never mutated, under
        # _clients_lock (loops of two threads may add theirs at once); read without it.
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, asyncio.Task[None]]] = {}
        self._clients_lock = threading.Lock()
        # the clients' name lookups (see OwnThreadsResolver); its threads start at the
        # first lookup (none for an agent given by IP address) and end at close()
        self._dns = LookupThreads("consul")
        self._keepers: dict[str, _Registration] = {}
        # instance id -> (service, register() calls under way for it): a register() of
        # another service's id is refused while one is under way, before its lookup
        # could miss the id the other is about to PUT (see register)
        self._claims: dict[str, tuple[str, int]] = {}
        # (instance id, service) -> a list per register() under way, given an item by a
        # deregister() of that instance meanwhile (see register)
        self._registering: dict[tuple[str, str], list[list[bool]]] = {}
        # deregistrations of instances whose register() was cancelled with its PUT under
        # way, each waiting for the agent's answer (see _withdraw_when_answered)
        self._withdrawals: set[asyncio.Task[None]] = set()
        # monotonic time of the latest warning about ACLs hiding entries, per read
        self._acl_warned: dict[str, float] = {}
        # (service, instance id) of an unusable entry -> monotonic time it was last logged
        self._unusable_logged: dict[tuple[str, str], float] = {}
        self._race = CloseRace()
        self._tracker = StatusTracker("consul")
        # (service, watch number) -> instances it keeps after the agent lost its state
        # (status(), status(service))
        self._kept: dict[tuple[str, int], int] = {}
        # each watched service's reads: one service's failing queries are that
        # service's fault, not every service's (see _watch_failed)
        self._reads = ServiceReads("consul")
        # services whose own read outage began and is not logged yet: logged at its
        # second failed query, unless every watched service fails by then (the
        # registry's outage: one line naming them all) or it reads again first
        self._unlogged: set[str] = set()
        # services whose own outage's start was logged: only theirs log its end
        self._own_logged: set[str] = set()
        self._watch_ids = itertools.count()
        _registries.add(self)  # reset in a forked child: _forget_parent

    def _forget_parent(self) -> None:
        """In a child made by ``os.fork()`` (``os.register_at_fork(after_in_child=...)``):
        start afresh, as the etcd registry's child does (closed if the parent's registry
        was).

        * **Lock.** ``_clients_lock`` may have been held at the fork by another thread of
          the parent (a loop of its own adding its client), which does not exist in the
          child: the child's first request would block its event loop's thread for good
          (no ``wait_for`` ends it). The child gets a new one.
        * **Jitter.** A generator the registry made itself (no ``rng`` given) is
          reseeded (from ``os.urandom``): with the parent's state every worker forked
          from one registry drew the same backoff delays, so after an agent's restart
          their heartbeat and watch retries fired in lock-step. A generator the caller
          gave is the caller's.
        * **Clients and tasks.** The clients (HTTP sessions) and keep-alive tasks of the
          parent's loops are kept referenced (``_inherited``), never used nor closed
          through asyncio here: a transport closed in the child would remove its
          descriptor from the epoll instance the child's copy of the parent's loop
          shares with the parent, silencing the parent's long polls and pooled
          connections. The child's copies of their socket descriptors are made to name
          ``/dev/null`` instead, so that the parent's close of a connection ends it
          while workers live (:func:`~meshkit.discovery._resolver.drop_inherited_sockets`).
          The child's requests use clients of its own loops; the parent's instances
          are not the child's to keep alive (a ``register()`` of the same id in the
          child keeps it alive from there), nor are the parent's watches its to end
          at :meth:`close`. The lookup threads are renewed by
          :class:`~meshkit.discovery._resolver.LookupThreads`."""
        self._clients_lock = threading.Lock()
        if self._own_rng:
            self._rng.seed()
        _inherited.append((self._clients, self._keepers, self._withdrawals))
        drop_inherited_sockets(client.http._session for client, _ in self._clients.values())
        for reg in self._keepers.values():
            if reg.task is not None:
                with contextlib.suppress(Exception):  # a loop of the parent's; not running
                    reg.task.cancel()
        self._clients = {}
        self._keepers = {}
        self._claims = {}
        self._registering = {}
        self._withdrawals = set()
        race = CloseRace()  # no waits of the parent's loops to wake at a close
        race.closed = self._race.closed
        self._race = race
        self._kept = {}
        self._reads = ServiceReads("consul")
        self._unlogged = set()
        self._own_logged = set()

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        environ: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> ConsulRegistry:
        """A registry from ``consul://host:port`` / ``consul+https://host:port?opt=value``.

        See :meth:`ConsulOptions.from_uri` for the forms; ``CONSUL_HTTP_TOKEN_FILE``,
        ``CONSUL_HTTP_TOKEN`` and the other Consul variables in ``environ`` (default
        ``os.environ``) apply. ``rng``/``sleep`` as
        in the constructor.

        Raises:
            ConfigError: the URI or an option in it is invalid, or so is a variable (e.g. an
                unreadable ``CONSUL_HTTP_TOKEN_FILE``).
        """
        return cls(ConsulOptions.from_uri(uri, environ), rng=rng, sleep=sleep)

    def __repr__(self) -> str:
        return f"ConsulRegistry(addr={self.options.base_url!r}, check={self.options.check!r})"

    @property
    def checks_instance_health(self) -> bool:
        """Whether the agent checks each instance's gRPC health itself (``check="grpc"``
        or ``"both"``): an instance that answers ``NOT_SERVING`` for
        ``grpc_health_service`` or for ``""`` (the whole server) turns critical and
        leaves every watch within ``check_interval_s``, so a server
        (``ServeOptions.follow_health``, which follows the same two names) leaves its
        withdrawal to the agent and the instance stays listed as failing; with
        ``check="ttl"`` the server withdraws it itself."""
        return self.options.check in ("grpc", "both")

    @property
    def plaintext_health_checks(self) -> bool:
        """Whether the agent's gRPC checks of each instance are made in plaintext
        (``check="grpc"`` or ``"both"`` with ``grpc_use_tls=False``): no TLS server can
        pass them, so ``serve()`` refuses such a registry for a server serving TLS
        (``ConfigError``)."""
        return self.checks_instance_health and not self.options.grpc_use_tls

    async def __aenter__(self) -> ConsulRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        """``text`` without the ACL token or the basic-auth credentials, also as they go
        out base64-encoded in ``Authorization`` (a proxy's error page may echo it)."""
        opts = self.options
        for secret in (opts.token, opts.http_auth,
                       opts.http_auth.partition(":")[2] if opts.http_auth else None,
                       # unpadded: matches with or without the trailing '='
                       _basic_credentials(opts.http_auth).rstrip("=")
                       if opts.http_auth else None):
            if secret:
                text = text.replace(secret, "<redacted>")
        return text

    def _describe(self, exc: BaseException) -> str:
        """``"Type: message"`` of ``exc``, redacted, with :meth:`_acl_hint` for a 403."""
        # Redacted whole, then cut: a token that a proxy's error page echoes, straddling
        # the cut, would not be found whole and its first characters would be shown.
        if isinstance(exc, consul.ACLPermissionDenied):
            detail = self._redact(str(exc).strip())[:300]  # (a page: the hint is kept)
            return f"ACLPermissionDenied: {detail or '(no body)'} ({self._acl_hint()})"
        # describe()'s "Type: message" (of at most 500 characters), cut after redacting
        detail = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "no detail")
        return self._redact(f"{type(exc).__name__}: {detail}")[:500]

    def _acl_hint(self) -> str:
        """What a 403 (Consul's ACLs refusing, or a proxy) asks of the ACL token: none was
        sent, or the one sent was refused. Never the token."""
        if self.options.token is None:
            return ("no ACL token was sent: set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE "
                    "(ConsulOptions.token)")
        return ("the ACL token was refused: unknown, expired, or lacking the permission "
                "(service:write on the service to register, deregister and heartbeat; "
                "service:read and node:read to read)")

    def _cause(self, exc: BaseException) -> BaseException | None:
        """What a :class:`RegistryError` made of ``exc`` is chained from: ``exc`` itself,
        or, when its text holds the ACL token or the basic-auth credentials (the body of
        an answer that echoes them, which py-consul's exceptions quote), a copy of the
        same type with them redacted (its traceback kept, nothing chained to it; ``None``
        when the type cannot be built from one message): a traceback prints the cause
        whole. Failure path only."""
        try:
            text, shown = str(exc), repr(exc)
        except Exception:  # an exception of someone's whose str() fails: not chained
            return None
        if self._redact(text) == text and self._redact(shown) == shown:
            return exc
        try:
            clean = type(exc)(self._redact(text))
        except Exception:
            return None
        clean.__traceback__ = exc.__traceback__
        clean.__suppress_context__ = True
        return clean

    def _write_error(self, what: str, exc: BaseException) -> RegistryError:
        """``RegistryError("<what> Consul agent <url>: <exc>")`` for a failed write (e.g.
        ``what="cannot register 'x' with"``), recorded in the status as the last failure."""
        error = RegistryError(f"{what} Consul agent {self.options.base_url}: "
                              f"{self._describe(exc)}")
        self._tracker.write_failed(str(error))
        return error

    def _closed_error(self, what: str) -> RegistryError:
        """``RegistryError("<what>: Consul registry for <url> is closed")`` (e.g. ``what=
        "cannot register 'x'"``) for a call that :meth:`close` ended while it waited for
        the agent's name lookup: a ``CancelledError`` its task was not sent
        (:func:`~meshkit.discovery._resolver.cancelled_by_close`). Not recorded in the
        status (the registry is closed)."""
        return RegistryError(f"{what}: Consul registry for {self.options.base_url} is closed")

    def _read_ok(self) -> None:
        """Record a successful read; log "consul readable again" if it ended an outage."""
        duration = self._tracker.read_ok()
        if duration is not None:
            _log.info("consul readable again", agent=self.options.base_url,
                      outage_s=round(duration, 3))

    def _watch_failed(self, service: str, error: str) -> tuple[Outage | None, list[str]]:
        """Record a failed query of a watch of ``service``; what the watch logs
        (``"started"``, ``"reminder"`` or None) and the services the line names: the
        registry's read outage while every watched service's latest query failed (it
        fails then, and only then; its start names every watched service, once however
        many watches fail), else the service's own. A service's own outage's start is
        logged at its second failed query in a row, not its first: the agent going
        down fails every watch one after the other, which would otherwise log one start
        per watched service before the registry's. The registry's ``read_errors`` and
        ``last_error`` take each failure."""
        reads = self._reads.record(service)
        if reads is None:
            return self._tracker.read_failed(error), [service]
        outage = reads.read_failed(error)
        if self._reads.all_failing():
            registry = self._tracker.read_failed(error)
            if registry == "started":
                self._unlogged.clear()  # this line names them
                return registry, self._reads.failing()
            if outage == "started" or service in self._unlogged:
                # the registry's outage was logged naming the others: this service
                # joined it (its own outage is part of it)
                self._unlogged.discard(service)
            return registry, [service]
        # counted; the registry still reads (other services' watches do)
        self._tracker.read.errors += 1
        self._tracker.last_error = error
        if outage == "started":
            self._unlogged.add(service)
            return None, [service]
        if service in self._unlogged:  # the second failure in a row: its own fault
            self._unlogged.discard(service)
            self._own_logged.add(service)
            return "started", [service]
        return outage, [service]

    def _watch_read_ok(self, service: str) -> None:
        """Record a successful query of a watch of ``service`` (the service's outage's
        end logged, with the registry's as :meth:`_read_ok` logs it)."""
        reads = self._reads.record(service)
        registry_failing = self._tracker.read.ok is False  # its end logged by _read_ok
        # its own outage's end is logged only when its start was (a start covered by
        # the registry's line ends with "consul readable again")
        logged = service in self._own_logged
        self._unlogged.discard(service)
        self._own_logged.discard(service)
        if (reads is not None and (duration := reads.read_ok()) is not None
                and not registry_failing and logged):
            _log.info("consul readable again for a service", service=service,
                      agent=self.options.base_url, outage_s=round(duration, 3))
        self._read_ok()

    def _watch_ended(self, service: str) -> None:
        """A watch of ``service`` ended: the last one takes its record along; if it was
        failing and other watched services read, the registry reads again (a blocking
        query reports only when it answers)."""
        if self._reads.watch_ended(service, self._tracker):
            self._read_ok()
        if self._reads.get(service) is None:  # its last watch: no start to log now
            self._unlogged.discard(service)
            self._own_logged.discard(service)

    def _write_ok(self) -> None:
        """Record a successful write; log "consul writable again" if it ended an outage."""
        duration = self._tracker.write_ok()
        if duration is not None:
            _log.info("consul writable again", agent=self.options.base_url,
                      outage_s=round(duration, 3))

    async def _stop_keeper(self, instance_id: str) -> None:
        """Cancel and await the keep-alive task of ``instance_id``, if it has one (one of
        another event loop: see :func:`~meshkit.discovery._shared.foreign_task`)."""
        reg = self._keepers.pop(instance_id, None)
        if reg is not None and reg.task is not None and not foreign_task(reg.task):
            await cancel_and_wait(reg.task)

    def _get_client(self) -> Any:
        """The running event loop's py-consul client, made on first use in it (those of
        closed loops are dropped then), with a task of that loop that closes it when the
        loop ends or :meth:`close` cancels it
        (:func:`~meshkit.discovery._shared.hold_until_cancelled`); one whose task has
        ended (closed it) is replaced. One of a loop closed with its owner pending is let
        go of (:func:`_abandon`).

        Raises:
            RegistryError: the registry is closed.
        """
        if self._race.closed:
            raise RegistryError(f"Consul registry for {self.options.base_url} is closed")
        loop = asyncio.get_running_loop()
        held = self._clients.get(loop)
        if held is not None and not held[1].done():
            return held[0]
        with self._clients_lock:
            # again under the lock close() takes the clients under (it marks the registry
            # closed before): one made after a check outside it would be stored after
            # close() took the clients, and nobody would close it
            if self._race.closed:
                raise RegistryError(f"Consul registry for {self.options.base_url} is closed")
            opts = self.options
            host = f"[{opts.host}]" if ":" in opts.host else opts.host  # py-consul joins host:port
            verify: bool | str = opts.ca_file if (opts.verify and opts.ca_file) else opts.verify
            cert: tuple[str, str] | str | None = None
            if opts.cert_file is not None:
                cert = (opts.cert_file, opts.key_file) if opts.key_file else opts.cert_file
            client = _Client(
                host=host, port=opts.port, scheme=opts.effective_scheme,
                verify=verify, cert=cert, token=opts.token,
                # the agent's name is looked up on the registry's own threads: on the
                # loop's default executor (aiohttp's default resolver) an application's
                # blocking jobs held the heartbeats' lookups until the TTL checks lapsed
                resolver=OwnThreadsResolver(self._dns, "Consul registry"),
                # aiohttp's default session timeout (total=300 s) would cut a quiet
                # blocking query with wait_s above ~282 s (wait_s may be 600); every
                # request is bounded by _bounded already, and this backstop lies past
                # the longest of those bounds, so it never ends a request first.
                timeout_s=self._blocking_timeout_s + 1.0,
                http_auth=opts.http_auth,
                server_hostname=opts.tls_server_name,
                ca_path=opts.ca_path,
            )
            # py-consul reads CONSUL_HTTP_TOKEN itself and lets it override the token it is
            # given; our options are the single source of truth (from_env reads that variable).
            client.token = opts.token
            # bound: the longest a deregister takes (the keeper it stops, then its request)
            owner = loop.create_task(
                hold_until_cancelled(client.close, self._race, 2 * opts.request_timeout_s,
                                     _FOREIGN),
                name="meshkit-consul-client")
            # a closed loop's client was closed by its owner as that loop ended, unless
            # the loop was closed with the owner pending (stopped, not run to its end)
            for other, (dropped, other_owner) in self._clients.items():
                if other.is_closed() and not other_owner.done():
                    _abandon(dropped)
            self._clients = {**{other: h for other, h in self._clients.items()
                                if not other.is_closed()}, loop: (client, owner)}
        return client

    def _headers(self, client: Any) -> dict[str, str]:
        return cast(dict[str, str], client.prepare_headers())

    @property
    def _blocking_timeout_s(self) -> float:
        """The bound of one blocking query: ``wait_s`` plus the agent's jitter (at most
        ``wait_s / 16``, blocking-query doc) plus ``request_timeout_s``; the longest bound
        this registry puts on a request."""
        opts = self.options
        return opts.wait_s * 17 / 16 + opts.request_timeout_s

    async def _bounded(self, aw: Awaitable[_T], timeout_s: float) -> _T:
        async with asyncio.timeout(timeout_s):
            return await aw

    def _backoff_delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff: ``uniform(0, min(max, base * 2**(attempt-1)))``."""
        return full_jitter(self._rng, attempt, self.options.backoff_base_s,
                           self.options.backoff_max_s)

    # -- registration --------------------------------------------------------------------
    def _payload(self, instance: Instance) -> tuple[dict[str, Any], str | None]:
        """The ``PUT /v1/agent/service/register`` body for ``instance`` and its TTL check id.

        The checks' CheckIDs end in a tag drawn here, 8 random hex digits, so that they are
        new to the agent and their ``Status`` applies (module docstring, "Initial status").
        """
        opts = self.options
        checks: list[dict[str, Any]] = []
        deregister_after = _go_duration(opts.deregister_critical_after_s)
        tag = secrets.token_hex(4)
        ttl_check_id: str | None = None
        if opts.check in ("ttl", "both"):
            ttl_check_id = f"service:{instance.instance_id}:ttl:{tag}"
            checks.append({
                "CheckID": ttl_check_id,
                "Name": f"meshkit heartbeat of {instance.instance_id}",
                "TTL": _go_duration(opts.ttl_s),
                # the agent's answers tell no TTL (only an interval check's Interval):
                # the watches of other processes read it here (_checks_grace_s)
                "Notes": f"{_TTL_NOTES_PREFIX}{_go_duration(opts.ttl_s)}",
                # Passing from the start: register() returning means "discoverable now"
                # (a CheckID new to the agent, which keeps the status of one it holds).
                "Status": "passing",
                "DeregisterCriticalServiceAfter": deregister_after,
            })
        if opts.check in ("grpc", "both"):
            health = (instance.service if opts.grpc_health_service is None
                      else opts.grpc_health_service)
            # the name asked about, and "" (the whole server) besides: a server whose
            # application marks "" NOT_SERVING leaves the watches as it leaves the local
            # and etcd registries (ServeOptions.follow_health follows both names)
            checks.extend(self._grpc_check(instance, name, name == health, tag,
                                           deregister_after)
                          for name in dict.fromkeys((health, "")))
        payload: dict[str, Any] = {
            "ID": instance.instance_id,
            "Name": instance.service,
            # An address, not host:port text: "[::1]" (which Instance takes) reached
            # Consul's DNS (a CNAME to "[::1]."), its Go api users and Envoy (which join
            # it with the port: "[[::1]]:50051") as no address; serve() drops them too.
            "Address": bare_host(instance.host),
            "Port": instance.port,
            "Tags": list(instance.tags),
            "Meta": dict(instance.meta),
            "Weights": {"Passing": instance.weight, "Warning": 1},
            "Checks": checks,
        }
        return payload, ttl_check_id

    def _grpc_check(self, instance: Instance, health: str, configured: bool, tag: str,
                    deregister_after: str) -> dict[str, Any]:
        """The agent's gRPC check of ``instance`` asking about the health service name
        ``health``: the name ``ConsulOptions.grpc_health_service`` gives (``configured``)
        under the CheckID ``service:<id>:grpc:<tag>``, the extra one of ``""`` (the whole
        server) under ``service:<id>:grpc-server:<tag>``."""
        opts = self.options
        kind, what = ("grpc", "") if configured else ("grpc-server", " (whole server)")
        return {
            "CheckID": f"service:{instance.instance_id}:{kind}:{tag}",
            "Name": f"gRPC health of {instance.instance_id}{what}",
            "GRPC": f"{instance.address}/{health}" if health else instance.address,
            "GRPCUseTLS": opts.grpc_use_tls,
            "Interval": _go_duration(opts.check_interval_s),
            "Timeout": _go_duration(min(opts.check_interval_s, opts.request_timeout_s)),
            # Passing from the start too (see the module docstring, "Initial status"):
            # without it the agent starts the check critical and the instance stays
            # out of every watch until the check's first run, up to an Interval later.
            "Status": "passing",
            "DeregisterCriticalServiceAfter": deregister_after,
        }

    async def _put_register(self, payload: dict[str, Any]) -> None:
        """PUT the registration; raises a foreign error or RegistryError on a refusal.

        Sent through py-consul's underlying ``http.put`` rather than
        ``agent.service.register()``: that helper builds the body itself with lower-case keys
        and cannot express a TTL check with ``DeregisterCriticalServiceAfter``/``CheckID``,
        and re-registration must resend the
        caller's payload (less the checks' initial ``Status``) exactly.
        """
        client = self._get_client()
        response = await self._bounded(
            client.http.put(
                _raw_response, "/v1/agent/service/register",
                params=[("replace-existing-checks", "true")],
                headers=self._headers(client), data=json.dumps(payload),
            ),
            self.options.request_timeout_s,
        )
        if response.code != 200:
            body = self._redact(str(response.body).strip())[:300]  # redacted, then cut
            reason = (f"HTTP {response.code}: {body}" if body
                      else f"HTTP {response.code} (no body)")
            if response.code == 403:
                reason += f" ({self._acl_hint()})"
            raise RegistryError(self._redact(
                f"Consul agent {self.options.base_url} refused to register "
                f"{payload['ID']!r}: {reason}"
            ))

    async def register(self, instance: Instance) -> None:
        """Register ``instance`` with the agent and start keeping it alive.

        ``Address`` is ``instance.host``, an IPv6 one without brackets (an address, as
        Consul's DNS and other clients read it): ``"[::1]"`` is sent, and discovered, as
        ``"::1"``.

        Sends ``PUT /v1/agent/service/register?replace-existing-checks=true`` with ``ID``,
        ``Name``, ``Address``, ``Port``, ``Tags``, ``Meta``, ``Weights`` ``{Passing: weight,
        Warning: 1}`` and the checks of ``options.check``, each with the initial ``Status``
        ``"passing"`` and a CheckID new to the agent (``service:<instance_id>:ttl:<tag>``,
        ``service:<instance_id>:grpc:<tag>``, ``service:<instance_id>:grpc-server:<tag>``
        for the gRPC check of ``""``, ``<tag>`` random for each call: see the module
        docstring, "Initial status"); then a background task passes the
        TTL check every ``ttl_s / 3`` (or, for ``check="grpc"``, looks the instance up every
        ``check_interval_s``; a failed round retried after a short backoff, see
        :class:`ConsulOptions` ``ttl_s``) and registers it again with the same payload,
        less the checks' initial ``Status`` (so a gRPC check starts critical, Consul's
        default: module docstring, "Initial status"), if the agent has forgotten or reaped
        it. Registering
        the same ``instance_id`` again replaces the registration (its checks start passing,
        as the first one's do, even where the agent still holds the id with a critical
        check: a crashed process back with the same id): once the agent has accepted it,
        the running keep-alive goes
        on with the new payload; if it fails, the previous registration (still in the
        agent) stays as it was and is still kept alive, as the
        :class:`~meshkit.discovery.Registry` contract says ("keep it alive until
        deregistered or closed"). An ``instance_id`` another service holds is refused: an
        agent keys services by ID, unique per agent, so the registration would replace
        that service; a first registration of an id in this registry asks the agent
        first (``GET /v1/agent/service/<id>``, one request), one it keeps is known, and
        so is one another ``register()`` of this registry is registering. The keeper
        does not register an instance the agent forgot again while the agent holds its
        id for another service (a warning names it): it does once the id is free.

        Raises:
            ConfigError: ``instance_id`` has a ``/``-separated part that is ``.``, ``..``
                or empty but the last (``x/../orderd-1``, ``/orderd-1``): the agent's URL
                paths would resolve it to another id (the id quoted; nothing sent).
            RegistryError: the id is held by another service (both named; nothing sent to
                the agent but the lookup); the agent is unreachable, timed out or refused
                (e.g. HTTP 403 for a missing or wrong ACL token); chained from the
                underlying exception. Also when :meth:`close` ran while the agent
                answered, or while the agent's name was looked up ("... is closed"): no
                keep-alive is started then (the instance is left to its TTL, as
                :meth:`close` leaves every one). Also when :meth:`deregister` of the
                instance ran meanwhile (a drain racing a start): the instance is
                deregistered again and no keep-alive started ("... was deregistered while
                register() ran"), as the local registry does. A cancel of the calling task
                propagates as ``CancelledError``; if it came while the first registration's
                PUT was under way, the instance is deregistered once the agent has
                answered it (in the background), unless it is registered again meanwhile.
        """
        _check_path_id(instance.instance_id)
        # Claimed before the first await: two register() calls of one id for two
        # services at once (two servers' starts gathered) both found the id free at the
        # agent, both PUT, and the second replaced the first, whose call had returned.
        key = instance.instance_id
        claim = self._claims.get(key)
        if claim is not None and claim[0] != instance.service:
            raise self._taken(instance, claim[0])
        self._claims[key] = (instance.service, 1 if claim is None else claim[1] + 1)
        # an item once a deregister() of the instance runs meanwhile (kept only while this
        # register() runs, as the local registry's)
        pending, withdrawn = (key, instance.service), list[bool]()
        self._registering.setdefault(pending, []).append(withdrawn)
        try:
            await self._register_claimed(instance, withdrawn)
        finally:
            claim = self._claims.pop(key, None)
            if claim is not None and claim[1] > 1:
                self._claims[key] = (claim[0], claim[1] - 1)
            tokens = [t for t in self._registering.pop(pending, []) if t is not withdrawn]
            if tokens:
                self._registering[pending] = tokens

    async def _register_claimed(self, instance: Instance, withdrawn: list[bool]) -> None:
        """:meth:`register`, with ``instance``'s id claimed for its service; ``withdrawn``
        gets an item when a :meth:`deregister` of it runs meanwhile."""
        payload, ttl_check_id = self._payload(instance)
        prior = self._keepers.get(instance.instance_id)
        if prior is not None and prior.instance.service != instance.service:
            raise self._taken(instance, prior.instance.service)
        if prior is None:
            holder = await self._holder(instance, "register")
            if holder is not None:
                raise self._taken(instance, holder)
        if prior is not None and foreign_task(prior.task):
            # kept alive by another event loop's task (an earlier asyncio.run(): ended
            # with it; another thread's: cancelled there): this loop keeps it from now
            if self._keepers.get(instance.instance_id) is prior:
                del self._keepers[instance.instance_id]
            prior = None
        try:
            if prior is None:
                put = asyncio.ensure_future(self._put_register(payload))
                try:
                    await asyncio.shield(put)
                except asyncio.CancelledError:
                    if not put.done():
                        # cancelled with its PUT under way (a start cancelled): the agent
                        # may take it all the same, and the caller takes the instance for
                        # not registered: withdrawn once the agent has answered
                        self._withdraw_when_answered(put, instance)
                    raise
            else:
                async with prior.lock:  # no re-registration of the old payload meanwhile
                    await self._put_register(payload)
                    prior.instance, prior.payload = instance, payload
                    prior.ttl_check_id = ttl_check_id
        except _FOREIGN as exc:
            error = self._write_error(f"cannot register {instance.instance_id!r} with", exc)
            raise error from self._cause(exc)
        except RegistryError as exc:
            self._tracker.write_failed(str(exc))
            raise
        except asyncio.CancelledError as exc:
            # close() closed the client while the request waited for the agent's name
            # lookup (the connector cancels its lookups); a cancel of the caller propagates
            if not cancelled_by_close(self._race.closed):
                raise
            raise self._closed_error(f"cannot register {instance.instance_id!r}") from exc
        if self._race.closed:
            # close() ran while the agent answered: it stopped the keep-alives and closed
            # the client, so no keeper may start (it would run for good) and no deregister
            # can be sent; the instance goes as close() leaves every other one
            raise RegistryError(f"cannot keep {instance.instance_id!r} alive: Consul registry "
                                f"for {self.options.base_url} is closed")
        self._write_ok()
        if withdrawn:
            # deregister() of it ran meanwhile (a drain racing a start): its request may
            # have reached the agent before this one, so the instance goes again, and no
            # keeper may bring it back (one left is not: the TTL check lapses)
            with contextlib.suppress(*_FOREIGN):
                client = self._get_client()
                await self._bounded(client.agent.service.deregister(instance.instance_id),
                                    self.options.request_timeout_s)
            raise RegistryError(f"Consul agent {self.options.base_url}: instance "
                                f"{instance.instance_id!r} was deregistered while register() "
                                "ran; it is not registered")
        current = self._keepers.get(instance.instance_id)
        if current is not None:
            # kept alive already (prior, or a concurrent register() of the same id)
            current.instance, current.payload = instance, payload
            current.ttl_check_id = ttl_check_id
            return
        reg = _Registration(instance=instance, payload=payload, ttl_check_id=ttl_check_id)
        reg.task = asyncio.create_task(
            self._keep(reg), name=f"meshkit-consul-keeper-{instance.instance_id}"
        )
        self._keepers[instance.instance_id] = reg

    def _withdraw_when_answered(self, put: asyncio.Future[None], instance: Instance) -> None:
        """Deregister ``instance`` once ``put`` (the PUT of a first registration whose
        :meth:`register` was cancelled) has been answered, if the agent took it, unless a
        register() of the id is under way or kept here by then, or the registry is
        closed (its TTL check lapses then). In a task of its own (referenced until it
        ends), bounded by ``request_timeout_s`` beyond the PUT's own bound; the agent's
        errors are ignored (the TTL check lapses)."""
        async def withdraw() -> None:
            try:
                await put
            except (asyncio.CancelledError, Exception):  # not taken: nothing to withdraw
                return
            key = instance.instance_id
            if self._race.closed or key in self._keepers or key in self._claims:
                return
            with contextlib.suppress(*_FOREIGN, RegistryError):
                client = self._get_client()
                await self._bounded(client.agent.service.deregister(key),
                                    self.options.request_timeout_s)

        task = asyncio.get_running_loop().create_task(
            withdraw(), name=f"meshkit-consul-withdraw-{instance.instance_id}")
        self._withdrawals.add(task)
        task.add_done_callback(self._withdrawals.discard)

    def _taken(self, instance: Instance, holder: str) -> RegistryError:
        return RegistryError(
            f"Consul agent {self.options.base_url}: service ID {instance.instance_id!r} is "
            f"registered by service {holder!r}; an agent keys services by ID (unique per "
            f"agent), so registering it for {instance.service!r} would replace that one: "
            "give each service's instance its own id (if it is a dead registration, it "
            "goes after DeregisterCriticalServiceAfter, or deregister it)")

    async def _holder(self, instance: Instance, what: str, *,
                      unreachable_fails: bool = True) -> str | None:
        """The service the agent holds ``instance``'s ID for when it is another than
        ``instance.service``, else ``None`` (``GET /v1/agent/service/<id>``, api-docs
        agent/service "Get Service Configuration": 404 for an unknown ID). Any other
        answer (403 for a token that may not read it: the write that follows needs the
        right to write over the service holding the ID, which Consul checks) is no answer
        (``None``). ``what`` (``"register"``) names the operation in the errors.

        Raises:
            RegistryError: the registry is closed, or :meth:`close` ran during the lookup;
                with ``unreachable_fails``, the agent is unreachable or timed out (as the
                write would be: so a failing register or deregister takes one
                ``request_timeout_s``, not one for the lookup and another for the write).
        """
        try:
            client = self._get_client()
            response = await self._bounded(
                client.http.get(_raw_response, f"/v1/agent/service/{instance.instance_id}",
                                headers=self._headers(client)),
                self.options.request_timeout_s)
        except _FOREIGN as exc:
            if not unreachable_fails:
                return None
            preposition = "from" if what == "deregister" else "with"
            error = self._write_error(
                f"cannot {what} {instance.instance_id!r} {preposition}", exc)
            raise error from self._cause(exc)
        except asyncio.CancelledError as exc:  # close() during the agent's name lookup
            if not cancelled_by_close(self._race.closed):
                raise
            raise self._closed_error(f"cannot {what} {instance.instance_id!r}") from exc
        if response.code != 200:
            return None
        try:
            name = json.loads(response.body).get("Service")
        except (ValueError, AttributeError):
            return None
        return name if isinstance(name, str) and name != instance.service else None

    async def _still_known(self, reg: _Registration, ttl_check_id: str | None,
                           timeout_s: float) -> bool:
        """One liveness round: pass the TTL check ``ttl_check_id`` (None: look the service
        up instead), bounded by ``timeout_s`` seconds. False: forgotten."""
        client = self._get_client()
        if ttl_check_id is not None:
            # py-consul returns False for 404 ("Unknown check ID ..."), raises for other errors.
            return bool(await self._bounded(client.agent.check.ttl_pass(ttl_check_id),
                                            timeout_s))
        # Raw GET: py-consul's agent.service_definition() does not send the ACL token.
        response = await self._bounded(
            client.http.get(_raw_response, f"/v1/agent/service/{reg.instance.instance_id}",
                            headers=self._headers(client)),
            timeout_s,
        )
        if response.code == 404:
            return False
        if response.code == 403:  # as py-consul raises it: _describe adds the ACL hint
            raise consul.ACLPermissionDenied(response.body)
        if response.code != 200:
            # the body whole: _describe cuts it once the ACL token is redacted
            raise consul.ConsulException(f"HTTP {response.code}: {response.body}")
        return True

    async def _keep(self, reg: _Registration) -> None:
        """Heartbeat/re-registration loop of one instance; ends when cancelled or when it
        finds the registry closed.

        A round is due ``interval`` seconds (``ttl_s / 3`` with a TTL check, else
        ``check_interval_s``) after the start of the last one that got through (at first,
        ``register()``'s). With a TTL check, Consul's contract is that the check is passed
        *within* ``ttl_s``: each pass is bounded by ``min(request_timeout_s, ttl_s / 3)``
        and, while the TTL has not run out, by the time left before it does (at least
        ``_PASS_FLOOR_S``), so a pass that is never answered (a silently dead pooled
        connection, a hung agent thread) leaves time for another. A failed round is
        retried after a full-jitter backoff (``backoff_base_s`` doubling, at most
        ``interval``), not a whole interval later. Logs the first failure of a run and
        the status tracker's reminders, not every retry, and "consul writable again"
        (with ``outage_s``) at info when a write works again after an outage.
        """
        opts = self.options
        ttl = reg.ttl_check_id is not None
        interval = opts.ttl_s / 3 if ttl else opts.check_interval_s
        budget = min(opts.request_timeout_s, interval) if ttl else opts.request_timeout_s
        ids = {"service": reg.instance.service, "instance_id": reg.instance.instance_id}
        loop = asyncio.get_running_loop()
        last_ok = loop.time()  # register() has just registered the checks passing
        failures = 0
        while True:
            if failures:
                delay = full_jitter(self._rng, failures, opts.backoff_base_s,
                                    min(opts.backoff_max_s, interval))
            else:
                delay = last_ok + interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            timeout = budget
            if ttl and 0 < (left := last_ok + opts.ttl_s - started) < budget:
                timeout = max(left, min(budget, _PASS_FLOOR_S))
            try:
                passed = reg.ttl_check_id
                if await self._still_known(reg, passed, timeout):
                    self._write_ok()
                    last_ok, failures = started, 0
                    continue
                async with reg.lock:  # the payload of the latest successful register()
                    if reg.ttl_check_id != passed:
                        # a register() meanwhile replaced the check just passed (404): the
                        # agent knows the instance, under the new CheckID (passed next)
                        continue
                    # Another service may have registered the id the agent forgot (it
                    # was free): registering it again would replace that one, whose
                    # keeper would do the same at its next round, the two flipping the
                    # id for good. Left to its holder, as register() refuses it; taken
                    # again once it is free (a lookup only on this path).
                    holder = await self._holder(reg.instance, "keep", unreachable_fails=False)
                    if holder is not None:
                        if reg.yielded_to != holder:
                            _log.warning(
                                "consul agent forgot the instance and holds its id for "
                                "another service; not registering it again while it does",
                                **ids, holder=holder)
                        reg.yielded_to = holder
                        last_ok, failures = started, 0
                        continue
                    reg.yielded_to = None
                    _log.warning("consul agent forgot the instance; registering it again",
                                 **ids)
                    # Not claiming passing: the agent may have reaped it for being critical.
                    await self._put_register(_without_initial_status(reg.payload))
                    passed = reg.ttl_check_id
                self._tracker.reopened += 1
                started = loop.time()
                if passed is not None:
                    # The heartbeat itself, without waiting ttl_s / 3: this process is alive.
                    await self._still_known(reg, passed, budget)
                self._write_ok()
                last_ok, failures = started, 0
            except _RETRYABLE as exc:
                if self._race.closed:  # "... is closed": close() ran, nothing to keep
                    return
                failures += 1
                outage = self._tracker.write_failed(
                    f"heartbeat of {reg.instance.instance_id!r}: {self._describe(exc)}")
                if failures == 1 or outage == "reminder":
                    _log.warning("consul heartbeat failed; retrying", **ids, attempt=failures,
                                 error=self._describe(exc))

    async def deregister(self, instance: Instance) -> None:
        """Stop keeping ``instance`` alive and remove it from the agent at once.

        Sends ``PUT /v1/agent/service/deregister/<instance_id>``; an id the agent does not
        know (HTTP 404) is ignored, and so is one held for another service than
        ``instance.service`` (this registry keeping it for that one, or, for an id it does
        not keep, the agent's ``GET /v1/agent/service/<id>`` naming that one): an agent
        deregisters by ID, whichever service holds it.

        Raises:
            ConfigError: ``instance_id`` is one :meth:`register` refuses (a part ``.``,
                ``..`` or empty): its path would name another id (nothing sent).
            RegistryError: the agent is unreachable, timed out or refused (e.g. HTTP 403);
            also when the registry is closed, or :meth:`close` ran meanwhile.
        """
        _check_path_id(instance.instance_id)
        claim = self._claims.get(instance.instance_id)
        if claim is not None and claim[0] != instance.service:
            return  # another service's register() of the id is under way here
        kept = self._keepers.get(instance.instance_id)
        if kept is not None and kept.instance.service != instance.service:
            return  # this registry keeps the id for another service: not this one's
        if kept is None and await self._holder(instance, "deregister") is not None:
            return  # the agent holds the id for another service: leave it
        # a register() of it under way sees this and starts no keeper
        for withdrawn in self._registering.get((instance.instance_id, instance.service), ()):
            withdrawn.append(True)
        await self._stop_keeper(instance.instance_id)
        try:
            client = self._get_client()
            await self._bounded(client.agent.service.deregister(instance.instance_id),
                                self.options.request_timeout_s)
        except _FOREIGN as exc:
            error = self._write_error(f"cannot deregister {instance.instance_id!r} from", exc)
            raise error from self._cause(exc)
        except asyncio.CancelledError as exc:  # close() during the agent's name lookup
            if not cancelled_by_close(self._race.closed):
                raise
            raise self._closed_error(f"cannot deregister {instance.instance_id!r}") from exc
        self._write_ok()

    # -- discovery -----------------------------------------------------------------------
    def _get_listing(self, path: str, params: list[tuple[str, str]], *,
                     decoded: bool = True) -> Awaitable[_Listing]:
        """``GET <path>?<params>`` with the ACL token, answered as a :class:`_Listing`
        (through py-consul's HTTP client: its ``health.service()`` and
        ``catalog.services()`` drop the headers that say an answer was filtered by ACLs);
        not ``decoded``: its body the text (:func:`_undecoded_listing`)."""
        client = self._get_client()
        return cast(Awaitable[_Listing], client.http.get(
            _listing if decoded else _undecoded_listing, path, params=params,
            headers=self._headers(client)))

    def _check_acl_filtering(self, what: str, listing: _Listing) -> None:
        """Say so when ACLs may have hidden entries of a read (``what``, e.g. ``"watch of
        'orderd'"``), which Consul answers as if they did not exist (HTTP 200).

        ``X-Consul-Results-Filtered-By-ACLs: true``: the token may not read every entry
        (an instance needs ``service:read`` on its service and ``node:read`` on its node);
        recorded as :attr:`RegistryStatus.last_error` and logged as a warning. An empty
        answer to a request without a token from an agent whose default ACL policy is
        ``deny`` (Consul does not tell the anonymous token what it filtered) is logged as
        a warning only: the anonymous token may have been granted reads, and the service
        may have no instance. Each warning at most once every 10 minutes per ``what``.
        """
        if listing.filtered:
            self._tracker.last_error = (
                f"{what} on Consul agent {self.options.base_url}: results filtered by ACLs "
                "(X-Consul-Results-Filtered-By-ACLs): the ACL token may not read every "
                "entry (an instance needs service:read on its service and node:read on its "
                "node)")
            event = "consul read filtered by ACLs: the token may not read every instance"
        elif self.options.token is None and listing.default_deny and not listing.body:
            event = ("consul read empty with no ACL token while the agent's default ACL "
                     "policy is deny: if instances are missing, set CONSUL_HTTP_TOKEN or "
                     "CONSUL_HTTP_TOKEN_FILE")
        else:
            return
        now = time.monotonic()
        last = self._acl_warned.get(what)
        if last is None or now - last >= _ACL_WARN_EVERY_S:
            self._acl_warned[what] = now
            _log.warning(event, read=what, agent=self.options.base_url)

    def _warn_no_index(self, service: str) -> None:
        """Log that an answer of the watch of ``service`` had no ``X-Consul-Index`` (its
        queries cannot block: it polls), at most every 10 minutes per registry."""
        now = time.monotonic()
        last = self._acl_warned.get(_NO_INDEX)
        if last is None or now - last >= _ACL_WARN_EVERY_S:
            self._acl_warned[_NO_INDEX] = now
            _log.warning("consul answered without X-Consul-Index (a proxy dropped it?): "
                         "watches cannot block and poll once per watch_query_interval_s",
                         service=service, agent=self.options.base_url,
                         interval_s=self.options.watch_query_interval_s)

    async def _health(self, service: str, index: int) -> _Listing:
        """One ``GET /v1/health/service/<service>?passing`` (blocking when ``index`` >= 1),
        its body the text (the watch decodes it in slices)."""
        opts = self.options
        params = [("passing", "1")]
        if index >= 1:
            timeout = self._blocking_timeout_s
            params += [("index", str(index)), ("wait", _go_duration(opts.wait_s))]
        else:
            timeout = opts.request_timeout_s
        return await self._bounded(
            self._get_listing(f"/v1/health/service/{service}", params, decoded=False),
            timeout)

    def _to_instances(self, service: str, entries: list[Any]) -> frozenset[Instance]:
        """The instances of ``/v1/health/service/<service>`` entries (:meth:`_keyed`)."""
        return frozenset(self._keyed(service, entries))

    def _keyed(self, service: str, entries: list[Any]) -> dict[Instance, tuple[str, str]]:
        """The instances of ``/v1/health/service/<service>`` entries.

        A Consul service ID is unique per agent only ("This must be unique per agent. This
        defaults to the Name parameter if not provided", ``api-docs/agent/service``), so
        entries of several nodes may carry the same ``Service.ID`` (e.g. services defined
        in agent configuration files without an ID), while ``Instance.instance_id`` must be
        unique across the registry (the balanced channel keys its endpoints by it). An ID
        that more than one entry of the answer carries becomes ``"<node>/<ID>"``; an ID
        that only one entry carries is kept as it is, so an instance keeps the id it was
        registered with (``deregister()`` and comparisons with registered instances keep
        working) in the usual case where IDs are unique across nodes. The price: when a
        second node starts reporting an ID, the first node's instance takes the qualified
        id too, so a balanced channel replaces that one endpoint once. (Qualifying every
        id would instead make every discovered id differ from the registered one.) An id
        longer than ``Instance`` allows (128) is skipped, as is any other entry
        ``Instance`` refuses, with a warning naming the error's type only
        (:meth:`_log_unusable`).

        Each instance maps to its entry's raw ``(node, Service.ID)`` pair: an identity that,
        unlike ``instance_id``, does not depend on the answer's other entries (the watch
        matches the instances it keeps after a fault with it).
        """
        out: dict[Instance, tuple[str, str]] = {}
        for _ in self._keyed_steps(service, entries, out):
            pass
        return out

    async def _keyed_in_slices(self, service: str, entries: list[Any],
                               graces: tuple[dict[Instance, float], float] | None = None,
                               ) -> dict[Instance, tuple[str, str]]:
        """:meth:`_keyed`, the event loop let run every :data:`SLICE_S`; each entry of
        ``entries`` is set to ``None`` once read, so that the decoded answer is freed as
        it is read (2,000 entries freed at once took about 10 ms of the loop).

        ``graces``, ``(out, default_s)``: ``out`` gets the fault grace each instance's
        checks imply (:func:`_checks_grace_s`), for those where it is not ``default_s``."""
        out: dict[Instance, tuple[str, str]] = {}
        clock = time.perf_counter
        until = clock() + SLICE_S
        for n in self._keyed_steps(service, entries, out, graces):
            if n >= 0:
                entries[n] = None
            if clock() >= until:
                await asyncio.sleep(0)
                until = clock() + SLICE_S
        return out

    def _keyed_steps(self, service: str, entries: list[Any],
                     out: dict[Instance, tuple[str, str]],
                     graces: tuple[dict[Instance, float], float] | None = None,
                     ) -> Iterator[int]:
        """:meth:`_keyed` into ``out``, a step per entry (its index, once read; -1 first);
        ``graces`` as :meth:`_keyed_in_slices` takes it."""
        ids = []
        for n, entry in enumerate(entries):
            ids.append(str((entry.get("Service") or {}).get("ID") or ""))
            if not n & 255:
                yield -1
        repeated = {i for i, n in collections.Counter(ids).items() if n > 1}
        yield -1
        for index, (entry, raw) in enumerate(zip(entries, ids, strict=True)):
            svc = entry.get("Service") or {}
            node = entry.get("Node") or {}
            weights = svc.get("Weights") or {}
            name = f"{node.get('Node') or node.get('ID') or node.get('Address')}"
            sid = f"{name}/{raw}" if raw in repeated else raw
            try:
                instance = Instance(
                    service=svc.get("Service") or service,
                    instance_id=sid,
                    # An empty service address means the node's address (Consul docs).
                    host=str(svc.get("Address") or node.get("Address") or ""),
                    port=int(svc.get("Port") or 0),
                    tags=tuple(svc.get("Tags") or ()),
                    meta=dict(svc.get("Meta") or {}),
                    weight=max(1, int(weights.get("Passing") or 1)),
                )
            except (ConfigError, TypeError, ValueError) as exc:
                self._log_unusable(service, sid, exc)
            else:
                out[instance] = (name, raw)
                if graces is not None:
                    grace_s = _checks_grace_s(entry.get("Checks"), raw, graces[1])
                    if grace_s != graces[1]:
                        graces[0][instance] = grace_s
            yield index

    def _log_unusable(self, service: str, instance_id: str, exc: BaseException) -> None:
        """Warn that an entry of ``service`` is skipped: once per entry, then at most every
        ``_UNUSABLE_LOG_EVERY_S`` seconds while it stays unusable (every answer of a watch
        reads it again). Only the ids and the error's type are logged, as the local
        registry does: the error's message may quote the entry's values (meta may hold
        secrets)."""
        if not due_to_log(self._unusable_logged, (service, instance_id),
                          _UNUSABLE_LOG_EVERY_S):
            return
        _log.warning("skipping unusable consul service entry", service=service,
                     instance_id=instance_id[:128], error=type(exc).__name__)

    async def _read_once(self, path: str, what: str, service: str | None = None) -> Any:
        """One non-blocking ``GET <path>`` bounded by ``request_timeout_s``, recorded in
        :meth:`status` (ACL filtering too: :meth:`_check_acl_filtering`), a failure that
        starts a read outage (or is the tracker's reminder) logged as a warning, the end of
        one at info (:meth:`_read_ok`); returns the body of the answer.

        A read of one ``service`` that fails while the agent still answers other watched
        services' watches, by an error of that read's own (an error status, a malformed
        answer, a timeout: an answer too large for ``request_timeout_s``; not a failed
        connection, which is the agent's), is counted (``read_errors``, ``last_error``)
        without making the registry unreadable, as :meth:`_watch_failed` counts one
        service's failing watch; the caller gets the error.

        Raises:
            RegistryError: the agent cannot be reached or refused (chained); also when
                :meth:`close` ran meanwhile (not recorded: "... is closed").
        """
        try:
            listing = await self._bounded(self._get_listing(path, []),
                                          self.options.request_timeout_s)
        except asyncio.CancelledError as exc:  # close() during the agent's name lookup
            if not cancelled_by_close(self._race.closed):
                raise
            raise self._closed_error(f"cannot read {what}") from exc
        except _RETRYABLE as exc:
            error = f"{what} on Consul agent {self.options.base_url}: {self._describe(exc)}"
            if (service is not None and isinstance(exc, _SERVICE_READ_ERRORS)
                    and not self._reads.all_failing()):
                # that service's fault: other watched services read
                self._tracker.read.errors += 1
                self._tracker.last_error = error
                outage = None
            else:
                outage = self._tracker.read_failed(error)
            if outage is not None:  # the caller gets the error; the log, an outage's start
                _log.warning("consul read failed", read=what, agent=self.options.base_url,
                             error=self._describe(exc),
                             failing_for_s=round(self._tracker.failing_for_s(False), 1))
            raise RegistryError(f"Consul agent {self.options.base_url}: "
                                f"{self._describe(exc)}") from self._cause(exc)
        self._read_ok()
        self._check_acl_filtering(what, listing)
        return listing.body

    async def services(self) -> frozenset[str]:
        """The names of the services in the agent's catalog now (``GET /v1/catalog/services``,
        one non-blocking query bounded by ``request_timeout_s``; a service whose every
        instance fails its checks is listed too: :meth:`watch` shows only passing ones).

        Raises:
            RegistryError: the agent cannot be reached or refused (chained).
        """
        names = await self._read_once("/v1/catalog/services", "catalog")
        return frozenset(str(n) for n in (names or {}) if n != "consul")

    async def _health_entries(self, service: str) -> list[Any]:
        """The entries of one non-blocking ``GET /v1/health/service/<service>`` (each
        instance with its checks; none for an answer of ``null``): what :meth:`failing`
        and :meth:`snapshot` read.

        Raises:
            ConfigError: ``service`` is empty.
            RegistryError: the agent cannot be reached or refused (chained).
        """
        if not service:
            raise ConfigError(f"service must not be empty, got {service!r}")
        entries = await self._read_once(f"/v1/health/service/{service}",
                                        f"health of {service!r}", service)
        return list(entries or [])

    async def failing(self, service: str) -> frozenset[Instance]:
        """Instances of ``service`` registered with a check that is not passing (their
        owner died, hangs or missed its TTL): :meth:`watch` does not list them; the agent
        removes them after ``deregister_critical_after_s``. A drained instance deregisters,
        so it is never here. One non-blocking ``GET /v1/health/service/<service>``.

        Raises:
            ConfigError: ``service`` is empty.
            RegistryError: the agent cannot be reached or refused (chained).
        """
        entries = await self._health_entries(service)
        return self._to_instances(service, [e for e in entries if _failing(e)])

    async def snapshot(self, service: str) -> ServiceSnapshot:
        """The passing and the failing instances of ``service`` from one read: what a new
        :meth:`watch` would yield first and what :meth:`failing` gives, at one time.
        One non-blocking ``GET /v1/health/service/<service>`` (each entry with its
        checks: the passing ones are those whose every check passes, what the watch's
        ``?passing`` query lists).

        Raises:
            ConfigError: ``service`` is empty.
            RegistryError: the agent cannot be reached or refused (chained).
        """
        entries = await self._health_entries(service)
        good: list[Any] = []
        bad: list[Any] = []
        for entry in entries:
            (bad if _failing(entry) else good).append(entry)
        # each set as its own read would give it (an ID repeated in it is node-qualified)
        return ServiceSnapshot(self._to_instances(service, good),
                               self._to_instances(service, bad))

    async def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        """Yield the passing instances of ``service`` now, then each time the set changes.

        Long-polls ``GET /v1/health/service/<service>?passing&index=<i>&wait=<wait_s>``
        as Consul's blocking-query guide says: the first query (and the first after an
        error or an index that went backwards) is non-blocking; a returned
        ``X-Consul-Index`` of 0 is used as 1; an answer without one (a proxy that drops
        it) is read as Consul's Go client reads it, not as an error: the next query blocks
        on the last index (at least 1), which the agent answers at once, so the watch polls
        at the rate limit below, warning so at most every 10 minutes; a wakeup whose set
        did not change yields
        nothing; a query sent right after a blocking query's answer is rate-limited (a
        token bucket, burst 2, one token every ``watch_query_interval_s``: the guide's
        "Rate limit"), so an index that keeps moving is polled at that rate. On errors it
        keeps the last set, sleeps with full-jitter exponential backoff
        (``backoff_base_s`` .. ``backoff_max_s``) and retries forever, logging a warning
        when the registry's reads start failing (once for an outage of every watched
        service, naming them: ``services``, the first 20, and ``service_count``; for one
        service's reads failing alone, at its second failed query in a row) and a
        reminder at most every 60 s (not one per retry), and "consul readable again"
        (with ``outage_s``) at info when a read works again. The backoff grows with each
        failure until a blocking query succeeds (the non-blocking re-read after an error
        does not reset it, so a watch whose blocking queries keep failing backs off to
        ``backoff_max_s``). Instances the ACL token may not read are not listed (the
        agent filters them out, HTTP 200); when the agent says so a warning is logged
        and :meth:`status` records it (see there).

        An agent that lost its state (restarted without it: dev mode, a container without
        a volume) or had an older one restored answers with an ``X-Consul-Index`` below
        the highest one the watch has seen (remembered across errors), listing only the
        instances registered since. A registry fault is not "every instance left": the
        instances of the last set that the answer does not list are then kept for
        ``fault_grace_s``, merged with what the agent lists, as their owners' keepers find
        them forgotten at their next heartbeat (a third of their TTL) or lookup (their
        check's interval) and register them again; :attr:`RegistryStatus.kept_endpoints`
        counts them. Left to its default the grace is each instance's own, from the checks
        the agent listed for it (``Checks``: a meshkit TTL check's TTL, from its
        ``Notes``; three of an interval check's ``Interval``; the longest, at most 600 s),
        else the options'
        (``ttl_s``; at least ``3 * check_interval_s`` with ``check="grpc"``): a process
        that only watches, with the default ``check="ttl"``, keeps a gRPC-checked
        instance until the agent's first run of its check has passed. One that
        the agent lists again (the same node and ``Service.ID``, whatever ``instance_id``
        the new answer gives it, or the same host and port) is no longer kept, so its later
        deregistration (the index moving forward) removes it at once; one whose owner never
        comes back goes when its grace ends (a long poll is cut then). An agent whose new
        index has already passed the one the watch saw is not told: its answer applies at
        once. The iterator ends when the registry is closed; it can be cancelled at any
        await.

        Args:
            service: the Consul service name, e.g. ``"orderd"``.

        Raises:
            ConfigError: ``service`` is empty.
        """
        if not service:
            raise ConfigError(f"service must not be empty, got {service!r}")
        grace_s = self.options.fault_grace_s
        assert grace_s is not None
        # the default: each instance's from its checks (a value given applies to all)
        per_check = grace_s > 0 and is_default(grace_s)
        loop = asyncio.get_running_loop()
        me = next(self._watch_ids)
        self._reads.watch_started(service)
        index = 0
        highest = 0  # the highest X-Consul-Index answered, kept across errors
        last: frozenset[Instance] | None = None
        listed: frozenset[Instance] = frozenset()
        keyed: dict[Instance, tuple[str, str]] = {}  # listed -> (node, Service.ID)
        graces: dict[Instance, float] = {}  # listed -> its checks' grace, if not grace_s
        # of an agent that lost its state: each with its (node, Service.ID), its grace
        # and the loop time that ends
        kept: dict[Instance, tuple[tuple[str, str], float, float]] = {}
        keep_until: float | None = None  # loop time: the first of kept to end
        failures = 0
        bucket = _TokenBucket(self.options.watch_query_interval_s, _WATCH_BURST)
        after_blocking_answer = False
        try:
            while not self._race.closed:
                if after_blocking_answer:
                    wait_s = bucket.reserve()
                    if wait_s > 0 and await self._race.race(asyncio.sleep(wait_s)) is CLOSED:
                        return
                blocking = index >= 1
                after_blocking_answer = False
                grace = asyncio.timeout_at(keep_until)  # ends a long poll when it ends
                try:
                    async with grace:
                        result = await self._race.race(self._health(service, index))
                        if isinstance(result, _Listing):  # its body decoded in slices
                            # (2,000 instances: about 80 ms of the loop in one go)
                            result = replace(result,
                                             body=await decoded_in_slices(result.body))
                except _RETRYABLE as exc:
                    if not grace.expired():
                        failures += 1
                        delay = self._backoff_delay(failures)
                        outage, named = self._watch_failed(service, (
                            f"watch of {service!r} on Consul agent {self.options.base_url}: "
                            f"{self._describe(exc)}"))
                        if outage == "started":
                            _log.warning(
                                "consul watch failed; keeping the last known endpoints",
                                service=service, agent=self.options.base_url,
                                attempt=failures, retry_in_s=round(delay, 3),
                                error=self._describe(exc),
                                **({"services": named[:_NAMED_SERVICES],
                                    "service_count": len(named)} if len(named) > 1
                                   else {}))
                        elif outage == "reminder":
                            _log.warning(
                                "consul watch still failing; keeping the last known "
                                "endpoints", service=service, agent=self.options.base_url,
                                attempt=failures, retry_in_s=round(delay, 3),
                                error=self._describe(exc),
                                failing_for_s=round(self._failing_for_s(service), 1))
                        index = 0  # the agent may have restarted: re-read at once
                        if await self._race.race(self._sleep_coro(delay)) is CLOSED:
                            return
                        continue
                    result = None  # the grace ended during a long poll: asked again below
                if result is CLOSED or self._race.closed:  # (closed while decoding)
                    return
                if result is not None:
                    # (a list decoded: read, and freed, in slices by _keyed_in_slices)
                    new_index, entries = result.index, (
                        result.body if type(result.body) is list else list(result.body or []))
                    if blocking:
                        failures = 0
                        after_blocking_answer = True
                    self._watch_read_ok(service)
                    self._check_acl_filtering(f"watch of {service!r}", result)
                    if new_index is None:
                        # No X-Consul-Index (a proxy dropped it; Consul's Go client reads
                        # it as 0 and goes on): nothing new to block on. The next query
                        # blocks on the last index, at least 1 (never on 0), so the agent
                        # answers at once and the rate limit spaces the queries instead
                        # of a busy loop; highest stays: no index went backwards.
                        self._warn_no_index(service)
                        index = max(index, 1)
                    elif new_index < highest and last is not None and grace_s > 0:
                        # An index below one already answered: an agent (or cluster) that
                        # lost or restored its state, not instances that all left.
                        # last is listed | kept (kept ones keep their pairs and graces)
                        now = loop.time()
                        kept = {i: (p, g, now + g) for i, (p, g, _) in kept.items()}
                        for i, p in keyed.items():
                            g = graces.get(i, grace_s)
                            kept[i] = (p, g, now + g)
                        _log.info("consul index went backwards (agent restarted without "
                                  "its state?): a watch keeps its last endpoints until their "
                                  "owners register again", service=service,
                                  index=new_index, highest=highest,
                                  grace_s=round(max((g for _, g, _ in kept.values()),
                                                    default=grace_s), 3))
                    if new_index is not None:
                        # lower: counted from the new state from now on
                        highest = new_index
                        if new_index < 1:
                            index = 1  # never block on 0: Consul would answer at once
                        elif new_index < index:
                            index = 0  # went backwards: reset, non-blocking re-read
                        else:
                            index = new_index
                    graces = {}
                    keyed = await self._keyed_in_slices(
                        service, entries, (graces, grace_s) if per_check else None)
                    listed = frozenset(keyed)
                if kept:  # after a fault only: no work per answer otherwise
                    # one the agent lists again is its own from now on: a later
                    # deregistration (or a failing check) of it removes it at once.
                    # Matched by (node, Service.ID), not instance_id: that one is
                    # node-qualified only while another entry shares the ID. An
                    # endpoint listed again is not kept a second time either; one
                    # whose grace ended goes.
                    now = loop.time()
                    pairs = set(keyed.values())
                    endpoints = {(i.host, i.port) for i in listed}
                    kept = {i: k for i, k in kept.items()
                            if now < k[2] and k[0] not in pairs
                            and (i.host, i.port) not in endpoints}
                    if kept:
                        keep_until = min(k[2] for k in kept.values())
                        self._kept[service, me] = len(kept)
                    else:
                        keep_until = None
                        self._kept.pop((service, me), None)
                current = listed.union(kept) if kept else listed
                if not await same_in_slices(current, last):
                    last = current
                    yield current
        finally:
            self._kept.pop((service, me), None)
            self._watch_ended(service)

    def _failing_for_s(self, service: str) -> float:
        """Seconds the reads of watched ``service`` have failed: the registry's outage
        while it fails (or the service has no record), else the service's."""
        reads = self._reads.get(service)
        if reads is None or self._tracker.read.ok is False:
            return self._tracker.failing_for_s(False)
        return reads.failing_for_s(False)

    async def _sleep_coro(self, delay: float) -> None:
        await self._sleep(delay)

    # -- lifecycle -----------------------------------------------------------------------
    def status(self, service: str | None = None) -> RegistryStatus:
        """This registry's health as its own calls to the agent saw it (no I/O).

        Args:
            service: a service name, e.g. ``"orderd"``: ``readable``,
                ``failing_since_s`` (its watches' outage, or the writes') and, while it
                fails, ``last_error`` say how that service's watches read (``readable``
                None while none runs, or none has answered yet); default None: the
                registry's.

        ``readable``/``read_errors``: the watches' health queries (and the reads of
        :meth:`instances`, :meth:`failing`, :meth:`snapshot`, :meth:`services`);
        ``readable`` is False after a watch's failed query only while every watched
        service's latest query failed (one service's answers failing, say too large for
        ``request_timeout_s``, leave the others readable: ask with ``service``), and
        after a failed :meth:`failing` or :meth:`snapshot` of one service only when no
        watched service reads or the agent could not be reached; ``writable``/
        ``write_errors``: register, deregister and the heartbeats (TTL passes or lookups);
        ``reopened``: instances registered again because the agent had forgotten them;
        ``last_error`` may name the agent's address and an instance id, never the token. A
        read the agent answered with entries filtered out by ACLs (the token may not read
        them: ``X-Consul-Results-Filtered-By-ACLs``) succeeded, so it counts as readable,
        but sets ``last_error`` to say so (and logs a warning at most every 10 minutes).
        ``kept_endpoints``: instances the watches keep after the agent answered with an
        index below one already seen (see :meth:`watch`); with ``service``, those its own
        watches keep.
        """
        status = self._tracker.status()
        kept = kept_count(self._kept, service)
        if kept:
            status = replace(status, kept_endpoints=kept)
        if service is None:
            return status
        return self._reads.status(service, self._tracker, status)

    async def close(self) -> None:
        """Stop heartbeats, end every watch (their iterators finish) and close the client.

        The client of another event loop still running (another thread's) is closed in
        that loop; that is waited for, up to ``request_timeout_s`` seconds (a busy or
        stopped loop's is not waited for longer: its client is closed when it runs
        again), so that the thread may stop and close its loop once this returns. That of
        a closed loop was closed as it ended, unless the loop was closed with the client's
        owner task pending: then the client's connections are shut down and its session
        closed from here (their descriptors only when collected, see :func:`_abandon`).

        The threads that look up the agent's host name (``meshkit-consul-dns``, at most
        two) are shut down without waiting for a lookup in flight.

        Does not deregister: instances with a TTL check turn critical after ``ttl_s`` and
        are reaped by the agent after ``deregister_critical_after_s``. Idempotent; a
        close() cancelled while it waits still has every client closed (by its owner
        task, not waited for).
        """
        if self._race.closed:
            return
        tasks = [*(r.task for r in self._keepers.values()
                   if r.task is not None and not foreign_task(r.task)),
                 *self._race.close()]
        self._keepers.clear()
        taken = False
        try:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with self._clients_lock:
                clients, self._clients = self._clients, {}
            taken = True
            await close_per_loop(clients, _abandon, self.options.request_timeout_s)
        finally:
            if not taken:
                # cancelled before it took the clients (a shutdown's timeout): a second
                # close() returns at once, so each owner closes its client now
                with self._clients_lock:
                    clients, self._clients = self._clients, {}
                close_per_loop_nowait(clients, _abandon)
            # the lookup threads end once their lookup in flight, if any, returns (a
            # stuck DNS server's is not waited for); lookups not started are dropped
            self._dns.shutdown()


def _abandon(client: Any) -> None:
    """Let go of ``client`` (a py-consul client), of an event loop closed with its owner
    task pending: its aiohttp session is abandoned
    (:func:`~meshkit.discovery._resolver.abandon_session`: its connections shut down now,
    the agent sees them end and a long poll is no longer held)."""
    abandon_session(client.http._session, "meshkit-consul-abandoned", _FOREIGN)


#: Every registry of the process: each starts afresh in a forked child
#: (:meth:`ConsulRegistry._forget_parent`).
_registries = reset_in_forked_child(ConsulRegistry)
#: A parent's HTTP clients and keep-alive tasks, in a forked child: kept referenced, never
#: used nor closed. Closed or collected in the child, their transports would remove their
#: descriptors from the epoll instance the child's copy of the parent's loop shares with
#: the parent, silencing the parent's long polls and pooled connections (and a collected
#: pending task or unclosed session is logged at ERROR). Their sockets' descriptors name
#: /dev/null in the child (_resolver.drop_inherited_sockets), which makes a close there
#: harmless to the parent should one come after all (an interpreter's exit).
_inherited: list[object] = []
