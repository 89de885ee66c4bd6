"""The balanced channel: :func:`dial` returns a :class:`MeshChannel` for generated stubs.

grpcio lets Python plug in neither a name resolver nor an LB policy (grpc/grpc#11685), so
meshkit balances itself. A :class:`MeshChannel` holds the options and the per-call path;
its :class:`~meshkit._pool.EndpointPool` follows a registry watch for one service and keeps
one grpc.aio sub-channel per endpoint. Each method's plan (kind, serializers, default
timeout) is resolved once, when the stub makes its multicallable; then every call:

1. runs the per-call :class:`~meshkit.interceptors.ClientInterceptor` chain
   (``DialOptions.interceptors``; retries, deadlines and tracing live here);
2. picks an endpoint through the :class:`~meshkit.balancer.Balancer` (P2C over peak
   EWMA by default), skipping endpoints whose connection is failing; a pick of an
   endpoint still connecting waits for a READY one (as gRPC's pickers queue a call);
3. makes the attempt on that endpoint's sub-channel, where the per-attempt
   ``grpc.aio`` interceptors (``DialOptions.attempt_interceptors``) run;
4. reports the outcome and latency to the balancer through ``done`` (a stream-unary
   call's latency from the half-close of its request stream: its caller's sending time
   is not its endpoint's; a response stream's, none).

Endpoints that leave the registry are removed from the balancer at once and their
sub-channel is closed with a grace period (``drain_timeout_s``), so in-flight calls finish.
With no usable endpoint a call fails with ``UNAVAILABLE`` naming the service.

Example::

    async with meshkit.dial("userd") as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        user = await users.GetUser(user_pb2.GetUserRequest(user_id="u1"), timeout=1.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import grpc
import structlog
from grpc.aio import AioRpcError, Metadata

from meshkit._attempts import cancel_through
from meshkit._calls import (
    DEADLINE_SLACK_S,
    StreamResponseCall,
    StreamStreamCall,
    StreamUnaryCall,
    UnaryResponseCall,
    UnaryStreamCall,
    UnaryUnaryCall,
    add_end_callback,
    held_end,
    hold_end,
)
from meshkit._codecs import (
    Undecodable,
    codec_error,
    exact_bytes,
    serialize_message,
    serialized,
    strict_deserializer,
)
from meshkit._config import (
    check_bool,
    check_compression,
    check_grpc_options,
    check_instance,
    check_int,
    check_metadata_key,
    check_number,
    check_secret_holder,
    check_tuple,
    registry_argument,
)
from meshkit._env import CERT_DIR, WORKLOAD, env_value
from meshkit._fields import FrozenMap, Normalised
from meshkit._inline import InlineUnaryUnary, UncompressedOnRequest, inline_unary_unary
from meshkit._inline import available as inline_available
from meshkit._metadata import MESH_USER_AGENT, check_metadata
from meshkit._methods import MethodMatcher
from meshkit._pool import UNREADABLE_POLL_S, EndpointPool, short_repr
from meshkit._registration import grpc_observability_active
from meshkit._stats import ChannelStats, EndpointStats, RetrySnapshot
from meshkit.auth import TLSOptions, tls_from_dir
from meshkit.auth._probe import HandshakeDiagnosis, handshake_problem
from meshkit.auth._propagation import TokenForwarder
from meshkit.balancer import (
    P2C,
    Balancer,
    EjectingBalancer,
    Endpoint,
    EndpointState,
    Filter,
    OutlierOptions,
)
from meshkit.balancer._zone import split_zone_preference
from meshkit.discovery import Registry, registry_from_env
from meshkit.errors import (
    ConfigError,
    MeshRpcError,
    RequestSerializationError,
    ResponseDeserializationError,
)
from meshkit.interceptors import (
    CallKind,
    ClientCallDetails,
    ClientInterceptor,
    StreamProceed,
    UnaryProceed,
    chain_stream,
    chain_unary,
)
from meshkit.observability import (
    AttemptSpanInterceptor,
    TelemetryClientInterceptor,
    TelemetryOptions,
    attempt_interceptors,
    client_interceptors,
    ended,
    flush_logs,
    track,
)
from meshkit.observability._client import current_attempt
from meshkit.resilience import (
    RetryInterceptor,
    RetryOptions,
    clamp_timeout_s,
    is_nack,
)
from meshkit.resilience._deadline import (
    MAX_PROPAGATED_S,
    _deadline,
    admission_refusal,
    handled_deadline,
    wire_cut_s,
    wire_timeout_s,
)
from meshkit.resilience._retry import (
    NOT_SERVED_DETAILS,
    ConnectFailedError,
    draining_refusal,
    nacked_status,
    never_connected,
    size_refusal,
    transport_only,
)
from meshkit.resilience._retry import not_served as _not_served
from meshkit.resilience.ratelimit import storage_refusal

__all__ = ["DialOptions", "MeshChannel", "dial"]

_log = structlog.get_logger("meshkit.channel")
_perf = time.perf_counter
# current_deadline() without its frame: the variable's own get (twice per call)
_current_deadline = _deadline.get
_new_details = object.__new__  # a ClientCallDetails without its __init__ (_open)
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
# set by DialOptions.compression (grpc.aio's compression=): refused in channel_options
# beside it (grpc core keeps the first of a repeated argument: one would be ignored)
_COMPRESSION_ARG = "grpc.default_compression_algorithm"
# set by DialOptions' keepalive fields: refused in channel_options beside them
_KEEPALIVE_OPTIONS = frozenset({"grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms",
                                "grpc.http2.ping_timeout_ms",
                                "grpc.keepalive_permit_without_calls",
                                "grpc.http2.max_pings_without_data"})
_MAX_MS_ARG_S = (2**31 - 1) // 1000  # grpc takes milliseconds as C ints
# every sub-channel's: its user agent names meshkit (see _metadata.MESH_USER_AGENT)
_USER_AGENT = ("grpc.secondary_user_agent", MESH_USER_AGENT)
# the channel argument with which TLSOptions.channel_options makes the handshake verify the
# dialed service's identity: refused in channel_options with tls (as grpc takes names too)
_IDENTITY_OPTIONS = frozenset({"grpc.ssl_target_name_override",
                               b"grpc.ssl_target_name_override"})
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_READY = EndpointState.READY
_READY_CONN = grpc.ChannelConnectivity.READY
# what grpc.aio's call objects give as details for a cancel on this side (grpc/aio/_call.py,
# _interceptor.py: cancel(), and a call garbage collected while running)
_LOCAL_CANCEL_DETAILS = frozenset({"Locally cancelled by application!",
                                   "Cancelled upon garbage collection!"})
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_INTERNAL = grpc.StatusCode.INTERNAL
_MAX_PLAN_KEYS = 1024
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
# the message types of a method, bound by its serializers as in types-grpcio's
# grpc.aio.Channel, so a typed client keeps them through a MeshChannel
_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")


# the grpc.aio client interceptors a channel takes (grpc/aio/_channel.py)
_ATTEMPT_KINDS: tuple[type, ...] = (
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor)
_ATTEMPT_KINDS_TEXT = ("grpc.aio client interceptors (UnaryUnaryClientInterceptor, "
                       "UnaryStreamClientInterceptor, StreamUnaryClientInterceptor or "
                       "StreamStreamClientInterceptor instances)")


# grpc core's details of a call whose per-call credentials plugin failed (raised, or
# answered an error) before anything was sent: "...with error: <the plugin's text>"
_PLUGIN_FAILED = "Getting metadata from plugin failed"


def _no_response(method: str) -> MeshRpcError:
    """The error of a unary-response attempt (unary-unary, stream-unary) its server ended
    ``OK`` without a response message: ``INTERNAL``, as grpc-go (since grpc-go#8278:
    "cardinality violation"), grpc-java and grpc-js fail it; grpc.aio hands the caller
    ``None`` (grpc's statuscodes.md: "Response cardinality violation", ``UNIMPLEMENTED``,
    a code grpc's own clients do not give it). Typically a server whose method of that
    name streams its responses (a proto that differs between the two sides), which sent
    none. The answering endpoint's failure, as any ``INTERNAL`` answer."""
    return MeshRpcError(_INTERNAL, f"{method}: no response message: the server ended the "
                                   "call OK without one (a unary-response method; is the "
                                   "server's a streaming one?)")


class _NoMessage:
    """The type of :data:`_NO_MESSAGE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<no response message>"


#: What a :func:`_strict_unary_deserializer` returns for grpc.aio's ``None`` (the call
#: was answered without a message), so the attempt's check tells it from a ``None`` the
#: caller's deserializer returned for a real message. Never reaches the caller
#: (:func:`_checked_unary_response` raises :class:`_MissingMessage` for it).
_NO_MESSAGE: Any = _NoMessage()


class _MissingMessage(Exception):
    """Raised by :func:`_checked_unary_response` for :data:`_NO_MESSAGE`; the attempt
    fails :func:`_no_response` for it."""


def _strict_unary_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[Any], Any]:
    """:func:`~meshkit._codecs.strict_deserializer` for a unary response grpc.aio
    deserializes (under ``attempt_interceptors``): ``None``, which grpc.aio hands the
    deserializer for a call answered without a message, is returned as
    :data:`_NO_MESSAGE` for the attempt's check (:func:`_no_response`) instead of
    reaching ``deserializer`` (whose own ``None``, for a real message, is a response)."""

    def strict(raw: Any) -> Any:
        if raw is None:
            return _NO_MESSAGE
        try:
            return deserializer(raw)
        except Exception as exc:
            return Undecodable(exc)

    return strict


def _checked_unary_response(message: Any) -> Any:
    """A unary response a :func:`_strict_unary_deserializer` made: the message, or the
    deserializer's exception raised again for an :class:`~meshkit._codecs.Undecodable`.

    Raises:
        _MissingMessage: ``message`` is :data:`_NO_MESSAGE` (no response message).
    """
    if message is _NO_MESSAGE:
        raise _MissingMessage
    if type(message) is Undecodable:
        raise message.error
    return message


SHARED_REFUSAL_WINDOW_S = 10.0
"""How recently (seconds) another endpoint must have refused a call fail-closed for its
rate-limit storage (:func:`~meshkit.resilience.ratelimit.storage_refusal`) for an
endpoint's such refusal to count as the outage of the storage the replicas share: no
endpoint's outcome. See :class:`_StorageRefusals`."""
_PEER_CALLS = 3
"""Calls the other endpoints must have been sent since an endpoint's first refusal of a
run (none of them refusing so) for its later ones to count as its own."""


class _StorageRefusals:
    """Tells a fail-closed rate-limit refusal of the storage the replicas share (Redis
    down: no endpoint's outcome) from one of an endpoint's own way to it (a wrong
    password or URI on one replica, its network, its breaker: its outcome, ejected and
    penalised as any ``UNAVAILABLE``, or a replica failing every limited call fast kept
    its share of calls for good). A refusal is the shared storage's when most of the
    endpoints taking calls (more than half of those sent one in the last one to two
    :data:`SHARED_REFUSAL_WINDOW_S`, this one included) refused so within
    :data:`SHARED_REFUSAL_WINDOW_S`, or it is an endpoint's first in that window
    (nothing to tell by yet); the endpoint's own once the other endpoints were sent
    :data:`_PEER_CALLS` calls since its first (``Endpoint.calls``, read here: nothing on
    the success path) while at most half of them refused so. Not "another endpoint
    refused": two broken replicas (a zone cut off from the storage, a rollout's wrong
    password on two pods) then vouched for each other, never ejected. Not "half the
    pool": under a zone preference (``PreferZone``) the pool holds the other zones'
    endpoints too, taking no calls, and a shared outage read as the local replicas' own
    ejected them. One per channel, on its loop; the failure path only (O(endpoints) per
    refusal). ``pool``: the channel's endpoint pool (its ``endpoints`` by key, read at
    each refusal; an endpoint that left it counts no more)."""

    __slots__ = ("_cur", "_cur_at", "_last", "_pool", "_prev")

    def __init__(self, pool: EndpointPool) -> None:
        self._pool = pool
        # key -> (time.monotonic() of its last refusal, the others' calls at its first)
        self._last: dict[str, tuple[float, int]] = {}
        # each endpoint's calls (by key) at a refusal at least SHARED_REFUSAL_WINDOW_S
        # ago (_prev: who took calls since), and at the latest roll (_cur, _cur_at)
        self._prev: dict[str, int] = {}
        self._cur: dict[str, int] = {}
        self._cur_at = -math.inf

    def shared(self, ep: Endpoint) -> bool:
        """Note ``ep``'s refusal; whether it is the shared storage's (see the class).
        Entries older than :data:`SHARED_REFUSAL_WINDOW_S` are dropped (bounded by the
        endpoints refusing within it; the calls snapshots by the pool's endpoints)."""
        now = time.monotonic()
        last = self._last
        endpoints = self._pool.endpoints
        if now - self._cur_at >= SHARED_REFUSAL_WINDOW_S:
            self._prev = self._cur
            self._cur = {k: e.calls for k, e in endpoints.items()}
            self._cur_at = now
        prev = self._prev
        key = ep.key
        refusing = 1  # ep
        for k, (at, _) in list(last.items()):
            if now - at > SHARED_REFUSAL_WINDOW_S:
                del last[k]
            elif k != key and k in endpoints:
                refusing += 1
        total = 0
        taking = 0  # endpoints sent a call since the _prev snapshot
        for k, e in endpoints.items():
            calls = e.calls
            total += calls
            if calls > prev.get(k, 0):
                taking += 1
        others = total - ep.calls
        entry = last.get(key)
        if refusing * 2 > max(taking, refusing) or entry is None:
            last[key] = (now, others)
            return True
        last[key] = (now, entry[1])
        return others - entry[1] < _PEER_CALLS


def _no_endpoints_outcome(code: grpc.StatusCode, exc: AioRpcError, ep: Endpoint,
                          refusals: _StorageRefusals) -> bool:
    """Whether a unary-response attempt's failure ``exc`` (its ``code``) on ``ep`` says
    nothing of its endpoint: grpc's own refusal on this side (:func:`_refused_here`), a
    server's deadline admission refusal (``meshkit-deadline-refused``: the request's
    deadline was short, :func:`~meshkit.resilience._deadline.admission_refusal`), or a
    server's fail-closed rate-limit refusal (``meshkit-ratelimit-unavailable``,
    :func:`~meshkit.resilience.ratelimit.storage_refusal`) while most endpoints refuse so
    too (``refusals``: the rate-limit storage the replicas share is down; one refusing
    alone or with a few others is its own failure). The failure path only."""
    details = exc.details()
    trailers = exc.trailing_metadata()
    return _refused_here(code, details, exc.initial_metadata(), trailers) or (
        code is _DEADLINE_EXCEEDED and admission_refusal(details, trailers)) or (
        code is _UNAVAILABLE and storage_refusal(code, trailers) and refusals.shared(ep))


def _refused_here(code: grpc.StatusCode, details: str | None, initial_metadata: Any = None,
                  trailing_metadata: Any = None) -> bool:
    """Whether a status is grpc's own refusal on this side, before the message left: a
    request over the channel's ``grpc.max_send_message_length`` ("CLIENT: Sent message
    larger than max" from grpc core; for a stream, grpc.aio's failed batch, ``INTERNAL``
    "Internal error from Core"), a stream whose metadata grpc core refused to send
    (``INTERNAL`` "Invalid metadata": what an attempt interceptor added, after the
    channel's own check), request metadata over the server's ``grpc.max_metadata_size``
    (``RESOURCE_EXHAUSTED`` "received metadata size exceeds hard limit ...", or "soft
    limit", with no metadata: grpc core refused the headers before the call ran) or a
    request message over its ``max_receive_message_bytes`` ("SERVER: Received message
    larger than max (N vs. M)", likewise; "Decompressed message larger than max" for a
    compressed one, by its inflated size; another gRPC library's server's words for
    them, :func:`~meshkit.resilience._retry.size_refusal`: grpc-js "Received message
    larger than max (N vs M)", "Received message that decompresses to a size larger
    than M", grpc-go's and grpc-java's, with no metadata but a ``date`` header, which
    Node's HTTP/2 adds to grpc-js' answers), a response message over this side's
    ``grpc.max_receive_message_length`` ("Stream removed (CLIENT: Received message
    larger than max (N vs. M))", or "Decompressed message larger than max", likewise:
    every endpoint would send that answer), a response's headers or trailers over this
    side's ``grpc.max_metadata_size`` ("Stream removed (received metadata size exceeds
    soft limit (N vs. 8192); ...)" or "... hard limit ...", with the metadata grpc core
    read: the handler's, which every endpoint running it sends alike), or a
    call whose per-call credentials
    (``credentials=grpc.metadata_call_credentials(plugin)``) failed: ``UNAVAILABLE``
    "Getting metadata from plugin failed with error: ...", with no metadata from a server
    (``initial_metadata``, ``trailing_metadata``; pass them for an ``UNAVAILABLE``). No
    endpoint's outcome: outlier ejection's failure codes mean the endpoint, not the
    request, is at fault. Residual risk: a server that forwards that status verbatim,
    without metadata, is not counted as failing. Asked on the failure path only."""
    if code is _INTERNAL:
        return details == "Internal error from Core" or details == "Invalid metadata"
    if code is _UNAVAILABLE:
        return (details is not None and details.startswith(_PLUGIN_FAILED)
                and not initial_metadata and not trailing_metadata)
    if code is not _EXHAUSTED or details is None:
        return False
    # grpc core's on this side; or a server's core refusing, before any of the call ran
    # and with no metadata, the request's headers over its grpc.max_metadata_size (16
    # KiB; at random over 8 KiB) or a request message over its max_receive_message_bytes:
    # the caller's oversized request, not the endpoint's overload; or this side's core
    # refusing a response over its receive limit: the caller's limit; or another gRPC
    # library's server refusing a request message over its limit in its own words
    # (grpc-js, grpc-go, grpc-java: size_refusal), as trailers-only (Node adds `date`)
    # (or this side's core refusing a response's metadata over its limit: the handler's)
    return details.startswith(_SENT_TOO_LARGE) or details.startswith(_METADATA_READ_TOO_LARGE) or (
        (details.startswith(_REQUEST_TOO_LARGE) or _RESPONSE_TOO_LARGE in details
         or size_refusal(code, details))
        and not initial_metadata and transport_only(trailing_metadata))


# endpoints (instance id, address) logged as not serving a method another endpoint
# serves, each once; forgotten whole past this many
_NOT_SERVING_LOGGED_MAX = 1024
_SENT_TOO_LARGE = "CLIENT: Sent message larger than max"
_REQUEST_TOO_LARGE = ("received metadata size exceeds ",
                      "SERVER: Received message larger than max",
                      "Decompressed message larger than max")
# grpc core's refusal of a response over this side's receive limit (a unary call's in
# "Stream removed (...)")
_RESPONSE_TOO_LARGE = "CLIENT: Received message larger than max"
# grpc core's refusal of a response's headers or trailers over this side's
# grpc.max_metadata_size (soft or hard limit), whatever metadata it read
_METADATA_READ_TOO_LARGE = "Stream removed (received metadata size exceeds "


def _attempt_outcome(exc: AioRpcError) -> grpc.StatusCode:
    """The status a failed attempt reports to the balancer: a refusal before any processing
    (:func:`~meshkit.resilience.is_nack`: a stream reset ``REFUSED_STREAM``, or a meshkit
    server's "server busy") is overload, ``RESOURCE_EXHAUSTED`` (P2C's penalty, not an
    outlier-ejection failure), except a draining server's refusal
    (:func:`~meshkit.resilience._retry.draining_refusal`), ``UNAVAILABLE``: that endpoint
    is leaving; anything else its own status."""
    code = exc.code()
    if is_nack(exc) and not draining_refusal(code, exc.details(), exc.trailing_metadata()):
        return _EXHAUSTED
    return code


@dataclass(frozen=True, slots=True, kw_only=True)
class DialOptions:
    """How :func:`dial` builds a :class:`MeshChannel`.

    Args:
        balancer: factory of the :class:`~meshkit.balancer.Balancer`, called once per
            channel (default :class:`~meshkit.balancer.P2C` over peak EWMA).
        outlier: outlier ejection (:class:`~meshkit.balancer.OutlierOptions`, on by
            default); ``None`` disables it.
        retry: retries and hedging (:class:`~meshkit.resilience.RetryOptions`; the default
            retries ``UNAVAILABLE`` only for calls safe to repeat, within a retry budget,
            and sends a call refused before any of it ran or never sent once more whatever
            the method's policy: gRFC A6's transparent retry); ``None`` disables all of it,
            the transparent retry included, so a meshkit server's nack (``RESOURCE_EXHAUSTED``
            "server busy", ``UNAVAILABLE`` "server draining") reaches the caller; use
            ``RetryOptions(default=None)`` to retry nothing but those.
        timeout_s: deadline of calls made without ``timeout``, seconds (default none).
        method_timeouts: ``{method pattern: timeout_s}`` overriding ``timeout_s``, e.g.
            ``{"OrderService/PlaceOrder": 2.0}``.
        propagate_deadline: inside a handler (see
            :class:`~meshkit.resilience.DeadlineInterceptor`) run outgoing calls under the
            incoming call's remaining time, never longer (default ``True``). Such a call's
            timeout is handed to grpc lowered to the grid grpc core sends ``grpc-timeout``
            on (rounding up: 10 ms from 1 s, 100 ms from 10 s, 1 s from 100 s; less 5 ms
            for its clock), so the next hop's deadline is never later than this one's:
            the call's own timer fires up to 1 % + 5 ms before the deadline.
        deadline_margin_s: subtracted from a propagated deadline, seconds (default 0.0):
            time the handler keeps to answer. A call that runs that deadline out fails
            ``DEADLINE_EXCEEDED``, and a meshkit server answers the handler that lets
            the error escape ``DEADLINE_EXCEEDED`` too (the caller's deadline, propagated,
            ran out), as without a margin.
        hash_key_metadata: metadata key whose value is the request key for affinity
            balancers such as :class:`~meshkit.balancer.RingHash` (default none): a gRPC
            metadata key (lowercase ``0-9 a-z _ - .``; the bytes value of a ``-bin`` key
            serves too). Read from the metadata as the per-call ``interceptors`` leave it
            (a key one of them adds or changes counts, as grpc-go's ring hash reads
            ``request_hash_header`` at the pick, gRFC A76; a
            ``ClientCallDetails.request_key`` one of them sets wins).
        filters: which discovered instances to balance over, run in order on each
            discovery answer: :class:`~meshkit.balancer.Subset` (registry meta/tags),
            :class:`~meshkit.balancer.PreferZone` (the local zone's instances while
            one of them is READY and in rotation, else the other zones', decided per
            call: the channel turns it into a :class:`~meshkit.balancer.ZoneAwareBalancer`
            around ``balancer``), or any ``(instances) -> instances`` callable; a
            sequence (tuple or list; default none).
        telemetry: client spans with W3C trace-context propagation, RED metrics and an access
            log per call (:class:`meshkit.observability.TelemetryOptions`, on by default,
            outermost); ``None`` turns them off.
        interceptors: per-call :class:`~meshkit.interceptors.ClientInterceptor` chain, a
            sequence, first is outermost (default none); it runs inside telemetry, and
            retry inside it. A :class:`~meshkit.observability.TelemetryClientInterceptor`
            (:func:`~meshkit.observability.client_interceptors`) is refused here while
            ``telemetry`` is set, which installs its own (each call would count twice):
            give ``telemetry=None`` to install one here.
        attempt_interceptors: ``grpc.aio`` client interceptors (a sequence, as
            ``grpc.aio.insecure_channel(interceptors=)`` takes) installed on every
            endpoint's sub-channel; they run once per attempt (default none). One object of
            several kinds runs for each of its kinds (grpc.aio alone would run it for the
            first only). They see the messages: the sub-channels then keep the codecs.
            ``telemetry`` adds :func:`~meshkit.observability.attempt_interceptors` of its
            own in front of them (with ``attempt_spans=True``, a CLIENT span per attempt),
            so an :class:`~meshkit.observability.AttemptSpanInterceptor` is refused here
            while it is set; with ``telemetry=None`` give one here, beside
            :func:`~meshkit.observability.client_interceptors` in ``interceptors``.
            An attempt cancelled while one of them still runs (awaiting the attempt's
            status, say: the caller's cancel, a hedge that lost, ``close()``) has its RPC
            cancelled too, as have those of interceptors a patch of
            ``grpc.aio.insecure_channel`` adds (``opentelemetry-instrument``'s); grpc.aio
            alone cancels only the interceptors' task, and the RPC runs on.
        tls: mTLS with workload identities (:class:`meshkit.auth.TLSOptions`): the client
            presents its certificate, checks the server's identity for the dialed service,
            and rebuilds its sub-channels when its certificate file is renewed (checked
            every ``tls.reload_interval_s``), without failing calls in flight.
        credentials: other ``grpc.ChannelCredentials`` (not with ``tls``); ones that
            carry call credentials (``grpc.composite_channel_credentials``) beside a
            :class:`~meshkit.auth.TokenForwarder` on the ``authorization`` key are a
            ``ConfigError`` (both write ``authorization``: sent twice).
        insecure: plaintext, asked for explicitly (default ``False``); without it, ``tls``
            or ``credentials``, :func:`dial` takes certificates from ``MESHKIT_CERT_DIR`` /
            ``MESHKIT_WORKLOAD`` or refuses. With a :class:`~meshkit.auth.TokenForwarder`
            in ``interceptors`` a ``ConfigError`` (tokens sent in the clear) unless it
            was given ``allow_plaintext=True``; so is
            ``credentials=grpc.experimental.insecure_channel_credentials()``.
        channel_options: extra grpc channel arguments, a sequence of ``(name, value)``
            as ``grpc.aio.insecure_channel(options=)`` takes, e.g.
            ``[("grpc.max_receive_message_length", 8 << 20)]``; names are non-empty
            strings, values ``int`` (a C ``int``: -2147483648..2147483647), ``str`` or
            ``bytes`` (a mapping, an item that is no pair, a ``None`` or float value, an
            int beyond a C int is a ``ConfigError``). With ``tls``,
            ``grpc.ssl_target_name_override`` is refused (``ConfigError``): it is the
            argument by which meshkit checks the dialed service's identity; with
            ``keepalive_time_s``, the keepalive arguments below are refused too. Without
            it, a ``grpc.keepalive_timeout_ms`` here without ``grpc.http2.ping_timeout_ms``
            sets the latter to the same value (grpc core 1.85 times an unanswered
            keepalive ping out by the ping timeout only, default 60 s: grpc/grpc#39239),
            and a ``grpc.keepalive_time_ms`` below 10000 is logged as
            ``keepalive_time_s`` below 10 s is.
        compression: the default compression of requests (default ``None``: none, as
            grpc's): a ``grpc.Compression`` member, or its name as a string, any case
            (``"gzip"``, ``"deflate"``, ``"none"``); set on every endpoint's sub-channel
            as grpc.aio's ``compression=`` (the channel argument
            ``grpc.default_compression_algorithm``), so grpc core compresses each request
            message (``grpc-encoding`` on the wire) of every kind of call, retries and
            hedges included, without taking calls off the inline path
            (:mod:`meshkit._inline`). A call's own ``compression=Gzip``/``Deflate`` wins;
            a call's ``compression=grpc.Compression.NoCompression`` sends that call
            uncompressed. Responses are compressed as the server chooses
            (``ServeOptions.compression``); this channel accepts gzip and deflate.
            Compression costs CPU on both sides and pays for large, repetitive messages
            (JSON, text), not for small or already compressed ones. Refused beside
            ``grpc.default_compression_algorithm`` in ``channel_options``.
        resolve_timeout_s: how long a call waits for the first discovery answer before
            failing with ``UNAVAILABLE`` (default 5.0 s; bounded by the call's deadline;
            at once while the registry reports that it cannot be read, a resolver
            error, as gRPC); a ``wait_for_ready=True`` call waits until its deadline
            instead (however long without one) and then fails ``DEADLINE_EXCEEDED``.
        drain_timeout_s: grace given to in-flight calls on an endpoint that left the
            registry before its sub-channel is closed (default 10.0 s); a call or
            stream still running then fails ``UNAVAILABLE`` (retried as that status is,
            for calls safe to repeat; a server stream before its first message).
        keepalive_time_s: client keepalive (gRFC A8): seconds between HTTP/2 pings on
            each endpoint's connection while it has calls, whether or not data moves
            (default ``None``: off, as in gRPC). A ping not acked within
            ``keepalive_timeout_s`` closes the connection: its calls end ``UNAVAILABLE``
            (retried as the retry policy says) and the endpoint reconnects, so a server
            whose host vanished (no RST: a network partition, a powered-off host) is
            found instead of holding calls until their deadline, or for good without
            one. A meshkit server accepts pings every ``ServerLimits.min_ping_interval_s``
            (default 10 s); a server with gRPC's default policy answers pings more often
            than every 5 minutes on a connection that sends it no data with GOAWAY
            ``too_many_pings``, which ends that connection's calls (``UNAVAILABLE``;
            grpc core then doubles this channel's keepalive time). A value below 10 s
            is kept as given, not raised to 10 s as grpc-go and grpc-java raise a
            client's keepalive time, but logged once when the options are built (a
            warning of logger ``meshkit.channel``): against a server with the default
            10 s (a meshkit server) it draws GOAWAY ``too_many_pings`` again and again
            (measured with 1 s: at 5, 15 and 35 s), each ending the connection's calls
            in flight ``UNAVAILABLE``; use it only with servers whose
            ``min_ping_interval_s`` is at most this. Sets
            ``grpc.keepalive_time_ms``, ``grpc.keepalive_timeout_ms``,
            ``grpc.http2.ping_timeout_ms`` (the timeout grpc core applies),
            ``grpc.keepalive_permit_without_calls`` and
            ``grpc.http2.max_pings_without_data`` = 0 (else grpc core stops pinging a
            quiet call after two pings).
        keepalive_timeout_s: seconds to wait for a ping's ack (default 20.0, gRPC's).
        keepalive_without_calls: ping connections without calls too (default ``False``),
            so an endpoint whose idle connection died is found before a call is sent to
            it; only with a server that permits it (a meshkit server does). Needs
            ``keepalive_time_s`` (``ConfigError`` without it).

    ``keepalive_time_s`` and ``keepalive_timeout_s`` are at most 2147483 s (grpc takes
    milliseconds as C ints). The sequences are stored as tuples and ``method_timeouts`` as
    a read-only copy (a :class:`~meshkit._fields.FrozenMap`; a list or dict changed later
    does not change the options, which still pickle and deep-copy).

    Raises:
        ConfigError: a value is out of range, malformed or of the wrong type (quoted in
            the message, the field named): a flag (``insecure``, ``propagate_deadline``)
            that is not ``True`` or ``False`` (a string such as ``"false"`` from the
            environment would be truthy), an options field (``outlier``, ``retry``,
            ``telemetry``, ``tls``, ``credentials``) that is not an instance of its class
            (or a subclass) or ``None`` (``True``, a mapping, a path), a ``balancer``
            that is not callable, a sequence field given as one object or string, an
            ``attempt_interceptors`` item that grpc.aio would refuse, a
            ``hash_key_metadata`` that is no gRPC metadata key (``" "``, ``"a:b"``);
            ``grpc.ssl_target_name_override`` in ``channel_options`` with ``tls``; a
            ``compression`` that is neither a ``grpc.Compression`` member nor one of its
            names (``"br"``, ``2``), or given beside
            ``grpc.default_compression_algorithm`` in ``channel_options``; a
            telemetry interceptor of meshkit in ``interceptors`` or
            ``attempt_interceptors`` while ``telemetry`` is set (quoted; the message
            says ``telemetry=None``); a :class:`~meshkit.auth.TokenForwarder` on a
            plaintext channel without its ``allow_plaintext=True``.
    """

    balancer: Callable[[], Balancer] = P2C
    outlier: OutlierOptions | None = field(default_factory=OutlierOptions)
    retry: RetryOptions | None = field(default_factory=RetryOptions)
    timeout_s: float | None = None
    method_timeouts: Mapping[str, float] = field(default_factory=dict)
    propagate_deadline: bool = True
    deadline_margin_s: float = 0.0
    hash_key_metadata: str | None = None
    filters: Normalised[Sequence[Filter], tuple[Filter, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    telemetry: TelemetryOptions | None = field(default_factory=TelemetryOptions)
    interceptors: Normalised[Sequence[ClientInterceptor], tuple[ClientInterceptor, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    attempt_interceptors: Normalised[Sequence[grpc.aio.ClientInterceptor],
                                     tuple[grpc.aio.ClientInterceptor, ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    tls: TLSOptions | None = None
    credentials: grpc.ChannelCredentials | None = None
    insecure: bool = False
    channel_options: Normalised[Sequence[tuple[str, Any]], tuple[tuple[str, Any], ...]] = (
        Normalised(()))  # noqa: RUF009 - immutable: _fields.py
    compression: Normalised[grpc.Compression | str | None, grpc.Compression | None] = (
        Normalised(None))  # noqa: RUF009 - immutable: _fields.py
    resolve_timeout_s: float = 5.0
    drain_timeout_s: float = 10.0
    keepalive_time_s: float | None = None
    keepalive_timeout_s: float = 20.0
    keepalive_without_calls: bool = False

    def __post_init__(self) -> None:
        if not callable(self.balancer):
            raise ConfigError("balancer must be a factory of Balancers, called once per "
                              "channel (e.g. P2C, or lambda: P2C(P2COptions(...))), got "
                              f"{self.balancer!r}")
        check_instance("outlier", self.outlier, OutlierOptions)
        check_instance("retry", self.retry, RetryOptions)
        check_instance("telemetry", self.telemetry, TelemetryOptions)
        check_secret_holder("tls", self.tls, TLSOptions)
        check_secret_holder(
            "credentials", self.credentials, grpc.ChannelCredentials,
            what="a grpc.ChannelCredentials (grpc.ssl_channel_credentials()...)")
        check_bool("insecure", self.insecure)
        check_bool("propagate_deadline", self.propagate_deadline)
        check_number("resolve_timeout_s", self.resolve_timeout_s, low_open=True, finite=False)
        check_number("drain_timeout_s", self.drain_timeout_s, finite=False)
        if self.tls is not None and self.credentials is not None:
            raise ConfigError("give tls or credentials, not both")
        if self.insecure and (self.tls is not None or self.credentials is not None):
            raise ConfigError("insecure=True contradicts tls/credentials")
        if self.timeout_s is not None:
            check_number("timeout_s", self.timeout_s, low_open=True, finite=False)
        if not isinstance(self.method_timeouts, Mapping):
            raise ConfigError("method_timeouts must be a mapping of method patterns, "
                              f"got {self.method_timeouts!r}")
        # a read-only copy: the caller's dict changed later must not change the options
        timeouts = FrozenMap(self.method_timeouts)
        for pattern, t in timeouts.items():
            check_number(f"method_timeouts[{pattern!r}]", t, low_open=True, finite=False)
        MethodMatcher(timeouts, None, where="method_timeouts")  # the patterns
        object.__setattr__(self, "method_timeouts", timeouts)
        check_number("deadline_margin_s", self.deadline_margin_s)  # inf: every call spent
        if self.hash_key_metadata is not None:
            # a -bin key's value (bytes) is a request key too (see _MultiCallable._open)
            check_metadata_key("hash_key_metadata", self.hash_key_metadata, binary_ok=True)
        object.__setattr__(self, "filters", check_tuple("filters", self.filters))
        for f in self.filters:
            if not callable(f):
                raise ConfigError(f"filters must be callables (instances -> instances), "
                                  f"got {f!r}")
        object.__setattr__(self, "interceptors", check_tuple("interceptors", self.interceptors))
        object.__setattr__(self, "attempt_interceptors",
                           check_tuple("attempt_interceptors", self.attempt_interceptors))
        for icpt in self.interceptors:
            if not isinstance(icpt, ClientInterceptor):
                raise ConfigError(
                    f"interceptors must be meshkit ClientInterceptor instances, got {icpt!r}"
                )
            if self.telemetry is not None and isinstance(icpt, TelemetryClientInterceptor):
                raise ConfigError(
                    f"{icpt!r} in interceptors while telemetry is set (it defaults to "
                    "TelemetryOptions() and installs its own): every call would be counted, "
                    "traced and logged twice; give telemetry=None to install "
                    "client_interceptors() yourself, or leave it out and set "
                    "telemetry=TelemetryOptions(...)")
        if (self.credentials is not None and type(getattr(
                self.credentials, "_credentials", None)).__name__ == "CompositeChannelCredentials"
                and any(getattr(icpt, "writes_authorization", False)
                        for icpt in self.interceptors)):
            # both write authorization: grpc sends it twice, which a meshkit server's JWT
            # check refuses (UNAUTHENTICATED) on every call the forwarder stamps
            raise ConfigError(
                "credentials carry call credentials (composite_channel_credentials) beside "
                "a TokenForwarder on the authorization key: every forwarded call would send "
                "authorization twice; give the forwarder metadata_key= of its own, or pass "
                "the service's token per call (credentials=) instead")
        if self.insecure or _plaintext_credentials(self.credentials):
            for icpt in self.interceptors:
                if isinstance(icpt, TokenForwarder) and not icpt.allow_plaintext:
                    # grpc-go's token credentials refuse a channel without transport
                    # security (RequireTransportSecurity): the token would go in the clear
                    raise ConfigError(
                        "a TokenForwarder on a plaintext channel (insecure=True, or "
                        "insecure_channel_credentials()) would send "
                        "callers' bearer tokens in the clear; dial with tls/credentials, or "
                        "give the forwarder allow_plaintext=True (loopback, tests)")
        for attempt_icpt in self.attempt_interceptors:
            # what grpc.aio's channel takes (it raises ValueError for anything else, when
            # the first endpoint's sub-channel is built: every call then UNAVAILABLE)
            check_instance("attempt_interceptors", attempt_icpt, _ATTEMPT_KINDS,
                           optional=False, what=_ATTEMPT_KINDS_TEXT)
            if self.telemetry is not None and isinstance(attempt_icpt, AttemptSpanInterceptor):
                raise ConfigError(
                    f"{attempt_icpt!r} in attempt_interceptors while telemetry is set: dial() "
                    "installs attempt spans from telemetry itself (two CLIENT spans per "
                    "attempt); set telemetry=TelemetryOptions(attempt_spans=True) and leave "
                    "it out, or give telemetry=None to install client_interceptors() and "
                    "attempt_interceptors() yourself")
        object.__setattr__(self, "channel_options",
                           check_grpc_options("channel_options", self.channel_options))
        object.__setattr__(self, "compression",
                           check_compression("compression", self.compression))
        if self.compression is not None:
            for item in self.channel_options:
                if item[0] == _COMPRESSION_ARG:
                    raise ConfigError(
                        f"channel_options: {item!r} beside compression="
                        f"{self.compression!r}: give the default compression once, "
                        "with compression (or with channel_options, not both)")
        if self.keepalive_time_s is not None:
            check_number("keepalive_time_s", self.keepalive_time_s, low_open=True,
                         high=_MAX_MS_ARG_S)
            for item in self.channel_options:
                if item[0] in _KEEPALIVE_OPTIONS:
                    raise ConfigError(
                        f"channel_options: {item!r} beside keepalive_time_s="
                        f"{self.keepalive_time_s!r}: set keepalive with the DialOptions "
                        "fields (keepalive_time_s, keepalive_timeout_s, "
                        "keepalive_without_calls) or with channel_options, not both")
        check_number("keepalive_timeout_s", self.keepalive_timeout_s, low_open=True,
                     high=_MAX_MS_ARG_S)
        check_bool("keepalive_without_calls", self.keepalive_without_calls)
        self._warn_fast_keepalive()
        if self.keepalive_without_calls and self.keepalive_time_s is None:
            raise ConfigError("keepalive_without_calls=True needs keepalive_time_s (client "
                              "keepalive is off without it)")
        if self.tls is not None:
            for item in self.channel_options:
                if item[0] in _IDENTITY_OPTIONS:
                    raise ConfigError(
                        f"channel_options: {item!r} with tls: meshkit checks the server's "
                        "identity for the dialed service as <service>.svc.<trust domain> "
                        "with this argument, which the override would replace (a server "
                        "of another workload would be accepted); leave it out, or give "
                        "credentials=grpc.ssl_channel_credentials(...) instead of tls")


    def _warn_fast_keepalive(self) -> None:
        """Log a client keepalive time below 10 s (see ``keepalive_time_s``), once: a
        meshkit server permits pings every 10 s by default, and grpc-go and grpc-java
        raise a client's keepalive time to 10 s."""
        if self.keepalive_time_s is not None:
            if self.keepalive_time_s < 10:
                what = f"keepalive_time_s={self.keepalive_time_s!r}"
            else:
                return
        else:
            # the first of a repeated argument, as grpc core keeps it
            time_ms = dict(reversed(self.channel_options)).get("grpc.keepalive_time_ms")
            if not (isinstance(time_ms, int) and 0 < time_ms < 10_000):
                return
            what = f"channel_options grpc.keepalive_time_ms={time_ms!r}"
        _log.warning(
            f"client keepalive {what} pings more often than every 10 s: a meshkit "
            "server (ServerLimits.min_ping_interval_s, default 10 s) or one with grpc's "
            "default policy (5 min) answers with GOAWAY too_many_pings, again and again, "
            "each ending the connection's calls in flight UNAVAILABLE; kept as given "
            "(grpc-go and grpc-java raise it to 10 s): use it only with servers that "
            "permit pings this often")

    def keepalive_channel_args(self) -> tuple[tuple[str, int], ...]:
        """The grpc channel arguments of client keepalive (see ``keepalive_time_s``) that
        every endpoint's sub-channel gets, in front of ``channel_options``; ``()`` when
        ``keepalive_time_s`` is ``None``, but for ``grpc.http2.ping_timeout_ms`` set to
        the value of a ``grpc.keepalive_timeout_ms`` in ``channel_options`` that has no
        ping timeout beside it (see ``channel_options``)."""
        if self.keepalive_time_s is None:
            given = dict(reversed(self.channel_options))  # the first, as grpc core
            timeout = given.get("grpc.keepalive_timeout_ms")
            if isinstance(timeout, int) and "grpc.http2.ping_timeout_ms" not in given:
                # grpc core (1.85) times an unacked keepalive ping out by this one only
                return (("grpc.http2.ping_timeout_ms", timeout),)
            return ()
        timeout_ms = int(self.keepalive_timeout_s * 1000)
        return (("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
                ("grpc.keepalive_timeout_ms", timeout_ms),
                # grpc core (1.85) times an unacked keepalive ping out by this one
                # (default 60 s), not keepalive_timeout_ms (grpc/grpc#39239)
                ("grpc.http2.ping_timeout_ms", timeout_ms),
                ("grpc.keepalive_permit_without_calls", int(self.keepalive_without_calls)),
                ("grpc.http2.max_pings_without_data", 0))


def _plaintext_credentials(credentials: grpc.ChannelCredentials | None) -> bool:
    """Whether ``credentials`` are grpc.experimental's ``insecure_channel_credentials()``
    (a secure_channel over no security: plaintext, as ``insecure=True``)."""
    inner = getattr(credentials, "_credentials", None)
    return type(inner).__name__ == "InsecureChannelCredentials"


def dial(
    service: str, *, registry: Registry | str | None = None,
    options: DialOptions | None = None,
) -> MeshChannel:
    """Open a balanced channel to ``service``; pass it to any generated stub.

    Must be called with an event loop running (like ``grpc.aio`` channels). Discovery
    starts at once; calls made before the first answer wait for it (``resolve_timeout_s``).

    Args:
        service: mesh service name as registered, e.g. ``"orderd"``.
        registry: where to discover it: a :class:`~meshkit.discovery.Registry` (kept
            open by the channel's ``close()``: yours to close), or a registry URI as
            ``MESHKIT_REGISTRY`` takes (``"local:///var/lib/meshkit"``,
            ``"consul://127.0.0.1:8500"``: :func:`meshkit.discovery.registry_from_uri`);
            default :func:`meshkit.discovery.registry_from_env` (``MESHKIT_REGISTRY``,
            else the local registry). A registry built from a URI or the environment is
            owned and closed by the channel.
        options: :class:`DialOptions` (defaults apply when omitted).

    Returns:
        A :class:`MeshChannel` (a ``grpc.aio.Channel``); close it with ``await ch.close()``
        or use ``async with``.

    Transport security is required: ``options.tls``, other ``credentials``, or the
    environment (``MESHKIT_CERT_DIR`` with this workload's name in ``MESHKIT_WORKLOAD``);
    plaintext only with ``DialOptions(insecure=True)``.

    Raises:
        ConfigError: ``service`` is not a valid service name, ``options`` is not a
            :class:`DialOptions` (a ``ServeOptions``, say), the registry URI is bad,
            ``registry`` is neither a URI nor an object with ``watch()`` (a class instead
            of an instance, say), or no transport security is configured and
            ``insecure`` was not asked for.
        RuntimeError: no event loop is running.
    """
    if not isinstance(service, str) or not _SERVICE_RE.fullmatch(service):
        raise ConfigError(f"service name must match {_SERVICE_RE.pattern}, got {service!r}")
    if options is not None and not isinstance(options, DialOptions):
        # named by its type only: an options object's repr may carry credentials
        raise ConfigError(f"dial({service!r}): options must be a DialOptions, got a "
                          f"{type(options).__qualname__}" + (
                              " (ServeOptions are MeshServer's)"
                              if type(options).__name__ == "ServeOptions" else ""))
    opts = _with_transport(options or DialOptions(), service)
    if registry is None:
        reg, owns = registry_from_env(), True
    else:
        reg, owns = registry_argument(f"dial({service!r})", registry, ("watch",))
    return MeshChannel(service, reg, opts, owns_registry=owns)


def _with_transport(opts: DialOptions, service: str) -> DialOptions:
    """Secure by default: options without ``tls``/``credentials``/``insecure`` take the
    workload's certificates from ``MESHKIT_CERT_DIR`` (workload ``MESHKIT_WORKLOAD``), else
    fail: plaintext must be asked for."""
    if opts.tls is not None or opts.credentials is not None or opts.insecure:
        return opts
    cert_dir, workload = env_value(CERT_DIR), env_value(WORKLOAD)  # stripped; blank: unset
    if cert_dir and workload:
        return dataclasses.replace(opts, tls=tls_from_dir(cert_dir, workload))
    raise ConfigError(
        f"dial({service!r}): no transport security configured: pass "
        "DialOptions(tls=TLSOptions(...)), or set MESHKIT_CERT_DIR and MESHKIT_WORKLOAD "
        "(this workload's name), or ask for plaintext with DialOptions(insecure=True)"
    )


class _MethodPlan:
    """Everything about one method that does not depend on the call, resolved once when
    the stub's multicallable is made: kind, serializers, default timeout, and the
    sub-channel multicallable per endpoint (cached on the endpoint's connection under
    ``key``: one per method and codec pair).

    The mesh runs the codecs (:mod:`meshkit._codecs`: grpc.aio sends an empty message for a
    request its serializer refuses and hands the reader ``None`` for a response its
    deserializer refuses, grpc/grpc#34894): a unary request is serialized before the pick
    (:meth:`wire`), a unary response decoded after the attempt (:attr:`decode`), a stream's
    request messages serialized as grpc.aio takes them and its response messages
    deserialized through a strict deserializer; the sub-channel then carries bytes
    (:attr:`in_mesh`). With ``attempt_interceptors`` (which see the messages) the
    sub-channel keeps the codecs, with the deserializer made strict, and the mesh still
    serializes every request message once, for the check: what grpc.aio would get wrong
    fails the same way on both paths.

    ``margin_s`` is the channel's ``deadline_margin_s`` when it propagates deadlines
    (``None`` when it does not): :meth:`propagated_deadline` reads it on a call's error."""

    __slots__ = ("answered", "compresses", "cut_of", "decode", "decodes", "in_mesh",
                 "kept_status", "key", "kind", "margin_s", "mesh_cut", "mesh_waits", "method",
                 "none_is_no_message", "request_serializer", "response_deserializer",
                 "sends_wire", "serializes_stream", "served_by", "strict_deserializer",
                 "timeout_s", "unary_request", "unserved")

    def __init__(self, method: str, kind: CallKind, ser: Any, deser: Any,
                 timeout_s: float | None, *, codecs_in_mesh: bool = True,
                 strict_deserializer: Any = None, key: str | None = None,
                 margin_s: float | None = None) -> None:
        self.margin_s = margin_s
        self.method = method
        self.kind = kind
        # the channel compresses by default (DialOptions.compression): a call's own
        # NoCompression is said in a header on grpc.aio's path (UncompressedOnRequest)
        self.compresses = False
        self.request_serializer = ser
        self.response_deserializer = deser
        self.timeout_s = timeout_s
        self.in_mesh = codecs_in_mesh
        unary_response = kind is CallKind.UNARY_UNARY or kind is CallKind.STREAM_UNARY
        self.unary_request = kind is CallKind.UNARY_UNARY or kind is CallKind.UNARY_STREAM
        # a unary-unary call's wait_for_ready is the mesh's (the pool waits for a READY
        # endpoint; an attempt that cannot connect is picked again, _attempt_unary), not
        # its sub-channel's: there, grpc queued it for a connection that may never come
        self.mesh_waits = kind is CallKind.UNARY_UNARY
        self.sends_wire = self.unary_request and codecs_in_mesh
        # the mesh runs a stream's request serializer: for the wire, or (attempt
        # interceptors) for the check, the message itself going on
        self.serializes_stream = not self.unary_request and ser is not None
        self.decodes = unary_response and deser is not None
        # after a unary-response attempt: the deserializer, or the check of grpc.aio's
        # strict result (_NO_MESSAGE for no message: see _strict_unary_deserializer)
        self.decode = deser if codecs_in_mesh else _checked_unary_response
        # a unary response None is grpc.aio's "no message" unless a strict deserializer
        # ran in grpc.aio (then it is what the caller's deserializer made of a message)
        self.none_is_no_message = codecs_in_mesh or deser is None
        self.strict_deserializer = (strict_deserializer if deser is not None
                                    and (not unary_response or not codecs_in_mesh) else None)
        self.key = method if key is None else key
        # a streaming-response method: what its call object calls at a stream's first
        # response message (MeshChannel._stream_answered), None when nothing listens
        self.answered: Callable[[ClientCallDetails, Any], None] | None = None
        # the error of a call the mesh ended under its reader (MeshChannel._mesh_cut),
        # read by the call objects on that path only (meshkit._calls)
        self.mesh_cut: Callable[[str], MeshRpcError] | None = None
        # the error of an attempt a drain cut (MeshChannel._cut_of), ``None`` for any other
        # call: read by the call objects on a cancelled attempt's path only
        self.cut_of: Callable[[Any], MeshRpcError | None] | None = None
        # the channel's record, by method, of the endpoint that answered a streaming call
        # of it last from its application (_answered), None without a channel; and the
        # outcome of an endpoint's refusal of a method as not served
        # (MeshChannel._unserved_outcome), read on that failure path only
        self.served_by: dict[str, str] | None = None
        # a bidi stream's: the status its server sent, kept as it arrived, of an attempt
        # grpc.aio reports INTERNAL "Internal error from Core" (MeshChannel._kept_status),
        # read by the call objects on that failure path only (meshkit._calls)
        self.kept_status: Callable[[Any], tuple[Any, ...] | None] | None = None
        self.unserved: Callable[[Endpoint, ClientCallDetails, str | None],
                                grpc.StatusCode] | None = None

    def propagated_deadline(self, details: ClientCallDetails) -> float | None:
        """The deadline of the call being handled (``time.monotonic()`` seconds, as its
        server admitted it: :func:`~meshkit.resilience._deadline.handled_deadline`) when
        ``details`` ran under it, propagated (less the margin, as
        :meth:`_MultiCallable._open` sets it, not a shorter timeout or
        ``deadline_scope`` of the handler's own) and that deadline has (all but:
        :data:`DEADLINE_SLACK_S`) run out; else ``None``. Read on a call's
        ``DEADLINE_EXCEEDED`` only (meshkit._calls), so the server answers it
        ``DEADLINE_EXCEEDED`` (meshkit._unhandled)."""
        margin = self.margin_s
        deadline = details.deadline
        if margin is None or deadline is None:
            return None
        inherited = handled_deadline()  # not a shorter deadline_scope of the handler's
        if inherited is None or deadline != inherited - margin:  # the same sum: exact
            return None
        remaining = deadline - time.monotonic()
        if remaining > DEADLINE_SLACK_S:
            # the attempt's own timer fires up to wire_cut_s early (_launch hands grpc a
            # timeout on grpc core's grid), as much for the longest timeout it had: the
            # call's first attempt's (a wall-clock stamp); later, a status the peer sent
            started = details.attempt_started_ns
            if not started or remaining > DEADLINE_SLACK_S + wire_cut_s(
                    remaining + max(0.0, (time.time_ns() - started[0]) / 1e9)):
                return None
        return inherited

    def own_deadline(self, details: ClientCallDetails) -> bool:
        """Whether ``details`` ran under a deadline of its own while a call is being
        handled (:func:`~meshkit.resilience._deadline.handled_deadline` set): a timeout
        or a ``deadline_scope`` of the handler's shorter than that deadline less the
        margin, or a channel that does not propagate it. Read on a call's
        ``DEADLINE_EXCEEDED`` only (meshkit._calls), so a server whose handler lets a
        downstream admission refusal of such a call escape answers ``UNKNOWN``, not its
        caller's ``DEADLINE_EXCEEDED`` (meshkit._unhandled)."""
        deadline = details.deadline
        if deadline is None:
            return False
        inherited = handled_deadline()  # a shorter deadline_scope's is the call's own
        if inherited is None:
            return False
        margin = self.margin_s
        return margin is None or deadline != inherited - margin  # the same sum: exact

    def codecs(self) -> tuple[Any, Any]:
        """The serializer and deserializer the sub-channel multicallable is made with."""
        if self.in_mesh:  # the sub-channel carries bytes (stream responses: strict)
            return None, self.strict_deserializer
        return self.request_serializer, self.strict_deserializer

    def wire(self, request: Any) -> Any:
        """``request`` serialized (returned when :attr:`sends_wire`, else checked and the
        request itself returned).

        Raises:
            RequestSerializationError: the serializer raised or returned something other
                than bytes, or a method without a serializer got a request that is not
                bytes (``INTERNAL``; nothing was sent).
        """
        ser = self.request_serializer
        if ser is None:
            if isinstance(request, bytes):  # a subclass as its bytes (grpc sends bytes only)
                return request if type(request) is bytes else bytes(request)
            raise RequestSerializationError(
                self.method, f"a method without a request_serializer sends bytes, got "
                             f"{type(request).__name__}")
        out = serialize_message(self.method, ser, request)
        return out if self.sends_wire else request

    def on_method(self, conn: Any, method: str) -> Any:
        """:meth:`on` for a call a per-call interceptor sent to ``method`` (it changed
        ``ClientCallDetails.method``, as a grpc.aio interceptor's
        ``client_call_details._replace(method=...)`` does): a multicallable of ``method``
        with this method's codecs, made for the call and not cached (a caller-chosen name
        would grow the connection's cache for good).

        Raises:
            TypeError: ``method`` is not a ``str`` (grpc.aio's multicallables take the
                method as ``str``); the call fails with it, nothing is sent.
        """
        if method == self.method:
            return self.on(conn)
        if type(method) is not str:
            raise TypeError(f"ClientCallDetails.method must be a str like "
                            f"'/package.Service/Method', got {method!r}")
        factory = getattr(conn.channel, self.kind.value)
        ser, deser = self.codecs()
        if ser is not None:  # grpc.aio serializes (attempt interceptors): exact bytes
            ser = exact_bytes(ser)
        mc = factory(method, request_serializer=ser, response_deserializer=deser,
                     _registered_method=grpc_observability_active())
        if self.kind is CallKind.UNARY_UNARY:
            mc = inline_unary_unary(mc)
        if self.compresses and type(mc) is not InlineUnaryUnary:
            mc = UncompressedOnRequest(mc)
        return mc

    def on(self, conn: Any) -> Any:
        """The sub-channel multicallable of this method on an endpoint's connection
        (a registered method only under a grpc observability plugin: see
        :mod:`meshkit._registration`); for a unary-unary method, one whose calls run in the
        caller's task where :mod:`meshkit._inline` can."""
        callables = conn.callables
        mc = callables.get(self.key)
        if mc is None:
            factory = getattr(conn.channel, self.kind.value)
            ser, deser = self.codecs()
            if ser is not None:  # grpc.aio serializes (attempt interceptors): exact bytes
                ser = exact_bytes(ser)
            mc = factory(self.method, request_serializer=ser, response_deserializer=deser,
                         _registered_method=grpc_observability_active())
            if self.kind is CallKind.UNARY_UNARY:  # run in the caller's task (meshkit._inline)
                mc = inline_unary_unary(mc)
            if self.compresses and type(mc) is not InlineUnaryUnary:
                mc = UncompressedOnRequest(mc)
            callables[self.key] = mc
        return mc


class MeshChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over every endpoint of one service; build it with :func:`dial`.

    Calls accept the usual ``timeout`` (seconds), ``metadata``, ``wait_for_ready``,
    ``credentials`` and ``compression`` arguments. ``wait_for_ready=True`` also makes a
    call wait for an endpoint to appear instead of failing with ``UNAVAILABLE``; the
    channel waits for a READY endpoint (as gRPC's picker queues such a call), and a
    unary-unary attempt whose sub-channel turns out unable to connect (its connection
    died a moment before, its server gone) is picked again, not left queued on that
    sub-channel until its deadline while another endpoint is READY. A streaming call
    (of responses, of requests or both, with or without ``wait_for_ready``) is sent only
    to an endpoint whose sub-channel grpc itself reads ``READY`` at its launch; one the
    pool still read ``READY`` a moment behind grpc is picked again, nothing sent there.

    Status codes produced by the channel itself (all as :class:`meshkit.errors.MeshRpcError`):
    ``UNAVAILABLE`` when no endpoint is registered or all are failing to connect (message
    names the service, or when a unary-response call still ran on an endpoint that left
    once ``drain_timeout_s`` was up), ``DEADLINE_EXCEEDED`` when the deadline passes
    before an attempt can start, ``CANCELLED`` when the channel is closed (and for a
    response stream its endpoint's drain cut), ``INTERNAL`` for a call that
    cannot be sent as made (:class:`~meshkit.errors.InvalidCallError`: bad metadata, a
    unary request that does not serialize; raised before the pick), for a unary-unary
    response that does not deserialize
    (:class:`~meshkit.errors.ResponseDeserializationError`) and for a unary-response call
    its server ended ``OK`` without a response message (a cardinality violation, as
    grpc-go fails it; grpc.aio would hand over ``None``), both counted against the
    endpoint that answered.

    An attempt of a unary-response call that grpc failed because its endpoint's
    sub-channel could not connect (``UNAVAILABLE`` "failed to connect to all addresses",
    no metadata, the sub-channel not ``READY``: an endpoint whose server just stopped,
    still read ``READY`` for a moment) is raised as
    :class:`~meshkit.resilience._retry.ConnectFailedError` (grpc's code and details), which
    the retry policy sends to another endpoint whatever the method's idempotency: its
    request never left (:func:`~meshkit.resilience._retry.never_connected`).
    """

    def __init__(
        self, service: str, registry: Registry, options: DialOptions, *, owns_registry: bool
    ) -> None:
        inline_available()  # a bad MESHKIT_INLINE_CALLS: ConfigError here, at dial()
        # what the pool, the balancer and the certificate watcher call back: weakly, so
        # that a channel dropped without close() is collected (see __del__), not kept for
        # the loop's life by its own background tasks
        me = weakref.ref(self)
        self.service = service
        self.registry = registry
        self.options = options
        self._owns_registry = owns_registry
        # PreferZone filters move to the balancer: the zone is then preferred per call,
        # failing over on health (ZoneAwareBalancer), not per discovery answer
        filters, make_balancer = split_zone_preference(options.filters, options.balancer)
        inner = make_balancer()
        self._balancer: Balancer = (
            EjectingBalancer(inner, options.outlier, on_change=_weakly(me, "_on_ejection"),
                             on_probe_free=_weakly(me, "_on_probe_free"))
            if options.outlier is not None else inner
        )
        self.retry = RetryInterceptor(options.retry) if options.retry is not None else None
        self._timeouts: MethodMatcher[float | None] = MethodMatcher(
            options.method_timeouts, options.timeout_s, where="method_timeouts")
        self._reloader = options.tls.channel_reloader() if options.tls is not None else None
        self._tls_options = options.tls.channel_options(service) if options.tls else ()
        self._keepalive = options.keepalive_channel_args()
        telemetry = options.telemetry
        self._attempt_interceptors = options.attempt_interceptors
        keyed = (() if options.hash_key_metadata is None or not options.interceptors
                 else (_KeyFromMetadata(options.hash_key_metadata),))
        chain = (*options.interceptors, *keyed,
                 *((self.retry,) if self.retry is not None else ()))
        if telemetry is not None:
            chain = (*client_interceptors(telemetry), *chain)
            self._attempt_interceptors = (*attempt_interceptors(telemetry),
                                          *self._attempt_interceptors)
        self._attempt_interceptors = _for_every_kind(self._attempt_interceptors)
        # False: _launch is _launch_numbered, which _attempt_unary calls in place of its
        # own copy of the plain _launch
        self._launch_inline = True
        if any(isinstance(i, AttemptSpanInterceptor) for i in self._attempt_interceptors):
            # attempt spans: each attempt's interceptor told its own number and endpoint
            # (no cost on the default path, which keeps the plain _launch)
            self._launch = self._launch_numbered  # type: ignore[method-assign]
            self._launch_inline = False
        self._closing: asyncio.Task[None] | None = None  # close(): runs once, to its end
        self._plan_keys: dict[tuple[Any, ...], str] = {}
        # deserializer (a stream's; (deserializer, kind): a unary response's) -> its
        # strict wrapper
        self._strict: dict[Any, Any] = {}
        self._named: set[str] = set()  # methods whose name is a key already
        self._numbered = False  # every new key numbered (the keys started over once)
        self._plan_seq = 0
        self._unary = chain_unary(chain, self._attempt_unary)
        self._upload = chain_unary(chain, self._attempt_upload)  # stream-unary calls
        self._stream = chain_stream(chain, self._attempt_stream)
        # streams are picked so that their first response can be reported (pick_stream:
        # an outcome callback with responded(), see balancer._outlier.StreamDone), where
        # the balancer can; the streams waiting for theirs, by attempt (grpc.aio call)
        pick_stream = getattr(self._balancer, "pick_stream", None)
        self._pick_stream = pick_stream or self._balancer.pick
        self._answers = pick_stream is not None
        self._answering: dict[Any, Callable[[], None]] = {}
        self._pool = EndpointPool(service, registry, self._balancer, filters=filters,
                                  make_channel=_weakly(me, "_sub_channel", needed=True),
                                  drain_timeout_s=options.drain_timeout_s,
                                  resolve_timeout_s=options.resolve_timeout_s,
                                  diagnosis=_diagnosis(service, options.tls))
        # fail-closed rate-limit refusals, by endpoint: the shared storage's or one's own
        self._storage_refusals = _StorageRefusals(self._pool)
        self._conns = self._pool.conns
        self._left_idle = self._pool.left_idle
        # (instance id, address) of endpoints logged as not serving a method another
        # endpoint served (_served_elsewhere)
        self._not_serving_logged: set[tuple[str, str]] = set()
        # method -> the key of the endpoint that answered a streaming call of it last
        # from its application (_answered; read by _unserved_outcome)
        self._served_by: dict[str, str] = {}
        # bidi attempts (grpc.aio calls) -> the status their server sent, as it arrived
        # (_request_stream_ended; read by _kept_status)
        self._kept: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = (
            weakref.WeakKeyDictionary())
        if self._reloader is not None and options.tls is not None:
            self._pool.spawn(_watch_certificates(me, options.tls.reload_interval_s))
        track(self, kind="channel")

    def __del__(self) -> None:
        """Collected without :meth:`close` while its loop still exists (a channel dialed
        per request and dropped): it is closed in its loop (:meth:`_close_collected`).
        Before, its discovery watch and sub-channels (and, dialed without ``registry=``
        or with a URI, a registry with its poll loop and worker thread) were kept for the
        rest of the loop's life, one set per channel dropped. The pool builds no more
        sub-channels meanwhile (``EndpointPool.dropped``: a first answer's or a renewal's
        batches still to come). One closed, or closed with its loop's end, is left
        alone. Nothing here takes a lock (a collection may run
        inside any locked section): the rest runs in the loop, which holds the channel
        again until it is closed."""
        pool = getattr(self, "_pool", None)  # (a constructor that raised: nothing made)
        if pool is None or pool.closed:
            return
        # nothing more built meanwhile (its batches of new or renewed sub-channels would
        # each fail, logged at ERROR, on a channel gone): a plain assignment, no lock
        pool.dropped = True
        loop = pool._loop  # the loop it was dialed in
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (closed meanwhile, by its thread)
                loop.call_soon_threadsafe(self._close_collected)

    def _close_collected(self) -> None:
        """In its loop, for :meth:`__del__`: warning ``channel garbage-collected without
        close()`` (and a ``ResourceWarning``), then closed as :meth:`close` does (grace
        none, a registry it made itself too, its final counters recorded)."""
        if self._pool.closed or self._closing is not None:  # (closed meanwhile)
            return
        _log.warning("channel garbage-collected without close(); closing it now "
                     "(close() it, or use 'async with')", service=self.service)
        warnings.warn(f"unclosed MeshChannel of {self.service!r}", ResourceWarning,
                      source=self, stacklevel=1)
        self._closing = asyncio.get_running_loop().create_task(
            self._close(None), name=f"meshkit-close-{self.service}")

    @property
    def _closed(self) -> bool:
        return self._pool.closed

    @property
    def watch_errors(self) -> int:
        """Discovery watch failures since the channel opened."""
        return self._pool.watch_errors

    def _on_probe_free(self, key: str) -> None:
        self._pool.notify()  # a call waiting for an endpoint may take the probe now

    def _on_ejection(self, key: str, ejected: bool) -> None:
        _log.warning("endpoint ejected" if ejected else "endpoint back in rotation",
                     service=self.service, instance_id=key)
        self._pool.notify()  # the channel's state may change (get_state)

    def _sub_channel(self, address: str) -> grpc.aio.Channel:
        opts = self.options
        creds = self._reloader.credentials if self._reloader is not None else opts.credentials
        interceptors = self._attempt_interceptors or None
        # the user agent's meshkit/<version> token (a draining meshkit server refuses
        # mesh clients' new calls with a nack, leaving others to the GOAWAY: see
        # MESH_USER_AGENT): last, after a secondary user agent of the user's own, which
        # grpc core joins with it
        if creds is None:
            channel = grpc.aio.insecure_channel(
                address, options=(*self._keepalive, *opts.channel_options, _USER_AGENT),
                interceptors=interceptors, compression=opts.compression)
        else:
            # meshkit's first: grpc core keeps the first value of a repeated argument
            channel = grpc.aio.secure_channel(
                address, creds,
                options=(*self._tls_options, *self._keepalive, *opts.channel_options,
                         _USER_AGENT),
                interceptors=interceptors, compression=opts.compression)
        # its interceptors (these, and any a patch of grpc.aio's functions added, as the
        # OpenTelemetry grpc instrumentor's) wrapped so that an attempt's cancel reaches
        # the RPC under an interceptor still running (meshkit._attempts); none: as it is
        return cancel_through(channel)

    def _check_certificates(self) -> None:
        """One round of :func:`_watch_certificates`: the certificate files read again,
        the sub-channels rebuilt when they were renewed."""
        assert self._reloader is not None
        try:
            # force: the watcher keeps the interval; check()'s own (by tls.clock) would
            # skip a round whose sleep woke a hair early by that clock (uvloop's
            # millisecond timers), taking a renewal one interval late
            renewed = self._reloader.check(force=True)
        except Exception as exc:  # a half-written file: keep the current credentials
            _log.warning("client certificate reload failed", service=self.service,
                         error=str(exc))
            return
        if renewed:
            self.rebuild_sub_channels()

    def rebuild_sub_channels(self) -> None:
        """Give every endpoint a new sub-channel (e.g. with a renewed client certificate);
        calls in flight finish on the old one, kept until its own last call ends however
        long (a watch, a subscription), or for ``drain_timeout_s`` once its endpoint
        leaves the registry (:meth:`meshkit._pool.EndpointPool.rebuild`)."""
        self._pool.rebuild()

    # -- attempts ----------------------------------------------------------------------
    def _launch(self, details: ClientCallDetails, ep: Endpoint, done: Any,
                request: Any, md: list[tuple[str, Any]]) -> Any:
        """Start one attempt on the picked endpoint ``ep`` (``done``: its outcome callback,
        the pick's) on its sub-channel, and return the attempt's grpc call (the endpoint
        and callback are the caller's already: no tuple built and taken apart per call).
        ``md`` is the attempt's metadata as it was when the attempt began: hedges share
        ``details``, and one waiting for an endpoint must not send a later hedge's.
        :meth:`_attempt_unary` has a copy of it written out: change both."""
        if self._left_idle:  # others left IDLE beside this one: a call is activity
            self._pool.connect_idle()
        deadline = details.deadline
        plan = details.codec
        if deadline is None:  # (set here, not before the test: 2 bytecodes a timed call)
            timeout = None
        else:
            timeout = deadline - time.monotonic()
            if timeout <= 0:  # nothing sent: no endpoint's outcome (not its failure)
                done(_CANCELLED, 0.0)
                raise MeshRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            inherited = _current_deadline()
            if inherited is not None and plan.margin_s is not None \
                    and deadline == inherited - plan.margin_s:
                # the handled call's deadline, propagated: grpc core rounds the timeout
                # it sends up (up to 1 %), which the next hop would take for its own
                timeout = wire_timeout_s(timeout)
        details.attempts.append(ep)
        details.attempt_started_ns.append(time.time_ns())
        try:
            conn = self._conns[ep.key]
            if details.method is plan.method:
                start = conn.callables.get(plan.key)  # plan.on(conn)'s cache, read inline
                if start is None:
                    start = plan.on(conn)
            else:  # an interceptor sent the call to another method (ClientCallDetails)
                start = plan.on_method(conn, details.method)
            call = start(
                request,
                timeout=timeout,
                # grpc.aio's public path wants its own type (a plain sequence is checked
                # with isinstance(Sequence), abc's slow path, on every call before the same
                # conversion); an inline attempt takes the pairs as they are
                metadata=(md if type(start) is InlineUnaryUnary else Metadata(*md))
                if md else None,
                credentials=details.credentials,
                wait_for_ready=None if plan.mesh_waits else details.wait_for_ready,
                compression=details.compression,
            )
        except Exception:  # an argument grpc refuses (e.g. credentials): nobody's outcome
            done(_CANCELLED, 0.0)
            raise
        details.last_call = call
        ep.in_flight += 1
        ep.calls += 1
        return call

    def _launch_numbered(self, details: ClientCallDetails, ep: Endpoint, done: Any,
                         request: Any, md: list[tuple[str, Any]]) -> Any:
        """:meth:`_launch` with the attempt's number (1-based) and endpoint set in
        :data:`~meshkit.observability._client.current_attempt` while it starts: grpc.aio
        runs an :class:`~meshkit.observability.AttemptSpanInterceptor` in a task that
        copies the context now and runs a loop turn later, when ``details.attempts`` may
        hold hedges started since. Bound in place of :meth:`_launch` when such an
        interceptor is on the sub-channels."""
        token = current_attempt.set((len(details.attempts) + 1, ep))
        try:
            return MeshChannel._launch(self, details, ep, done, request, md)
        finally:
            current_attempt.reset(token)

    async def _attempt_unary(self, details: ClientCallDetails, request: Any) -> Any:
        # before the pick: a call that cannot be sent is the caller's error, no endpoint's
        md = details.metadata
        if md:
            check_metadata(md, request=True)
        plan = details.codec
        if plan.unary_request:
            # bytes without a serializer go as they are, without wire()'s frame
            if plan.request_serializer is not None or type(request) is not bytes:
                request = plan.wire(request)
        else:  # a request stream (stream-unary calls take self._upload, to it)
            return await self._attempt_upload(details, request)
        # no attempt of this round yet: a call that fails before one (no endpoint, a
        # spent deadline) settles on its error alone, not on an earlier attempt's call
        details.last_call = None
        if self._pool.picking:  # discovery answered, not closed (else pick_slow waits)
            picked = self._balancer.pick(details.request_key, details.attempts)
        else:
            picked = None
        while True:  # once, but for a wait_for_ready call sent back unsent (below)
            # (not READY: connecting; the slot, read without Endpoint.state's property)
            if picked is None or picked[0]._state is not _READY:
                picked = await self._pool.pick_slow(details, picked)
            ep, done = picked
            if self._launch_inline:
                # self._launch(details, ep, done, request, md) written out (a frame and
                # its call less per unary attempt; plan and md are this frame's): change
                # both
                if self._left_idle:  # others left IDLE beside this one: a call is activity
                    self._pool.connect_idle()
                deadline = details.deadline
                if deadline is None:
                    timeout = None
                else:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:  # nothing sent: no endpoint's outcome
                        done(_CANCELLED, 0.0)
                        raise MeshRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           "deadline exceeded")
                    inherited = _current_deadline()
                    if inherited is not None and plan.margin_s is not None \
                            and deadline == inherited - plan.margin_s:
                        timeout = wire_timeout_s(timeout)  # (see _launch)
                details.attempts.append(ep)
                details.attempt_started_ns.append(time.time_ns())
                try:
                    conn = self._conns[ep.key]
                    if details.method is plan.method:
                        start = conn.callables.get(plan.key)
                        if start is None:
                            start = plan.on(conn)
                    else:  # an interceptor sent the call to another method
                        start = plan.on_method(conn, details.method)
                    call = start(
                        request,
                        timeout=timeout,
                        metadata=(md if type(start) is InlineUnaryUnary else Metadata(*md))
                        if md else None,
                        credentials=details.credentials,
                        wait_for_ready=None if plan.mesh_waits else details.wait_for_ready,
                        compression=details.compression,
                    )
                except Exception:  # an argument grpc refuses: nobody's outcome
                    done(_CANCELLED, 0.0)
                    raise
                details.last_call = call
                ep.in_flight += 1
                ep.calls += 1
            else:  # _launch_numbered
                call = self._launch(details, ep, done, request, md)
            t0 = _perf()
            try:
                response = await call
                break
            except AioRpcError as exc:
                code = exc.code()
                if _no_endpoints_outcome(code, exc, ep, self._storage_refusals):
                    done(_CANCELLED, _perf() - t0)  # no endpoint's outcome
                    raise
                ep.failures += 1
                if code is _UNIMPLEMENTED and _not_served(exc):
                    # its server serves no such method: a stale entry whose address
                    # another service's server took? Asked of another READY endpoint
                    # (below), which decides this one's outcome
                    picked = self._balancer.pick(details.request_key, details.attempts)
                    if picked is None or picked[0].state is not _READY:
                        done(code, _perf() - t0)
                        raise
                    refusal = (exc, _perf() - t0)
                else:
                    done(_attempt_outcome(exc), _perf() - t0)
                    if code is not _UNAVAILABLE:
                        raise
                    unsent = self._unavailable(ep, exc, t0)
                    if unsent is None:
                        raise
                    if not details.wait_for_ready:
                        raise unsent from exc
                    # wait_for_ready: the request never left (the sub-channel could not
                    # connect, now read so by the pool): wait for a READY endpoint and
                    # send it there, as gRPC's picker queues a wait-for-ready call; no
                    # retry
                    picked = None
            except asyncio.CancelledError:
                done(_CANCELLED, _perf() - t0)
                self._raise_if_call_cancelled()
                raise
            except Exception:  # refused locally (grpc core, a codec): no endpoint's outcome
                done(_CANCELLED, _perf() - t0)
                raise
            finally:
                ep.in_flight -= 1
            if picked is not None:  # refused as not served: another endpoint's turn
                ep, done, call, t0, response = await self._served_elsewhere(
                    details, request, md, (ep, done, *refusal), picked)
                break
        # OK without a message: before any deserializer sees None (the sub-channel's None;
        # under a strict deserializer, _NO_MESSAGE, which plan.decode raises for)
        if response is None and plan.none_is_no_message:
            ep.failures += 1
            done(_INTERNAL, _perf() - t0)
            raise _no_response(plan.method)
        if plan.decodes:
            try:
                response = plan.decode(response)
            except _MissingMessage:
                ep.failures += 1
                done(_INTERNAL, _perf() - t0)
                raise _no_response(plan.method) from None
            except Exception as exc:
                ep.failures += 1
                done(_INTERNAL, _perf() - t0)
                raise ResponseDeserializationError(plan.method, type(exc).__name__) from exc
        done(_OK, _perf() - t0)
        details.last_call = call  # the attempt that answered (hedges run side by side)
        return response

    async def _served_elsewhere(
            self, details: ClientCallDetails, request: Any, md: list[tuple[str, Any]],
            refused: tuple[Endpoint, Any, AioRpcError, float],
            picked: tuple[Endpoint, Any]) -> tuple[Endpoint, Any, Any, float, Any]:
        """A unary attempt's endpoint answered that its server serves no such method
        (``refused``: the endpoint, its outcome callback not yet called, the error,
        :func:`_not_served`, and its latency): the attempt is sent once more, to
        ``picked``, another READY endpoint. None of it ran on the first (grpc's own
        refusal of an unknown method), so this is safe whatever the method, and no retry.

        When the second endpoint answers from its application (OK, or a status other than
        such a refusal, ``UNAVAILABLE``, ``CANCELLED`` or a nack), the method is served by
        the service and the first endpoint's server is another service's (a registry
        entry that outlived its instance, its address reused: a plaintext mesh has no
        identity check to refuse it at the handshake): the first's outcome is
        ``UNAVAILABLE`` (an outlier-ejection failure, P2C's penalty) and a warning
        ``endpoint does not serve the method`` names it (once per instance and
        address). Otherwise its outcome is its own ``UNIMPLEMENTED`` (a method no
        endpoint serves ejects none). Returns the second attempt's ``(ep, done, call,
        t0, response)`` for the caller to decode; raises its error otherwise (an
        ``UNAVAILABLE`` of a sub-channel that could not connect as a
        :class:`~meshkit.resilience._retry.ConnectFailedError`). The failure path only.
        """
        first, first_done, refusal, latency_s = refused
        served = False
        try:
            ep, done = picked
            call = self._launch(details, ep, done, request, md)
            t0 = _perf()
            try:
                response = await call
            except AioRpcError as exc:
                code = exc.code()
                if _no_endpoints_outcome(code, exc, ep, self._storage_refusals):
                    done(_CANCELLED, _perf() - t0)
                    raise
                ep.failures += 1
                done(_attempt_outcome(exc), _perf() - t0)
                if code is _UNAVAILABLE:
                    unsent = self._unavailable(ep, exc, t0)
                    if unsent is not None:
                        raise unsent from exc
                    raise
                served = code is not _CANCELLED and not is_nack(exc) and not (
                    code is _UNIMPLEMENTED and _not_served(exc))
                raise
            except asyncio.CancelledError:
                done(_CANCELLED, _perf() - t0)
                self._raise_if_call_cancelled()
                raise
            except Exception:  # refused locally: no endpoint's outcome
                done(_CANCELLED, _perf() - t0)
                raise
            finally:
                ep.in_flight -= 1
            served = True
            return ep, done, call, t0, response
        finally:
            if served:
                first_done(_UNAVAILABLE, latency_s)
                self._warn_not_serving(first, details.method, refusal.details())
            else:
                first_done(_UNIMPLEMENTED, latency_s)

    def _request_stream_ended(self, call: Any) -> None:
        """The done callback of a bidi attempt (``call``), run as its status arrives (the
        server's: grpc.aio runs done callbacks at the first status it sets): the request
        writer stopped (:func:`_end_request_stream`), and the status kept
        (:func:`_status_now`: code, details, initial and trailing metadata, debug string)
        for :meth:`_kept_status`, unless it is grpc.aio's own ``INTERNAL`` "Internal error
        from Core". A write of the caller's own (``write()``) in flight as the server
        ended the call fails after that status, and grpc.aio (1.85, grpc/grpc#36066) then
        replaces the call's status with that ``INTERNAL`` (49 of 50 bidi streams whose
        handler aborted at once while their caller wrote 50 messages): the call objects
        give the kept status back (:mod:`meshkit._calls`). One done callback per bidi
        attempt, its status read once (four coroutines run to their end at once)."""
        _end_request_stream(call)
        status = _status_now(call)
        if status is None:
            return
        if status[0] is _INTERNAL and status[1] == _CORE_INTERNAL:
            # grpc.aio's stand-in, the server's status still to come (after the
            # responses): the attempt's end is held until they are read, or the call is
            # collected (meshkit._calls._HeldEnd), the balancer's first-response
            # callback with it (this table would keep a call dropped unread)
            held = hold_end(call)
            if held is not None:
                held.responded = self._answering.pop(call, None)
            return
        with contextlib.suppress(TypeError):  # an unhashable call object: not kept
            self._kept[call] = status

    def _kept_status(self, call: Any) -> tuple[Any, ...] | None:
        """The status ``call``'s server sent, kept as it arrived
        (:meth:`_request_stream_ended`): ``(code, details, initial metadata, trailing
        metadata, debug string)``, or ``None`` (not a bidi attempt, or its first status
        was grpc.aio's ``INTERNAL``). Asked on the path of a call grpc.aio reports
        ``INTERNAL`` only."""
        try:
            return self._kept.get(call)
        except TypeError:  # an unhashable call object (an interceptor's own): not kept
            return None

    def _warn_not_serving(self, ep: Endpoint, method: str, refusal: str | None) -> None:
        """Log ``endpoint does not serve the method`` (a warning) for ``ep``, whose server
        refused ``method`` as unknown (``refusal``: its details) while another endpoint
        serves it: once per instance and address. The failure path only."""
        seen = (ep.key, ep.address)
        if seen not in self._not_serving_logged:
            if len(self._not_serving_logged) >= _NOT_SERVING_LOGGED_MAX:
                self._not_serving_logged.clear()
            self._not_serving_logged.add(seen)
            _log.warning("endpoint does not serve the method; another endpoint of the "
                         "service does (a registry entry whose address another server "
                         "took?)", service=self.service, instance_id=ep.key,
                         address=ep.address, method=method, details=refusal)

    def _unserved_outcome(self, ep: Endpoint, details: ClientCallDetails,
                          refusal: str | None) -> grpc.StatusCode:
        """The outcome to report for a streaming attempt (a response stream, an upload)
        that endpoint ``ep`` refused as a method its server does not serve
        (:func:`_not_served`; ``refusal``: its details). A stream cannot be sent on to
        another endpoint to ask, as a unary attempt is (:meth:`_served_elsewhere`): its
        call object was handed out, its request stream taken. So the method's own record
        decides: when another endpoint still in the pool answered the method last from
        its application (the channel's record, :func:`_answered`: a stream's first
        response message or ``OK`` end, an upload's response), ``ep``'s server is
        another service's (a registry entry whose address another server took):
        ``UNAVAILABLE`` (an outlier-ejection failure, P2C's penalty) and the warning of
        :meth:`_warn_not_serving`. Otherwise ``UNIMPLEMENTED`` (ejects nobody: a method
        no endpoint serves, or not known to be served yet); when the endpoint that
        answered it last refuses it now (its server no longer serves it), the record is
        forgotten. The failure path only."""
        method = details.method
        served_by = self._served_by.get(method)
        if served_by is None:
            return _UNIMPLEMENTED
        if served_by == ep.key:
            del self._served_by[method]
            return _UNIMPLEMENTED
        if served_by not in self._pool.endpoints:
            return _UNIMPLEMENTED
        self._warn_not_serving(ep, details.method, refusal)
        return _UNAVAILABLE

    def _raise_if_call_cancelled(self) -> None:
        """In an attempt that ended with ``CancelledError``: when the current task itself
        is not being cancelled, the call was, and the caller gets a
        :class:`~meshkit.errors.MeshRpcError`, not a ``CancelledError`` in a task nobody
        cancelled: ``CANCELLED`` when the channel was closed; ``UNAVAILABLE`` when its
        endpoint left (or its sub-channel was replaced) and ``drain_timeout_s`` ran out,
        the connection taken away under it, as grpc-java's "closed transport due to
        address change" (retried as ``UNAVAILABLE`` is: for calls safe to repeat)."""
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            raise self._mesh_cut("call") from None

    def _cut_of(self, call: Any) -> MeshRpcError | None:
        """The error of attempt ``call`` (a grpc.aio call) when a drain cut it (its
        endpoint left and ``drain_timeout_s`` ran out: ``UNAVAILABLE``, marked by the pool
        when it cut it, :attr:`EndpointPool.cut_calls`), else ``None`` (a call the caller
        or the channel's close cancelled). The error path only."""
        try:
            cut = call in self._pool.cut_calls
        except TypeError:  # an unhashable call object (an interceptor's own): not ours
            return None
        if not cut:
            return None
        return MeshRpcError(_UNAVAILABLE, f"stream to {self.service!r} cut: its endpoint "
                            "left and drain_timeout_s ran out")

    def _mesh_cut(self, what: str) -> MeshRpcError:
        """The error of a ``what`` ("call", "stream") whose attempt the mesh ended under
        it (grpc.aio's ``CancelledError`` in a task nobody cancelled): ``CANCELLED`` when
        the channel was closed; else ``UNAVAILABLE``, its endpoint having left (or its
        sub-channel having been replaced) and ``drain_timeout_s`` run out (see
        :meth:`_raise_if_call_cancelled`). Response streams' call objects ask it through
        their method's plan (``_MethodPlan.mesh_cut``)."""
        if self._pool.closed:
            return MeshRpcError(_CANCELLED, f"{what} to {self.service!r} cancelled: the "
                                "channel was closed")
        return MeshRpcError(_UNAVAILABLE, f"{what} to {self.service!r} cut: its endpoint "
                            "left and drain_timeout_s ran out")

    async def _attempt_upload(self, details: ClientCallDetails, request: Any) -> Any:
        """One attempt of a stream-unary call (an upload), ``request`` its request
        iterator (sync or async; the call object's own queue for ``write()``).

        Unlike a unary attempt, the attempt's time is not all its endpoint's: until the
        request stream is half-closed (the iterator ends; ``done_writing()``) the server
        waits for the caller, however slow it sends. So the balancer hears: a latency
        from the half-close (none, a negative one, when the attempt ended before it);
        ``CANCELLED`` (no endpoint's outcome) for a deadline that ran out, or a cancel,
        before it, since the server never had the whole request (as a response stream's
        deadline, :func:`_report_stream`; Envoy's route timeout starts at the end of the
        downstream request); otherwise as a unary attempt. It is picked as a stream
        (``pick_stream``): sent as a half-open probe, its endpoint returns to rotation
        undecided after ``base_ejection_s`` rather than being held out for the upload's
        life (:mod:`meshkit.balancer._outlier`)."""
        md = details.metadata
        if md:  # before the pick, as a unary attempt's
            check_metadata(md, request=True)
        plan = details.codec
        # its messages and its own exceptions checked, its end timed
        upload = _Upload()
        messages = serialized(details, plan.request_serializer, request, plan.in_mesh,
                              upload.ended)
        details.last_call = None  # (as _attempt_unary)
        picked = await self._stream_pick(details)
        ep, done = picked
        call = self._launch(details, ep, done, messages, md)
        call.add_done_callback(_end_request_stream)  # (grpc/grpc#36066)
        try:
            response = await call
        except AioRpcError as exc:
            code = exc.code()
            if _no_endpoints_outcome(code, exc, ep, self._storage_refusals):
                done(_CANCELLED, upload.latency())  # no endpoint's outcome
                raise
            if upload.sent_at is None and (code is _DEADLINE_EXCEEDED or code is _CANCELLED):
                done(_CANCELLED, -1.0)  # the caller was still sending: no endpoint's outcome
                raise
            ep.failures += 1
            if code is _UNIMPLEMENTED and _not_served(exc):
                done(self._unserved_outcome(ep, details, exc.details()), upload.latency())
                raise
            done(_attempt_outcome(exc), upload.latency())
            if code is _UNAVAILABLE:
                # (a reading after the attempt's launch: see EndpointPool.leaving)
                unsent = self._unavailable(ep, exc, upload.sent_at)
                if unsent is not None:
                    raise unsent from exc
            raise
        except asyncio.CancelledError:
            done(_CANCELLED, upload.latency())
            err = codec_error(details)  # grpc.aio cancels a call whose iterator raised
            if err is not None:
                raise err from err.__cause__
            self._raise_if_call_cancelled()
            raise
        except Exception:  # refused locally (grpc core, a codec): no endpoint's outcome
            done(_CANCELLED, upload.latency())
            raise
        finally:
            ep.in_flight -= 1
        if response is None and plan.none_is_no_message:  # (as a unary attempt's)
            ep.failures += 1
            done(_INTERNAL, upload.latency())
            raise _no_response(plan.method)
        if plan.decodes:
            try:
                response = plan.decode(response)
            except _MissingMessage:
                ep.failures += 1
                done(_INTERNAL, upload.latency())
                raise _no_response(plan.method) from None
            except Exception as exc:
                ep.failures += 1
                done(_INTERNAL, upload.latency())
                raise ResponseDeserializationError(plan.method, type(exc).__name__) from exc
        done(_OK, upload.latency())
        _answered(self._served_by, details.method, ep.key)  # (see _unserved_outcome)
        details.last_call = call  # the attempt that answered (hedges run side by side)
        return response

    async def _stream_pick(self, details: ClientCallDetails) -> tuple[Endpoint, Any]:
        """The pick of a streaming attempt (a response stream, an upload): a READY
        endpoint (:meth:`~meshkit._pool.EndpointPool.pick_slow` when the balancer's pick
        is not one), its sub-channel's own connectivity read before the attempt is sent
        there. The pool hears of a sub-channel's change a moment after grpc (an endpoint
        whose server just stopped or died still reads ``READY``): a stream sent there
        failed ``UNAVAILABLE`` "failed to connect to all addresses" at its first read,
        and one with ``wait_for_ready`` was queued by grpc on that sub-channel until its
        deadline (for ever without one), while another endpoint stood READY; a unary
        attempt is picked again after such a failure (:meth:`_attempt_unary`), but a
        stream's failure comes after its call object was handed out, its request
        iterator's first message taken. So a sub-channel grpc no longer reads ``READY``
        is given that state in the pool now (:meth:`~meshkit._pool.EndpointPool.observed`)
        and the call picked again, its first pick settled as no outcome: nothing was
        sent. So is a pick the balancer chose while it connects once its wait is capped
        (``pick_slow``: a ring hash's key owner): the stream waits on here, within its
        deadline, until that connection is made (then sent) or fails (then picked
        elsewhere), not queued on a sub-channel whose connection may fail under it. One
        ``get_state()`` per streaming attempt.

        Raises:
            MeshRpcError, NoEndpointsError: as :meth:`~meshkit._pool.EndpointPool.pick_slow`.
        """
        pool = self._pool
        picked = None
        if pool.picking:  # discovery answered, not closed (else pick_slow waits)
            picked = self._pick_stream(details.request_key, details.attempts)
        while True:
            # (not READY: connecting; the slot, read without Endpoint.state's property)
            if picked is None or picked[0]._state is not _READY:
                picked = await pool.pick_slow(details, picked)
            ep = picked[0]
            state = self._sub_channel_state(ep)
            if state is None or state is _READY_CONN:  # (None: nothing known)
                return picked
            pool.observed(ep, pool.state_of(state))
            if ep.state is _READY:  # not the pool's (it left): sent as picked
                return picked
            picked[1](_CANCELLED, 0.0)  # not sent: no endpoint's outcome
            picked = None if pool.closed else self._pick_stream(details.request_key,
                                                                details.attempts)

    def _sub_channel_state(self, ep: Endpoint) -> grpc.ChannelConnectivity | None:
        """grpc's own connectivity of ``ep``'s sub-channel now, or ``None`` when nothing
        is known (no sub-channel kept for it, or one closed or foreign that cannot be
        read)."""
        conn = self._conns.get(ep.key)
        if conn is None:
            return None
        try:
            state: grpc.ChannelConnectivity = conn.channel.get_state()
        except Exception:  # a closed or foreign sub-channel: nothing known
            return None
        return state

    def _unavailable(self, ep: Endpoint, exc: AioRpcError,
                     started: float | None = None) -> ConnectFailedError | None:
        """The failure path of a unary-response attempt on ``ep`` that ended
        ``UNAVAILABLE`` (``exc``), after its outcome was reported. A draining server's
        refusal (:func:`~meshkit.resilience._retry.draining_refusal`) takes ``ep`` out of
        picking for its current connection (:meth:`~meshkit._pool.EndpointPool.leaving`,
        ``started``: the attempt's ``perf_counter()`` start or a later reading, ``None``
        when not known), and ``None`` is returned (the nack is retried as it is). When
        grpc failed it because the endpoint's sub-channel could not connect
        (:func:`~meshkit.resilience._retry.never_connected`, with the sub-channel's
        connectivity read now), the endpoint takes that state at once (the pool's own
        tracking hears of it a moment later, and meanwhile more calls were picked onto an
        endpoint read ``READY``), and a
        :class:`~meshkit.resilience._retry.ConnectFailedError` is returned for the caller
        to raise, which the retry interceptor sends to another endpoint whatever the
        method's idempotency. ``None`` otherwise (the error stays as it is), also when
        ``ep`` has left the pool or its sub-channel cannot be read."""
        details = exc.details()
        trailers = exc.trailing_metadata()
        pool = self._pool
        if trailers:
            if draining_refusal(_UNAVAILABLE, details, trailers):
                pool.leaving(ep, started)
            return None
        if details is None or pool.endpoints.get(ep.key) is not ep:
            return None
        state = self._sub_channel_state(ep)
        if state is None:
            return None
        if not never_connected(_UNAVAILABLE, details, exc.initial_metadata(), trailers, state):
            return None
        pool.observed(ep, pool.state_of(state))
        return ConnectFailedError(details, exc.debug_error_string())

    async def _attempt_stream(self, details: ClientCallDetails, request: Any) -> Any:
        md = details.metadata
        if md:
            check_metadata(md, request=True)
        plan = details.codec
        if plan.unary_request:
            request = plan.wire(request)
        elif request is not None:  # a request iterator (None: the caller writes)
            request = serialized(details, plan.request_serializer, request, plan.in_mesh)
        picked = await self._stream_pick(details)
        ep, done = picked
        call = self._launch(details, ep, done, request, md)
        if not plan.unary_request:  # a bidi stream (grpc/grpc#36066)
            call.add_done_callback(self._request_stream_ended)
        responded = getattr(done, "responded", None)
        if responded is None:
            def finished(c: Any) -> None:
                ep.in_flight -= 1
                self._pool.spawn_in_own_loop(_report_stream(
                    c, ep, done, details, self._storage_refusals, self._pool))
        else:  # the balancer hears of the stream's first response (_stream_answered)
            answering = self._answering
            answering[call] = responded

            def finished(c: Any) -> None:
                ep.in_flight -= 1
                answering.pop(c, None)
                self._pool.spawn_in_own_loop(_report_stream(
                    c, ep, done, details, self._storage_refusals, self._pool))

        # held while a bidi attempt's end is (_request_stream_ended)
        add_end_callback(call, finished)
        return call

    def _stream_answered(self, details: ClientCallDetails, call: Any) -> None:
        """The first response message of a stream was read (from ``call``, the call its
        call object settled on: the attempt, or a retrying call over it, then the
        attempt is ``details.last_call``): the balancer's ``responded()`` of that
        attempt, once (P2C stops counting it as pending, a half-open probe is decided;
        Finagle's and Linkerd's PeakEwma count a request until its response starts).
        The channel's record of the endpoint that answered the method is that attempt's
        endpoint (:func:`_answered`, see :meth:`_unserved_outcome`)."""
        answering = self._answering
        responded = answering.pop(call, None)
        if responded is None:
            responded = answering.pop(details.last_call, None)
            if responded is None and (held := held_end(call) or held_end(
                    details.last_call)) is not None:
                # its end held, the callback with it (_request_stream_ended)
                responded, held.responded = held.responded, None
        if responded is not None:
            responded()
        if details.attempts:
            _answered(self._served_by, details.method, details.attempts[-1].key)

    def _plan(self, method: str, kind: CallKind, ser: Any, deser: Any) -> _MethodPlan:
        in_mesh = not self._attempt_interceptors
        strict = None
        streams = kind is CallKind.UNARY_STREAM or kind is CallKind.STREAM_STREAM
        if deser is not None and (not in_mesh or streams):
            # one wrapper per deserializer and response cardinality: keys compare
            key = deser if streams else (deser, kind)
            strict = self._strict.get(key)
            if strict is None:
                strict = self._strict[key] = (strict_deserializer(deser) if streams
                                              else _strict_unary_deserializer(deser))
        opts = self.options
        plan = _MethodPlan(method, kind, ser, deser, self._timeouts.lookup(method),
                           codecs_in_mesh=in_mesh, strict_deserializer=strict,
                           margin_s=opts.deadline_margin_s if opts.propagate_deadline
                           else None)
        plan.compresses = bool(opts.compression)
        plan.mesh_cut = self._mesh_cut
        plan.cut_of = self._cut_of
        plan.unserved = self._unserved_outcome
        plan.kept_status = self._kept_status
        plan.served_by = self._served_by
        if self._answers and (kind is CallKind.UNARY_STREAM
                              or kind is CallKind.STREAM_STREAM):
            plan.answered = self._stream_answered
        # one sub-channel multicallable per method and codec pair (two stubs of one method
        # with other codecs must not share the first's): the first pair ever keys by the
        # method's name, others by a key never given out before. Bounded: past
        # _MAX_PLAN_KEYS pairs (codecs made per stub), the keys and the endpoints'
        # multicallables (a cache) start over, and so do the names given out as keys
        # (a gateway's ever new names grew them for good): from then on every key is
        # numbered, so none given out before (held by a stub's plan) is given again.
        keys = self._plan_keys
        ident = (method, kind, *plan.codecs())
        key = keys.get(ident)
        if key is None:
            if len(keys) >= _MAX_PLAN_KEYS:
                keys.clear()
                self._strict.clear()
                self._named.clear()
                self._numbered = True
                for conn in self._conns.values():
                    conn.callables.clear()
            if self._numbered or method in self._named:
                self._plan_seq += 1
                key = f"{method}#{self._plan_seq}"
            else:
                self._named.add(method)
                key = method
            keys[ident] = key
        plan.key = key
        return plan

    # -- grpc.aio.Channel ---------------------------------------------------------------
    def unary_unary(self, method: str,
                    request_serializer: Callable[[_TRequest], bytes] | None = None,
                    response_deserializer: Callable[[bytes], _TResponse] | None = None,
                    _registered_method: bool | None = False,
                    ) -> grpc.aio.UnaryUnaryMultiCallable[_TRequest, _TResponse]:
        """A multicallable for a unary-unary method (what generated stubs call). Typed as
        types-grpcio types ``grpc.aio.Channel``: generic over the request and response
        types its codecs take and give, so a request of another type is a type error.

        Args:
            method: the full method name, ``"/package.Service/Method"``.
            request_serializer: ``request -> bytes`` (generated stubs pass
                ``Request.SerializeToString``); ``None`` (default): requests are bytes.
            response_deserializer: ``bytes -> response`` (``Response.FromString``);
                ``None`` (default): responses are bytes.
            _registered_method: grpc's registered-method flag (generated stubs pass it);
                unused.

        The other three kinds take the same arguments.
        """
        return _UnaryUnaryMultiCallable(self, self._plan(
            method, CallKind.UNARY_UNARY, request_serializer, response_deserializer))

    def unary_stream(self, method: str,
                     request_serializer: Callable[[_TRequest], bytes] | None = None,
                     response_deserializer: Callable[[bytes], _TResponse] | None = None,
                     _registered_method: bool | None = False,
                     ) -> grpc.aio.UnaryStreamMultiCallable[_TRequest, _TResponse]:
        """A multicallable for a unary-stream (server streaming) method."""
        return _UnaryStreamMultiCallable(self, self._plan(
            method, CallKind.UNARY_STREAM, request_serializer, response_deserializer))

    def stream_unary(self, method: str,
                     request_serializer: Callable[[_TRequest], bytes] | None = None,
                     response_deserializer: Callable[[bytes], _TResponse] | None = None,
                     _registered_method: bool | None = False,
                     ) -> grpc.aio.StreamUnaryMultiCallable[_TRequest, _TResponse]:
        """A multicallable for a stream-unary (client streaming) method."""
        return _StreamUnaryMultiCallable(self, self._plan(
            method, CallKind.STREAM_UNARY, request_serializer, response_deserializer))

    def stream_stream(self, method: str,
                      request_serializer: Callable[[_TRequest], bytes] | None = None,
                      response_deserializer: Callable[[bytes], _TResponse] | None = None,
                      _registered_method: bool | None = False,
                      ) -> grpc.aio.StreamStreamMultiCallable[_TRequest, _TResponse]:
        """A multicallable for a bidirectional streaming method."""
        return _StreamStreamMultiCallable(self, self._plan(
            method, CallKind.STREAM_STREAM, request_serializer, response_deserializer))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """Best connectivity over the endpoints in rotation: READY if any is, else
        IDLE/CONNECTING, else TRANSIENT_FAILURE; an ejected endpoint counts as failing
        while another is in rotation, and by its connection when none can take a call
        (panic routing sends calls to it then: see :mod:`meshkit.balancer`'s outlier
        ejection), so TRANSIENT_FAILURE only when no endpoint can connect, or when there
        is no endpoint (discovery answered with none, the filters kept none, or the
        registry reports it cannot be read: calls fail ``UNAVAILABLE``, as gRPC's on an
        empty or failed resolution); IDLE before the first discovery answer and when
        every endpoint not failing was left IDLE (its server closed the unused
        connection: nothing connects until a call, or ``try_to_connect``, asks), else
        CONNECTING; SHUTDOWN once closed."""
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        pool = self._pool
        endpoints = pool.endpoints
        if not endpoints:
            # gRPC's channel reads an empty resolver answer or a resolver error as
            # TRANSIENT_FAILURE (its calls fail UNAVAILABLE, as these do); IDLE only
            # before the first discovery answer
            if pool.resolved.is_set() or pool.registry_unreadable():
                return grpc.ChannelConnectivity.TRANSIENT_FAILURE
            return grpc.ChannelConnectivity.IDLE
        if try_to_connect:  # endpoints left IDLE (connections closed while unused) connect
            self._pool.connect_idle()
        balancer = self._balancer
        out = set(balancer.ejected()) if isinstance(balancer, EjectingBalancer) else ()
        # the best state of an endpoint in rotation, from the endpoints kept by state
        # (not a scan of every endpoint at each change a watcher wakes on)
        by_state = pool.by_state
        best = next((state for state in (EndpointState.READY, EndpointState.IDLE)
                     if any(ep.key not in out for ep in by_state.of(state))),
                    EndpointState.FAILING)
        if best is EndpointState.FAILING and out:  # panic routing takes the ejected ones
            best = min((ep.state for key, ep in endpoints.items() if key in out),
                       default=EndpointState.FAILING)
        if best is EndpointState.IDLE:
            # none READY: connecting, unless every endpoint not failing was left IDLE
            # (its server closed the unused connection): nothing connects until a call
            # asks, and grpc.aio's channel reads IDLE then
            idle = pool.left_idle
            if idle and all(ep.key in idle for ep in by_state.of(EndpointState.IDLE)):
                return grpc.ChannelConnectivity.IDLE
        return {
            EndpointState.READY: grpc.ChannelConnectivity.READY,
            EndpointState.IDLE: grpc.ChannelConnectivity.CONNECTING,
            EndpointState.FAILING: grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        }[best]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once :meth:`get_state` differs from ``last_observed_state``; one
        waiting when the channel closes returns (the state went to ``SHUTDOWN``), as
        grpc.aio's.

        Raises:
            grpc.aio.UsageError: the channel was closed when this was called, as
                grpc.aio's: a state-watching loop's next call ends it instead of spinning
                on ``SHUTDOWN``.
        """
        pool = self._pool
        while self.get_state() == last_observed_state:
            if self._closed:
                raise grpc.aio.UsageError("Channel is closed.")
            if pool.resolved.is_set():
                await pool.changed()
                continue
            # before the first discovery answer the state also turns TRANSIENT_FAILURE
            # when the registry reports it cannot be read, which wakes nobody: looked at
            # every UNREADABLE_POLL_S meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UNREADABLE_POLL_S):
                    await pool.changed()

    async def channel_ready(self) -> None:
        """Wait until at least one endpoint is READY (no timeout; wrap in ``wait_for``);
        endpoints left IDLE are asked to connect, as grpc.aio's ``channel_ready``.

        Raises:
            grpc.aio.UsageError: the channel is closed (at once, or when it closes while
                this waits), as grpc.aio's.
        """
        while self.get_state(try_to_connect=True) is not grpc.ChannelConnectivity.READY:
            if self._closed:
                raise grpc.aio.UsageError("Channel is closed.")
            await self._pool.changed()

    async def wait_for_endpoints(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until at least ``count`` endpoints are known and READY; endpoints left
        IDLE (their connection closed while unused), before or during the wait, are asked
        to connect, as :meth:`channel_ready` does.

        Args:
            count: endpoints, an ``int`` >= 0 (0: returns at once).
            timeout_s: seconds, >= 0 (``math.inf``: no bound).

        Raises:
            TimeoutError: not reached within ``timeout_s`` seconds (the message names
                the service and how many endpoints were READY and known, and on an mTLS
                channel why the first endpoint whose TLS probe found a reason cannot be
                connected: ``(1 known; w1 at host:port: <reason>)``).
            MeshRpcError: ``CANCELLED``, the channel is closed (or closed meanwhile).
            ConfigError: ``count`` or ``timeout_s`` is not such a number (a ``bool``, a
                string, NaN: a bound that would never fire), quoted.
        """
        check_int("count", count, low=0)
        check_number("timeout_s", timeout_s, finite=False)
        async def reached() -> None:
            pool = self._pool
            # endpoints left IDLE are asked to connect, also those left IDLE meanwhile
            # (nothing else connects them: no call is made during a readiness gate)
            pool.connect_idle()
            while pool.ready_count < count:  # (O(1), not a scan per change)
                if self._closed:
                    raise MeshRpcError(_CANCELLED, f"channel to {self.service!r} is closed")
                await pool.changed()
                pool.connect_idle()

        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: it can lose a cancel
                await reached()
        except TimeoutError:
            ready = self._pool.ready_count
            problem = self._pool.connect_problem()  # mTLS: why one cannot be connected
            raise TimeoutError(
                f"{ready} of {count} endpoints of {self.service!r} READY after "
                f"{timeout_s!r} s ({len(self._pool.endpoints)} known"
                + (f"; {problem})" if problem is not None else ")")) from None

    def endpoints(self) -> list[Endpoint]:
        """The current endpoints (a snapshot list, sorted by instance id)."""
        eps = self._pool.endpoints
        return [eps[k] for k in sorted(eps)]

    @property
    def live(self) -> bool:
        """Open (not closed yet); what the introspection registry lists."""
        return not self._pool.closed

    @property
    def closing(self) -> bool:
        """:meth:`close` has begun and not finished (calls in flight may still end in its
        grace): ``/metrics`` reads such a channel on until it has recorded its final
        counters."""
        task = self._closing
        return task is not None and not task.done()

    def stats(self) -> ChannelStats:
        """A typed snapshot for ``/metrics`` and ``/debug/mesh``: connectivity, every
        endpoint (also recently removed ones) with state, counters, ejection, the
        balancer's load/EWMA and, with ``tls``, why it cannot be connected
        (``connect_error``: :mod:`meshkit.auth._probe`), retry counters, the active
        policies and the registry's health (``None`` when its ``status()`` is missing,
        raises or returns no ``RegistryStatus``)."""
        balancer = self._balancer
        ejecting = isinstance(balancer, EjectingBalancer)
        ejected = set(balancer.ejected()) if isinstance(balancer, EjectingBalancer) else set()
        inner = balancer.inner if isinstance(balancer, EjectingBalancer) else balancer
        loads: dict[str, dict[str, Any]] = {}
        snapshot = getattr(inner, "snapshot", None)  # P2C's, or a ZoneAwareBalancer's
        if callable(snapshot):
            loads = {str(row["instance_id"]): row for row in snapshot()}
        present = self._pool.endpoints
        diagnosis = self._pool.diagnosis
        endpoints = []
        for key, ep in sorted(self._pool.history.items()):
            load = loads.get(key, {})
            endpoints.append(EndpointStats(
                instance_id=key, address=ep.instance.address, state=ep.state.name,
                present=key in present, ejected=key in ejected, calls=ep.calls,
                failures=ep.failures, in_flight=ep.in_flight, rtt_ms=load.get("rtt_ms"),
                load_ms=load.get("load_ms"), pending=load.get("pending"),
                connect_error=diagnosis.reason(key) if diagnosis is not None else None))
        retry = None
        if self.retry is not None:
            st = self.retry.stats
            retry = RetrySnapshot(
                calls=st.calls, retries=st.retries, hedges=st.hedges,
                budget_exhausted=st.budget_exhausted, gave_up_deadline=st.gave_up_deadline,
                budget_left=round(self.retry.budget_left(), 2),
                budget=repr(self.retry.options.budget))
        opts = self.options
        registry: dict[str, Any] | None = None
        status = getattr(self.registry, "status", None)
        if status is not None:
            try:  # how its own service reads (status(service)), as the pool asks
                st_reg = self._pool._own_status(status)
                registry = {**dataclasses.asdict(st_reg), "ok": st_reg.ok}
            except Exception:  # a registry's own bug: as one that reports no health (the
                registry = None  # readers skip a channel whose stats() raises: all of it)
        return ChannelStats(
            service=self.service, state=self.get_state().name, balancer=type(inner).__name__,
            ejections=balancer.ejections if isinstance(balancer, EjectingBalancer) else 0,
            panic_picks=balancer.panic_picks if isinstance(balancer, EjectingBalancer) else 0,
            watch_errors=self._pool.watch_errors, endpoints=tuple(endpoints), retry=retry,
            policies={
                "outlier": repr(opts.outlier) if ejecting else None,
                "timeout_s": opts.timeout_s,
                "method_timeouts": dict(opts.method_timeouts),
                "propagate_deadline": opts.propagate_deadline,
                "tls": opts.tls is not None or (opts.credentials is not None and not
                                                _plaintext_credentials(opts.credentials)),
                # as a call's status names them: a repr that raises must not hide the
                # channel from /metrics (its readers skip a stats() that raises)
                "filters": [short_repr(f) for f in opts.filters],
            },
            registry=registry)

    async def close(self, grace: float | None = None) -> None:
        """Stop discovery and close every sub-channel, letting calls finish for ``grace``
        seconds (``None``: none), then cancelling them; a registry the channel made itself
        is closed too. The access log's pending lines are written (as
        ``MeshServer.drain`` does): the timer that would write them belongs to this event
        loop, which may end next (``asyncio.run()``). The closing runs to its end even when
        this ``close()`` is cancelled (e.g. by ``wait_for``); a later ``close()`` waits for
        it (its ``grace`` is the first one's), or, when the closing itself was cancelled
        (a loop's end cancels every task left), makes it again with its own.

        Args:
            grace: seconds, ``None`` or >= 0 (``math.inf``: until the calls have ended,
                however long); default ``None``.

        Raises:
            ConfigError: ``grace`` is not such a number (NaN, negative, a string, a
                ``bool``), quoted; nothing is closed.
        """
        if grace is not None:
            check_number("grace", grace, finite=False)  # NaN would wait for ever
        task = self._closing
        if task is None or task.cancelled():
            # (cancelled: by a loop's end, which cancels every task left, or a helper
            # that cancels them all; awaited, it raised CancelledError into this caller,
            # whom no one cancelled: the closing is made again, each step idempotent)
            task = self._closing = asyncio.get_running_loop().create_task(
                self._close(grace), name=f"meshkit-close-{self.service}")
        await asyncio.shield(task)

    async def _close(self, grace: float | None) -> None:
        if self.retry is not None:  # calls waiting out a retry delay: on, to CANCELLED
            self.retry.close()
        await self._pool.close(grace)
        ended(self)  # its final counters, for /metrics after it is gone
        if self._owns_registry:
            await self.registry.close()
        flush_logs(0)  # its calls' access lines queued, before the loop that times them ends

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"MeshChannel({self.service!r}, endpoints={len(self._pool.endpoints)})"


_KINDS: tuple[tuple[type, str], ...] = (
    (grpc.aio.UnaryUnaryClientInterceptor, "intercept_unary_unary"),
    (grpc.aio.UnaryStreamClientInterceptor, "intercept_unary_stream"),
    (grpc.aio.StreamUnaryClientInterceptor, "intercept_stream_unary"),
    (grpc.aio.StreamStreamClientInterceptor, "intercept_stream_stream"),
)  # in the order grpc.aio's channel tests them


def _kind_view(interceptor: Any, base: type, name: str) -> Any:
    """``interceptor`` seen as a ``base`` interceptor only: its method ``name`` bound on a
    ``base`` instance (no frame added per call)."""
    view_type = type(f"{type(interceptor).__name__}As{base.__name__}", (base,),
                     {name: lambda *a: None})  # (the abstract method, shadowed below)
    view = view_type()
    setattr(view, name, getattr(interceptor, name))  # the instance's own, bound method
    return view


def _for_every_kind(interceptors: tuple[Any, ...]) -> tuple[Any, ...]:
    """``interceptors`` for a grpc.aio channel, an interceptor of several kinds (a class
    deriving from more than one of ``UnaryUnaryClientInterceptor``... such as
    :class:`~meshkit.observability.AttemptSpanInterceptor`) installed for each of them:
    grpc.aio's channel files an interceptor under the first kind it is an instance of and
    never runs it for the others (``grpc/aio/_channel.py``), so its streaming methods
    would be skipped without a word. Order is kept within each kind."""
    out: list[Any] = []
    for icpt in interceptors:
        kinds = [(base, name) for base, name in _KINDS if isinstance(icpt, base)]
        out.append(icpt)
        out.extend(_kind_view(icpt, base, name) for base, name in kinds[1:])
    return tuple(out)


def _diagnosis(service: str, tls: TLSOptions | None) -> HandshakeDiagnosis | None:
    """Why the endpoints of a channel dialed with ``tls`` cannot be connected (a TLS probe
    of each when its sub-channel goes ``TRANSIENT_FAILURE``: :mod:`meshkit.auth._probe`),
    or ``None`` without ``tls`` (other credentials, plaintext: no probe)."""
    if tls is None:
        return None
    ca_file, cert_file, key_file = str(tls.ca_file), str(tls.cert_file), str(tls.key_file)
    server_name = str(tls.channel_options(service)[0][1])
    expected_id, client_id = tls.expected_server_id(service), tls.spiffe_id

    async def probe(host: str, port: int) -> str | None:
        return await handshake_problem(
            host, port, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
            server_name=server_name, expected_id=expected_id, client_id=client_id)

    return HandshakeDiagnosis(service, probe)


def _weakly(me: weakref.ref[MeshChannel], name: str, *,
            needed: bool = False) -> Callable[..., Any]:
    """The channel's method ``name`` (looked up at each call), called through the weak
    reference ``me``. Once the channel is collected (the reference cleared, its pool
    being closed: see :meth:`MeshChannel.__del__`) nothing is done and ``None``
    returned (a balancer's notice: the pool's tasks may still run until then), or with
    ``needed`` (a sub-channel to build) ``grpc.aio.UsageError`` is raised."""
    def call(*args: Any) -> Any:
        channel = me()
        if channel is None:
            if needed:
                raise grpc.aio.UsageError("the channel was garbage-collected")
            return None
        return getattr(channel, name)(*args)
    return call


async def _watch_certificates(me: weakref.ref[MeshChannel], interval_s: float) -> None:
    """Every ``interval_s``: the channel's client certificate checked for a renewal
    (:meth:`MeshChannel._check_certificates`), the channel held only for that moment;
    ends once the channel is gone (a task of its pool: cancelled by its close)."""
    while True:
        await asyncio.sleep(interval_s)
        channel = me()
        if channel is None:
            return
        channel._check_certificates()
        del channel


async def _report_stream(call: Any, ep: Endpoint, done: Any,
                         details: ClientCallDetails, refusals: _StorageRefusals,
                         pool: EndpointPool | None = None) -> None:
    # no latency sample (a negative one, see balancer.Done): a stream's lifetime is no
    # round-trip time, and one long, healthy stream would make P2C's peak EWMA read its
    # endpoint as that slow; failures still carry P2C's overload penalty
    latency = -1.0
    try:
        # cancelled here, by its caller or by the mesh: grpc.aio's cancelled() is also true
        # for a CANCELLED status the endpoint sent, which is its outcome; a cancel on this
        # side carries grpc.aio's own details
        local = call.cancelled() and await call.details() in _LOCAL_CANCEL_DETAILS
        code = _CANCELLED if local else await call.code()
    except Exception:
        # no status: an exception of an attempt interceptor's own (grpc.aio's intercepted
        # call raises it from code()), raised on this side as a unary attempt's is, so no
        # endpoint's outcome (a missing token file would eject every healthy endpoint)
        done(_CANCELLED, latency)
        return
    if local:
        # ended by the mesh for a response its codec refused: the endpoint's answer, as
        # for a unary response; else the caller's cancel() or the caller's message, no
        # endpoint's failure (as a unary call its caller cancels)
        if not isinstance(getattr(details, "codec_error", None),
                          ResponseDeserializationError):
            done(code, latency)
            return
        code = _INTERNAL
    elif (code is _INTERNAL or code is _EXHAUSTED) and _refused_here(
            code, await call.details()):
        done(_CANCELLED, latency)  # grpc refused to send a message: no endpoint's outcome
        return
    elif code is _UNAVAILABLE and (
            (storage_refusal(code, trailers := await call.trailing_metadata())
             and refusals.shared(ep))
            or _refused_here(code, await call.details(), await call.initial_metadata(),
                             trailers)):
        # its credentials failed here, or the server's rate-limit storage (shared by the
        # replicas, most refusing so too) is down and it fails closed: no endpoint's
        # outcome, as a unary one's
        done(_CANCELLED, latency)
        return
    elif code is _DEADLINE_EXCEEDED:
        # the caller's bound on the stream's life (a watch, a subscription renewed every
        # n seconds), not a sign of a broken endpoint: counted as no endpoint's outcome,
        # or a service used only through such streams would have every endpoint ejected
        done(_CANCELLED, latency)
        return
    if code is not _OK:
        ep.failures += 1
        if (code is _UNAVAILABLE or code is _EXHAUSTED) and await _stream_shed(
                call, code, ep, pool):
            code = _EXHAUSTED  # refused before any of it ran: overload, as a unary attempt's
        elif code is _UNIMPLEMENTED and (refusal := await _stream_not_served(call)):
            # its server serves no such method: another service's, when another endpoint
            # answered it (MeshChannel._unserved_outcome)
            unserved = getattr(details.codec, "unserved", None)
            if unserved is not None:
                code = unserved(ep, details, refusal)
    else:
        served = getattr(details.codec, "served_by", None)
        if served is not None:  # its application answered (MeshChannel._unserved_outcome)
            _answered(served, details.method, ep.key)
    done(code, latency)


def _answered(served: dict[str, str], method: str, key: str) -> None:
    """Record in ``served`` (a channel's, by method) that endpoint ``key`` answered a
    streaming call of ``method`` from its application (its first response message, an
    ``OK`` end, an upload's response): :meth:`MeshChannel._unserved_outcome` reads it.
    Bounded: past ``_MAX_PLAN_KEYS`` methods it starts over."""
    if served.get(method) != key:
        if len(served) >= _MAX_PLAN_KEYS and method not in served:
            served.clear()
        served[method] = key


_CORE_INTERNAL = "Internal error from Core"  # grpc.aio's details of its own INTERNAL


def _status_now(call: Any) -> tuple[Any, ...] | None:
    """The status of ``call`` (a grpc.aio call, in a done callback: its status set), read
    at once: ``(code, details, initial metadata, trailing metadata, debug string)``, each
    accessor's coroutine run to its end without the loop (grpc.aio's accessors of an ended
    call return without suspending); ``None`` when one would suspend or fails."""
    out: list[Any] = []
    for get in (call.code, call.details, call.initial_metadata, call.trailing_metadata,
                call.debug_error_string):
        coro = get()
        try:
            coro.send(None)
        except StopIteration as stop:
            out.append(stop.value)
            continue
        except Exception:
            return None
        coro.close()  # it suspended: not ended after all
        return None
    return tuple(out)


def _end_request_stream(call: Any) -> None:
    """The done callback of an attempt whose request iterator grpc.aio writes (a bidi
    stream made with one, an upload), run as its status arrives: stop grpc.aio's task that
    writes the messages (``_async_request_poller``), as grpc.aio's own ``cancel()`` does;
    nothing can be sent to an ended call. A write of it still in flight when the server
    ended the call (an abort, an early answer, a wrong server's refusal) fails after the
    status arrived, and grpc.aio (1.85, grpc/grpc#36066) then replaced the call's status
    with ``INTERNAL`` "Internal error from Core" (the caller lost the server's code,
    details and trailers, or an ``OK`` answer): in ~90 of 100 bidi streams a handler
    ended at once while 50 messages were sent. A cancelled writer never gets to that
    failure. Under ``attempt_interceptors`` (grpc.aio's intercepted call object, which
    hands this callback itself at its inner call's status) the inner call's task. Without
    such a task (a call object of an interceptor's own), nothing; nor for a caller's own
    ``write()`` in flight then, which is grpc.aio's as before."""
    poller = getattr(call, "_async_request_poller", None)
    if poller is None:  # grpc.aio's intercepted call: the call its interceptors made
        inner = getattr(call, "_interceptors_task", None)
        if inner is None or not inner.done() or inner.cancelled() or inner.exception():
            return
        poller = getattr(inner.result(), "_async_request_poller", None)
    if poller is not None and not poller.done():
        poller.cancel()


async def _stream_not_served(call: Any) -> str | None:
    """For a stream that ended ``UNIMPLEMENTED``: its details when it is a server
    library's refusal of a method its server does not serve (:func:`_not_served`), else
    ``None``."""
    try:
        details: str | None = await call.details()
        initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
    except Exception:  # a call object without them: no refusal seen
        return None
    if (details is not None and details.startswith(NOT_SERVED_DETAILS)
            and not initial and transport_only(trailing)):
        return details
    return None


async def _stream_shed(call: Any, code: grpc.StatusCode, ep: Endpoint | None = None,
                       pool: EndpointPool | None = None) -> bool:
    """Whether a stream that ended ``code`` was refused before any of it ran for overload
    (a nack, see :func:`~meshkit.resilience.is_nack`): reset with ``REFUSED_STREAM``, or a
    meshkit server's "server busy" with ``meshkit-nack: 1``. A draining server's refusal
    (:func:`~meshkit.resilience._retry.draining_refusal`) is a nack but no overload: its
    endpoint is leaving, reported ``UNAVAILABLE``, and taken out of ``pool``'s picking
    for its current connection (:meth:`~meshkit._pool.EndpointPool.leaving`, the
    attempt's start not known here) when ``ep`` and ``pool`` are given."""
    try:
        details, trailers = await call.details(), await call.trailing_metadata()
    except Exception:  # a call object without them: no nack seen
        return False
    if not nacked_status(code, details, trailers):
        return False
    if draining_refusal(code, details, trailers):
        if ep is not None and pool is not None:
            pool.leaving(ep)
        return False
    return True


class _Upload:
    """When the request stream of one stream-unary attempt ended: :attr:`sent_at` is the
    ``perf_counter()`` reading then (grpc.aio half-closes the call as its iterator ends,
    once every message before was written), ``None`` until then. :meth:`ended` is the
    request iterator's end hook (:func:`~meshkit._codecs.serialized`'s ``ended``), so
    grpc.aio iterates the serializing generator itself: no layer per message (a
    ``__next__``/``__anext__`` around it cost a frame, and a coroutine, per message)."""

    __slots__ = ("sent_at",)

    def __init__(self) -> None:
        self.sent_at: float | None = None

    def ended(self) -> None:
        self.sent_at = _perf()

    def latency(self) -> float:
        """Seconds since the request stream ended: the endpoint's time; ``-1.0`` (no
        latency sample, see :data:`~meshkit.balancer.Done`) while it has not."""
        sent_at = self.sent_at
        return -1.0 if sent_at is None else _perf() - sent_at


# -- multicallables ----------------------------------------------------------------------
class _MultiCallable:
    __slots__ = ("_channel", "_codec", "_hash_key", "_invoke", "_make_call", "_margin",
                 "_propagate", "_timeout")
    # the kind picks the call class and the channel's chain (a stream-unary call's ends
    # in MeshChannel._attempt_upload); both are bound to slots here, which the per-call
    # path reads faster than class attributes
    _call_type: ClassVar[type[UnaryResponseCall | StreamResponseCall]]

    def __init__(self, channel: MeshChannel, codec: _MethodPlan) -> None:
        self._channel = channel
        self._codec = codec
        self._make_call = self._call_type
        self._invoke = (channel._stream if issubclass(self._call_type, StreamResponseCall)
                        else channel._upload if self._call_type is StreamUnaryCall
                        else channel._unary)
        opts = channel.options
        self._timeout = codec.timeout_s
        self._propagate = opts.propagate_deadline
        self._margin = opts.deadline_margin_s
        # with per-call interceptors, the key is read after them (_KeyFromMetadata)
        self._hash_key = opts.hash_key_metadata if not opts.interceptors else None

    def _open(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
              credentials: grpc.CallCredentials | None = None,
              wait_for_ready: bool | None = None,
              compression: grpc.Compression | None = None) -> Any:
        """Make one call: its :class:`ClientCallDetails`, then its call object. A unary
        request kind's ``__call__`` itself (grpc.aio's signature: ``request``, then
        keyword-only options; no frame between the stub's call and this); a stream
        request kind's ``__call__`` calls it."""
        # ClientCallDetails.__init__ written out (no frame on the per-call path, the codec
        # set once): change both
        details = _new_details(ClientCallDetails)
        codec = details.codec = self._codec
        details.service = self._channel.service
        details.method = codec.method
        details.kind = codec.kind
        timeout_s = self._timeout if timeout is None else timeout
        if timeout_s is None:
            details.deadline = None
        else:
            if not timeout_s <= MAX_PROPAGATED_S:  # NaN or past it, rare: clamped (no frame else)
                timeout_s = clamp_timeout_s(timeout_s) or 0.0  # (a float for a float)
            details.deadline = time.monotonic() + timeout_s
        details.metadata = list(metadata) if metadata else []
        details.wait_for_ready = wait_for_ready
        details.credentials = credentials
        details.compression = compression
        details.request_key = None
        details.attempts = []
        details.attempt_started_ns = []
        details.last_call = None
        details.messages = None
        if self._propagate:
            inherited = _current_deadline()
            if inherited is not None:
                inherited -= self._margin
                if details.deadline is None or inherited < details.deadline:
                    details.deadline = inherited
        if self._hash_key is not None:
            details.request_key = _request_key(details.metadata, self._hash_key)
        make_call = self._make_call  # a local: self._make_call(...) would not specialise
        return make_call(details, request, self._invoke)


def _request_key(metadata: Sequence[tuple[str, Any]], hash_key: str) -> str | None:
    """The value of ``hash_key`` in ``metadata`` as a request key (the first one), or
    ``None``: a ``-bin`` value is any bytes, each byte one character (latin-1 maps all
    256), so any value hashes and distinct values stay distinct; a value of another type
    is left to check_metadata, which refuses it (InvalidMetadataError, INTERNAL) before
    any pick."""
    for k, v in metadata:
        if k == hash_key:
            if isinstance(v, str):
                return v
            if isinstance(v, bytes):
                return v.decode("latin-1")
            return None
    return None


class _KeyFromMetadata(ClientInterceptor):
    """Sets a call's ``request_key`` from ``DialOptions.hash_key_metadata`` in its metadata
    as the application's per-call interceptors left it (one may add or change the header:
    a tenant or user stamp), unless one of them set ``request_key`` itself; the pick
    reads the headers as sent, as grpc-go's ring hash reads ``request_hash_header``
    (gRFC A76) and Envoy's hash policy does. Installed right after those interceptors,
    only on a channel with both (its calls' keys are not read before them)."""

    def __init__(self, hash_key: str) -> None:
        self.hash_key = hash_key

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: UnaryProceed) -> Any:
        """Set the request key, then run the call on."""
        if details.request_key is None and details.metadata:
            details.request_key = _request_key(details.metadata, self.hash_key)
        return await proceed(details, request)

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: StreamProceed) -> Any:
        """Set the request key, then open the call on."""
        if details.request_key is None and details.metadata:
            details.request_key = _request_key(details.metadata, self.hash_key)
        return await proceed(details, request)


class _UnaryRequestMultiCallable(_MultiCallable):
    """The ``__call__`` of unary-request kinds (grpc.aio's signature: ``request``, then
    keyword-only options); the subclass names the call class."""

    __slots__ = ()

    __call__ = _MultiCallable._open


class _StreamRequestMultiCallable(_MultiCallable):
    """The ``__call__`` of stream-request kinds (grpc.aio's signature: an optional
    ``request_iterator``, then positional options; without one, the call's ``write()``
    and ``done_writing()`` send the requests); the subclass names the call class."""

    __slots__ = ()

    def __call__(self, request_iterator: Any = None, timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._open(request_iterator, timeout=timeout, metadata=metadata,
                          credentials=credentials, wait_for_ready=wait_for_ready,
                          compression=compression)


class _UnaryUnaryMultiCallable(_UnaryRequestMultiCallable,
                               grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _call_type = UnaryUnaryCall


class _UnaryStreamMultiCallable(_UnaryRequestMultiCallable,
                                grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _call_type = UnaryStreamCall


class _StreamUnaryMultiCallable(_StreamRequestMultiCallable,
                                grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _call_type = StreamUnaryCall


class _StreamStreamMultiCallable(_StreamRequestMultiCallable,
                                 grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _call_type = StreamStreamCall
