"""Server limits and request guards: what :func:`meshkit.serve` bounds by default.

* :class:`ServerLimits` (``ServeOptions.limits``): concurrent calls per server, requests
  read at once, concurrent HTTP/2 streams per connection, request size, keepalive and idle
  connections, and how long a unary call may wait for its request message. Calls over a
  limit are shed with ``RESOURCE_EXHAUSTED`` before their handler runs.
* :func:`guard_generic_handler` / :func:`guard_method_handler`: a request that does not
  decode answers ``INVALID_ARGUMENT`` "request is not a valid <Type>" (grpcio's default is
  ``UNKNOWN`` naming the ``DecodeError`` class, and such a call never reaches a server
  interceptor, so metrics and access logs missed it). The guarded deserializer returns a
  sentinel (unary requests) or raises :class:`UndecodableRequest` (streaming requests, from
  the request iterator or ``context.read()``; also of the deserializer's own exception
  type, which a handler may catch as on grpc.aio), and the guarded behaviour aborts; server
  interceptors wrap the guarded behaviour, so they count the call like any other.
* :class:`RequestGate`: grpc.aio reads a unary request before any Python code of the call
  runs (grpc core buffers it whole), so neither its size nor its absence could be acted
  on; this interceptor reads the request itself, a few at a time: shedding with
  ``RESOURCE_EXHAUSTED`` while too many calls or request bytes are in flight, and ending
  calls whose message does not arrive within ``first_message_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from meshkit._config import C_INT_MAX, check_bool, check_int, check_number, check_seconds
from meshkit._handlers import (
    GATE_MARK,
    GUARD_MARK,
    STREAM_GUARD_MARK,
    THREAD_MARK,
    UNDECODABLE_MARK,
    Before,
    Handler,
    Resolver,
    WrappingInterceptor,
    _GrpcAsync,
    _own_mark,
    after_handler_thread,
    answers_unknown,
    async_behaviour,
    in_a_thread,
    off_loop_handler,
    responses,
    runs_in_a_thread,
)
from meshkit._loop import LoopCache
from meshkit.errors import ConfigError
from meshkit.resilience._deadline import gate_arrival
from meshkit.resilience._retry import NACK_METADATA

__all__ = [
    "CallSlots",
    "RequestGate",
    "ServerLimits",
    "UndecodableRequest",
    "guard_generic_handler",
    "guard_method_handler",
]

_log = structlog.get_logger("meshkit.server")
_MIB = 1 << 20
# grpc core's headroom for streams that ended but whose calls are not yet freed: counted
# apart from max_concurrent_streams by its overload protection (grpc.http.overload_protection,
# on by default); 0 unless set. 100 is what grpc's own h2_max_deallocating_streams_headroom
# experiment uses.
_DEALLOCATING_STREAMS_ARG = "grpc.http2.max_deallocating_streams"
# grpc.health.v1's streaming check, held open by clients for their channel's life
_HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# grpc.health.v1's unary check: what Kubernetes' and Consul's gRPC probes call
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_RESERVE = 8  # slots past the cap a health check may take (see _first_reserved)
# the largest request a reserved health check reads (a HealthCheckRequest names a service)
_HEALTH_REQUEST_BYTES = 4096
_DEALLOCATING_STREAMS = 100
# grpc's channel arguments are C ints: a duration in ms is at most 2**31 - 1 (about 24.8
# days; grpc.aio.server() raises OverflowError on a larger one), so at most this many s
_MAX_MS_ARG_S = (2**31 - 1) // 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Bounds on a server's in-flight work (``ServeOptions(limits=ServerLimits(...))``).

    The defaults keep a server within about a hundred MiB under a flood of large requests
    (200 concurrent 3.9 MB requests on one connection: +88..+113 MiB peak, instead of
    +1.1 GiB without limits and +306..+422 MiB while every call slot read its request at
    once; see ``tests/faults/README.md``); raise a limit by passing a larger value, e.g.
    ``ServeOptions(limits=ServerLimits(max_concurrent_rpcs=512))``, or lift it with
    ``None`` where the field allows. ``ServeOptions.server_options`` override the channel
    arguments these limits set.

    Args:
        max_concurrent_rpcs: unary-request calls one server runs at once, counting
            those still waiting for their request, and request-streaming calls of
            plain-function (``def``) handlers (default 32): :class:`RequestGate` counts
            them; at the cap a new call takes the slot of a call that has waited
            ``evict_waiting_after_s`` for its request, else it is shed
            ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer (meshkit clients
            retry it on another endpoint). Request-streaming calls of async handlers,
            which the gate does not read, are capped with them: a new one is shed the
            same way once the calls holding a slot and the open request streams reach
            this plus 8 (:meth:`RequestGate.admit_stream`). A call of a plain-function
            handler, which holds one of ``ServeOptions.handler_threads`` while it runs
            (a request stream's while its stream is open), holds its slot until its
            thread is done with it, also after its caller left; so with
            ``handler_threads`` equal to this, an admitted call never waits for a
            thread: one past the slots is shed at once. The health service's ``Watch``
            takes no slot; its ``Check`` (Kubernetes' and Consul's gRPC probes) may take
            one of 8 slots past the cap, and up to 8 checks at once read their request
            without waiting for a read permit (``max_concurrent_reads``) and are not
            evicted by other calls, so an overloaded server still answers its probes at
            once (with the 8 places held, a new check takes the place of the check that
            has waited ``evict_waiting_after_s`` for its request: header-only checks
            cannot hold them); such a check's request over 4 KiB is refused
            ``RESOURCE_EXHAUSTED``. grpc.aio's own
            ``maximum_concurrent_rpcs`` is not set (it would cost every call a done
            callback). ``None``: no cap.
        max_concurrent_reads: unary-request calls that may be receiving their request
            message at once (default 4; :class:`RequestGate`). grpc core lets a client
            send no more of a request nobody reads than the stream's flow-control window
            (64 KiB), but once a read is pending it opens the window to the whole message
            and holds the message until all of it has come, so this is what bounds the
            request bytes a flood makes a server hold: about this x
            ``max_receive_message_bytes`` (4 x 4 MiB = ``max_inflight_request_bytes``).
            Other calls wait in their slot for a read permit, the newest first (small
            requests take turns in microseconds: their message is already there when the
            read starts). While calls wait, a permit holder whose call came
            ``evict_waiting_after_s`` ago or more (and that has held its permit a quarter
            of that) and whose request has not come is ended ``CANCELLED`` "request did
            not arrive in time"; a waiter ended by slot eviction
            or ``first_message_timeout_s`` is shed ``RESOURCE_EXHAUSTED`` "server busy"
            with the nack trailer (never read, so safe to retry). Measured, 200 concurrent
            3.9 MB requests on one connection (2-core VM, noisy): peak growth +104..+144 MiB
            with 4 (+88..+113 MiB in ``make chaos``), +57..+60 with 1, +173..+226 with 8,
            +259..+402 without this bound (each of the 32 slots reading; lowering
            ``max_concurrent_rpcs`` to 8 gave +92..+114). glibc malloc settings did not
            lower it (``MALLOC_ARENA_MAX=2``, ``MALLOC_MMAP_THRESHOLD_``: +250..+391).
            A reader's wait counts from its call's arrival, so with more than this many
            large requests at once from clients too slow to send one within
            ``evict_waiting_after_s``, readers are ended while others wait: raise this
            (and ``max_inflight_request_bytes``) or ``evict_waiting_after_s`` for such
            clients. ``None``: no bound.
        max_concurrent_streams: HTTP/2 streams one connection may have open (default 100,
            as grpc-go and nginx servers use; channel arg ``grpc.max_concurrent_streams``,
            sent in SETTINGS). grpc C-core clients hold further calls back at this limit.
            grpc's overload protection (``grpc.http.overload_protection``, on by default)
            also counts streams that ended but whose calls grpc.aio has not freed yet, and
            refuses new streams with ``REFUSED_STREAM`` (``UNAVAILABLE`` at a grpc client)
            beyond this plus ``grpc.http2.max_deallocating_streams``, which grpc leaves at
            0; meshkit sets it to 100 (what grpc's own experiment with that headroom uses),
            so a client waiting at the limit is not refused: 20 callers on one connection
            at a limit of 4 had 20..31 of 60 calls refused without it, 0 with it. A stream
            whose request is not read holds at most its 64 KiB window, so this does not
            bound a flood's memory (``max_concurrent_reads`` does). ``None``: grpc's own
            (none).
        max_receive_message_bytes: largest request message (default 4 MiB, grpc's
            default); larger ones are refused ``RESOURCE_EXHAUSTED`` by grpc core.
        bdp_probe: let HTTP/2 flow-control windows grow with the measured bandwidth-delay
            product (default ``False``: windows stay at their initial size, so data a
            server has not asked for is not buffered; bulk transfers over long links are
            slower). ``True`` is grpc's default.
        first_message_timeout_s: seconds a unary-request call may wait for its request
            message after its headers (default 10.0); then it ends with ``CANCELLED``
            "request did not arrive in time" (:class:`RequestGate`). A request-streaming
            call of a plain-function (``def``) handler, which holds a call slot, waits
            the same for its first message (a request, or a response its handler sends)
            and is evicted the same (``evict_waiting_after_s``): its handler's read then
            fails. The health service's ``Watch``, which takes no slot, reads its
            request under the same timeout. ``None``: wait as long as the client does.
        evict_waiting_after_s: when every call slot (``max_concurrent_rpcs``) is taken, a
            new unary-request call takes the slot of the call that has waited longest for
            its request message, if that wait is at least this long (default 1.0 s); the
            evicted call ends ``CANCELLED`` "request did not arrive in time". So calls that
            send headers only cannot lock callers out until ``first_message_timeout_s``,
            while memory stays bounded by the slots (nginx's and Envoy's answer to
            slowloris). The same wait ends a read permit holder while other calls wait for
            a permit (``max_concurrent_reads``), and, at the cap of request streams (see
            ``max_concurrent_rpcs``), the request stream of an async handler that has
            exchanged no message either way for this long, for a new stream (see
            ``evict_stalled_after_s`` for server streams whose client takes nothing).
            ``None``: never evict; new calls are shed or wait.
        evict_stalled_after_s: when every call slot is taken and no call waits for its
            request, a new call takes the slot of the server stream (of a unary-request
            method) whose last message has waited longest for its client to take it, if
            that wait is at least this long (default 60.0 s): its task is cancelled
            (grpc cancels the stream; its caller, which reads nothing, gets no status)
            and it is counted in ``evicted``. A client that reads nothing grants no
            HTTP/2 flow-control window, and its streams held their slots for as long as
            it kept its connection, shedding every other call. A client reading on
            grants window back in batches (grpc's about every few hundred KB), so a slow
            one can leave a message waiting for seconds: keep this well above that.
            ``None``: never.
        max_inflight_request_bytes: request bytes of unary-request calls being handled at
            once (default 16 MiB); while over it, new calls are shed with
            ``RESOURCE_EXHAUSTED`` "server busy" before their request is read (one request
            is always admitted). ``None``: no budget.
        gc_after_request_bytes: run Python's cyclic garbage collector (``gc.collect()``)
            each time calls with large requests (>= 1 MiB each) totalling this many bytes
            have ended (default 16 MiB). An exception raised through a handler chain keeps
            its request alive in reference cycles until the collector runs, and the
            collector is triggered by object counts, not bytes: measured under 200
            concurrent 3.9 MB requests, resident memory after the flood 430-490 MiB
            without this, 170-300 MiB with it (the request gate now also drops the
            traceback of a call aborted or cancelled as it leaves, which frees such a
            call's request at once: peak growth in that flood +77..+93 MiB instead of
            +116..+127). A full collection costs with the whole
            heap (about 0.5 s with a cache of a million small objects), during which the
            event loop serves nothing, so one that falls due sooner than 19 times the
            previous one's duration after it runs then instead (a timer): the collector
            takes at most about 5 % of the loop's time. ``None``: never.
        read_requests: :class:`RequestGate` reads every unary request itself (default
            ``True``), which ``max_concurrent_rpcs`` slots with eviction,
            ``max_concurrent_reads``, ``first_message_timeout_s``,
            ``max_inflight_request_bytes`` and ``gc_after_request_bytes`` need. It costs
            a little CPU: grpc.aio's streaming read is a second batch operation per call
            (measured +4 us of server CPU per call at concurrency 32, and 60k of about
            1.1M instructions per call under callgrind, ``python -m
            benchmarks.instructions``). ``False``: grpc.aio reads requests, those five
            limits do nothing (no defence against header-only streams, which hold their
            slot until the client leaves, nor against request bytes in flight), and
            ``max_concurrent_rpcs`` is counted by :class:`CallSlots` in the server's
            handler wrap: every call (all four kinds) but the health ``Watch`` takes a
            slot, the health ``Check`` may take one of 8 past the cap, and a call over
            it is shed ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer,
            counted in ``ServerStats.gate_shed``; grpc.aio's own cap, which has none of
            the three, is never set.
        check_request_count: :class:`RequestGate` also refuses a unary-request call
            (unary or server-streaming method) that sends more than one request message,
            ``UNIMPLEMENTED`` "more than one request message: the method takes exactly
            one", before its handler runs (default ``False``). gRPC's status code table
            (grpc/grpc doc/statuscodes.md) answers a request cardinality violation
            ``UNIMPLEMENTED`` (grpc-js does; grpc-java ``INTERNAL``); grpc.aio, and the
            gate without this, serves the first message and drops the rest, answering
            ``OK``. A generated unary stub cannot send two; a streaming stub calling a
            method served as unary (a proto changed on one side) can. With it the gate
            reads once more after the request, for the half-close, as grpc-java and
            grpc-js do before they run a unary handler: a unary client half-closes with
            its message, so that read answers at once, but it costs every unary-request
            call a grpc batch and about two event-loop turns (measured, one caller,
            ``benchmarks.opcodes``: 7,512..7,545 -> 8,040..8,118 Python bytecodes per
            call; ``benchmarks.instructions``: 908,923 -> 977,139 instructions per call,
            +7.5 %; 814,383 -> 869,030 with 32 callers, +6.7 %). The call waits for its
            half-close as for its request: ``first_message_timeout_s`` and eviction
            (``evict_waiting_after_s``) end a call whose client sends one message and
            keeps its request stream open. A call without any request message is
            refused ``UNIMPLEMENTED`` "request message missing: the method takes exactly
            one" whatever this is. Needs ``read_requests``.
        keepalive_time_s: seconds between the server's keepalive pings on an idle
            transport, with calls or without (default 60.0; ``grpc.keepalive_time_ms``
            and ``grpc.keepalive_permit_without_calls``), so dead peers are found.
        keepalive_timeout_s: seconds to wait for a ping's ack before closing the
            connection, its calls cancelled and their slots freed (default 20.0;
            ``grpc.keepalive_timeout_ms`` and ``grpc.http2.ping_timeout_ms``, the one
            grpc core applies).
        max_connection_idle_s: a connection without calls for this long is closed with
            GOAWAY (default 300.0; ``grpc.max_connection_idle_ms``); clients reconnect on
            their next call. ``None``: never.
        min_ping_interval_s: the shortest interval between a client's pings on a
            connection the server sends no data on that it accepts (default 10.0,
            grpc-go's floor for a client's keepalive time;
            ``grpc.http2.min_ping_interval_without_data_ms``): so clients with keepalive
            (``DialOptions.keepalive_time_s``) of this or more keep their quiet calls.
            A client pinging more often gets GOAWAY ``too_many_pings`` after two such
            pings (gRPC's ping strikes), which ends its calls; gRPC's default is 300 s.
            ``0``: pings accepted at any rate.

    ``keepalive_time_s``, ``keepalive_timeout_s``, ``max_connection_idle_s`` and
    ``min_ping_interval_s`` are at most
    2147483 s (about 24.8 days): grpc takes them in milliseconds as C ints;
    ``max_receive_message_bytes`` and ``max_concurrent_streams`` at most 2147483647
    (2 GiB - 1 for the size), C ints too.

    Raises:
        ConfigError: a value is out of range (quoted in the message), or
            ``check_request_count=True`` with ``read_requests=False``.
    """

    max_concurrent_rpcs: int | None = 32
    max_concurrent_reads: int | None = 4
    max_concurrent_streams: int | None = 100
    max_receive_message_bytes: int = 4 * _MIB
    bdp_probe: bool = False
    first_message_timeout_s: float | None = 10.0
    evict_waiting_after_s: float | None = 1.0
    evict_stalled_after_s: float | None = 60.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_idle_s: float | None = 300.0
    min_ping_interval_s: float = 10.0
    max_inflight_request_bytes: int | None = 16 * _MIB
    gc_after_request_bytes: int | None = 16 * _MIB
    read_requests: bool = True
    check_request_count: bool = False

    def __post_init__(self) -> None:
        check_bool("bdp_probe", self.bdp_probe)
        check_bool("read_requests", self.read_requests)
        check_bool("check_request_count", self.check_request_count)
        if self.check_request_count and not self.read_requests:
            raise ConfigError("check_request_count=True needs read_requests=True (the "
                              "request gate reads the requests it counts), got "
                              "read_requests=False")
        for name in ("max_inflight_request_bytes", "gc_after_request_bytes",
                     "max_concurrent_rpcs", "max_concurrent_reads"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        # channel_args() hands these to grpc, whose integer arguments are C ints
        if self.max_concurrent_streams is not None:
            check_int("max_concurrent_streams", self.max_concurrent_streams, high=C_INT_MAX)
        check_int("max_receive_message_bytes", self.max_receive_message_bytes, high=C_INT_MAX)
        # finite: None already means "never"
        for name in ("first_message_timeout_s", "evict_waiting_after_s",
                     "evict_stalled_after_s"):
            if getattr(self, name) is not None:
                check_seconds(self, (name,))
        # channel_args() turns these into grpc's C int milliseconds
        ms_fields: tuple[str, ...] = ("keepalive_time_s", "keepalive_timeout_s")
        if self.max_connection_idle_s is not None:
            ms_fields += ("max_connection_idle_s",)
        for name in ms_fields:
            check_number(name, getattr(self, name), low_open=True, high=_MAX_MS_ARG_S)
        # 0: pings at any rate (grpc's meaning of 0 ms)
        check_number("min_ping_interval_s", self.min_ping_interval_s, high=_MAX_MS_ARG_S)

    def channel_args(self, server_options: Iterable[tuple[str, Any]] = (),
                     ) -> tuple[tuple[str, Any], ...]:
        """The grpc server arguments these limits set (``ServeOptions.server_options``
        given by the caller override them key by key): receive size, BDP probing,
        keepalive, idle connections, the stream cap and, with it,
        ``grpc.http2.max_deallocating_streams`` = 100 (see ``max_concurrent_streams``).

        Args:
            server_options: the caller's ``(name, value)`` server arguments, applied over
                these by the server (default none). One that sets
                ``grpc.keepalive_timeout_ms`` without ``grpc.http2.ping_timeout_ms`` sets
                the latter here too: grpc core (1.85) times an unanswered keepalive ping
                out by the ping timeout only (grpc/grpc#39239), so the override alone
                left ``keepalive_timeout_s`` (20 s) in force.
        """
        timeout_ms: Any = int(self.keepalive_timeout_s * 1000)
        if server_options:
            overrides = dict(server_options)
            if ("grpc.keepalive_timeout_ms" in overrides
                    and "grpc.http2.ping_timeout_ms" not in overrides):
                timeout_ms = overrides["grpc.keepalive_timeout_ms"]
        args: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.http2.bdp_probe", int(self.bdp_probe)),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", timeout_ms),
            # grpc core (1.85) times an unanswered keepalive ping out by the ping timeout
            # (default 60 s), not keepalive_timeout_ms (grpc/grpc#39239)
            ("grpc.http2.ping_timeout_ms", timeout_ms),
            # and pings only connections with calls unless this is set: a client that
            # died while idle would never be found
            ("grpc.keepalive_permit_without_calls", 1),
            # clients' keepalive pings accepted this often (gRPC's default: 5 minutes)
            ("grpc.http2.min_ping_interval_without_data_ms",
             int(self.min_ping_interval_s * 1000)),
        ]
        if self.max_connection_idle_s is not None:
            args.append(("grpc.max_connection_idle_ms", int(self.max_connection_idle_s * 1000)))
        if self.max_concurrent_streams is not None:
            args.append(("grpc.max_concurrent_streams", self.max_concurrent_streams))
            # grpc's overload protection counts streams until grpc.aio frees their calls,
            # moments after they ended; without headroom a client that waits at the cap
            # (grpc C-core does) gets REFUSED_STREAM for a stream that just ended
            args.append((_DEALLOCATING_STREAMS_ARG, _DEALLOCATING_STREAMS))
        return tuple(args)


# -- undecodable requests --------------------------------------------------------------
class UndecodableRequest(Exception):
    """A streaming call's request message did not decode: raised by the guarded
    deserializer from the request iterator or ``context.read()``, as an instance of a
    subclass of both this class and the deserializer's own exception type (see
    :func:`_undecodable`), so a handler catching that exception (``except
    google.protobuf.message.DecodeError``) catches it as on grpc.aio, which raises the
    deserializer's exception itself; one the handler lets escape, the guarded behaviour
    answers ``INVALID_ARGUMENT`` "request is not a valid <Type>"."""


class _Undecodable:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<undecodable request>"


_UNDECODABLE = _Undecodable()


def _raw(data: bytes) -> bytes:
    return data


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    """``ecom.v1.PlaceOrderRequest`` for ``PlaceOrderRequest.FromString``, else "request"."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) and name else "request message"


def _invalid(type_name: str) -> str:
    return f"request is not a valid {type_name}"


_UNDECODABLE_TYPES: dict[type[Exception], type[UndecodableRequest] | None] = {}
_MAX_UNDECODABLE_TYPES = 256  # deserializers raise a type or two each: a bound, not a cache


def _undecodable_type(kind: type[Exception]) -> type[UndecodableRequest] | None:
    """The subclass of :class:`UndecodableRequest` and ``kind`` (named as ``kind``, so
    tracebacks and logs read as grpc.aio's), made once per ``kind``; ``None`` when Python
    refuses to make one (a final type, a layout or metaclass conflict)."""
    try:
        return _UNDECODABLE_TYPES[kind]
    except KeyError:
        pass
    made: type[UndecodableRequest] | None
    try:
        made = type(kind.__name__, (UndecodableRequest, kind), {
            "__module__": kind.__module__, "__qualname__": kind.__qualname__,
            "__doc__": kind.__doc__})
    except Exception:
        made = None
    if len(_UNDECODABLE_TYPES) < _MAX_UNDECODABLE_TYPES:
        _UNDECODABLE_TYPES[kind] = made
    return made


def _undecodable(exc: Exception, type_name: str) -> UndecodableRequest:
    """What the guarded stream deserializer raises for ``exc``, its deserializer's
    exception: an :class:`UndecodableRequest` that is also of ``exc``'s type (see
    :func:`_undecodable_type`), with its ``args`` and attributes (its ``__dict__``), so a
    handler's ``except DecodeError`` (or ``json.JSONDecodeError``...) catches it as on
    grpc.aio; a plain ``UndecodableRequest("request is not a valid <Type>")`` when no such
    type can be made or an instance not built from ``exc``'s args. Failure path only."""
    kind = _undecodable_type(type(exc))
    if kind is not None:
        try:
            try:
                made = kind(*exc.args)
            except Exception:  # an __init__ taking other arguments than its args
                made = kind.__new__(kind, *exc.args)
            made.args = exc.args  # (an __init__ formatting its argument did it again)
            made.__dict__.update(exc.__dict__)
            return made
        except Exception:
            pass
    return UndecodableRequest(_invalid(type_name))


def _guarded_deserializer(deserializer: Callable[[bytes], Any], streaming: bool,
                          type_name: str) -> Callable[[bytes], Any]:
    if streaming:
        if deserializer is _raw:  # no deserializer: the bytes as they are (no call of _raw)
            def decode_stream(data: bytes) -> Any:
                return data
        else:
            def decode_stream(data: bytes) -> Any:
                try:
                    return deserializer(data)
                except UndecodableRequest:  # a guarded deserializer's, inside
                    raise
                except Exception as exc:
                    raise _undecodable(exc, type_name) from exc

        decode_stream._meshkit_guarded = True  # type: ignore[attr-defined]
        return decode_stream

    if deserializer is _raw:  # no deserializer: the bytes as they are (no call of _raw)
        def decode(data: bytes) -> Any:
            _request_size.set(len(data))
            return data
    else:
        def decode(data: bytes) -> Any:
            _request_size.set(len(data))
            try:
                return deserializer(data)
            except Exception:
                return _UNDECODABLE

    decode._meshkit_guarded = True  # type: ignore[attr-defined]
    # the check a wrap runs before a user's interceptors see the request (_handlers)
    setattr(decode, UNDECODABLE_MARK, (_UNDECODABLE, _invalid(type_name)))
    return decode


def guard_method_handler(handler: Handler) -> Handler:
    """``handler`` answering ``INVALID_ARGUMENT`` "request is not a valid <Type>" when its
    request does not decode (see the module docstring). A handler without a request
    deserializer (raw bytes) gets one that passes the bytes on, so their size is counted
    too. (Request streams are admitted by the server's :class:`RequestGate` itself,
    outermost, before the server's chain: :meth:`RequestGate.convert`.)"""
    deserializer = handler.request_deserializer
    if deserializer is not None and getattr(deserializer, "_meshkit_guarded", False):
        return handler
    if deserializer is None:
        deserializer = _raw
    type_name = _type_name(deserializer)
    message = _invalid(type_name)
    req_s, resp_s = handler.request_streaming, handler.response_streaming
    guarded_des = _guarded_deserializer(deserializer, req_s, type_name)
    behavior: Any
    if req_s:
        inner = handler.stream_stream if resp_s else handler.stream_unary
        factory = (grpc.stream_stream_rpc_method_handler if resp_s
                   else grpc.stream_unary_rpc_method_handler)
    else:
        inner = handler.unary_stream if resp_s else handler.unary_unary
        factory = (grpc.unary_stream_rpc_method_handler if resp_s
                   else grpc.unary_unary_rpc_method_handler)
    assert inner is not None
    # a plain-function handler runs off the event loop, as grpc.aio runs it
    the_inner = async_behaviour(inner, req_s, resp_s)

    if resp_s:
        async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            try:
                result = the_inner(request, context)
                async for item in responses(result):
                    yield item
            except UndecodableRequest:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        behavior = stream_behavior
        # a handler wrap may run this guard itself (a layer fewer per response message),
        # as for unary-unary below: a unary request's check, a request stream's except
        if not req_s:
            setattr(stream_behavior, GUARD_MARK, (the_inner, _UNDECODABLE, message))
        else:
            setattr(stream_behavior, STREAM_GUARD_MARK,
                    (the_inner, UndecodableRequest, message))
    else:
        awaits = inspect.iscoroutinefunction(the_inner)  # known per method: no check per call

        async def unary_behavior(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            try:
                result: Any = the_inner(request, context)
                if awaits or inspect.isawaitable(result):
                    return await result
                return result
            except UndecodableRequest:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        behavior = unary_behavior
        if not req_s:  # unary-unary: a handler wrap may run this guard itself (no frame)
            setattr(unary_behavior, GUARD_MARK, (the_inner, _UNDECODABLE, message))
    if in_a_thread(the_inner):  # (see meshkit._handlers.runs_in_a_thread)
        setattr(behavior, THREAD_MARK, True)
    guarded: Handler = factory(behavior, request_deserializer=guarded_des,
                               response_serializer=handler.response_serializer)
    return guarded


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded, and then resolved through the
    server's interceptor chain when it was given one (cached per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, resolve: Resolver | None = None) -> None:
        self._inner = inner
        self._resolve = resolve
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    def service_name(self) -> str | None:
        """The wrapped handler's service name (what the server's reflection lists)."""
        name = getattr(self._inner, "service_name", None)
        return name() if callable(name) else None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The wrapped handler's method handler for the call, guarded (and resolved)."""
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = guard_method_handler(handler)
        if self._resolve is not None:
            guarded = self._resolve(method, guarded)
        if len(self._cache) < 4096:
            self._cache[method] = (handler, guarded)
        return guarded


def guard_generic_handler(
    handler: grpc.GenericRpcHandler,
    resolve: Resolver | None = None,
) -> grpc.GenericRpcHandler:
    """``handler`` whose method handlers are guarded by :func:`guard_method_handler`, then
    passed through ``resolve(method, handler)`` (the server's interceptor
    chain applied per method, :func:`meshkit._handlers.handler_resolver`) when given; both
    once per method."""
    return _GuardedGenericHandler(handler, resolve)


# -- reading unary requests: admission and the first-message timer ------------------------
_request_size: contextvars.ContextVar[int] = contextvars.ContextVar("meshkit_request_size",
                                                                     default=0)
# the call task of a plain-function handler's request stream (RequestGate
# _admit_thread_stream), seen by the request (de)serializer grpc.aio calls in the task
# of the handler thread's read, which copies the call's context: the first message ends
# the call's wait for its request
_thread_stream: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "meshkit_thread_stream", default=None)


class RequestGate(grpc.aio.ServerInterceptor):
    """Reads each unary request itself, so that admission and waiting are bounded.

    grpc.aio reads a unary request before any Python code of the call runs, so a call that
    sends its headers and never its message holds its stream and server slot until the
    client leaves (a task cancelled there sends no status), and no Python code could shed
    a call before its request was assembled. This interceptor, installed outermost by
    :class:`meshkit.MeshServer`, hands grpc a *request-streaming* handler for each
    unary-request method (made once per method) that:

    1. takes a call slot (``max_concurrent_rpcs``; evicting a call that has waited
       ``evict_waiting_after_s`` for its request, else shedding the new call);
    2. sheds the call with ``RESOURCE_EXHAUSTED`` "server busy" while the request bytes of
       calls in flight reach ``max_inflight_request_bytes``;
    3. waits for a read permit (``max_concurrent_reads``), then checks the bytes again;
    4. reads the request message, ending the call after ``first_message_timeout_s`` if it
       has not arrived: ``CANCELLED`` "request did not arrive in time"; a request stream
       closed without a message answers ``UNIMPLEMENTED`` "request message missing: the
       method takes exactly one" (gRPC's code for a request cardinality violation,
       grpc/grpc doc/statuscodes.md, as grpc-js answers; grpc-java ``INTERNAL``). With
       ``ServerLimits.check_request_count`` it then reads once more, within the same
       bounds, for the half-close (a unary client sends it with its message), and a
       second message answers ``UNIMPLEMENTED`` "more than one request message: the
       method takes exactly one"; without it (the default) a call's later messages are
       never read: the handler serves the first and the call may answer ``OK``, as
       grpc.aio's does (the check costs every unary-request call a grpc batch and about
       two event-loop turns, about 7 % of a call's instructions: see that field);
    5. admits the call, counting it (:attr:`active`) and its request bytes until it ends,
       or sheds it with ``RESOURCE_EXHAUSTED`` "server busy" when its bytes would take the
       total over the budget (one message is always admitted when nothing else is in
       flight);
    6. runs the method's handler chain (telemetry and every interceptor, which still see a
       unary call and label it so) with the request;
    7. after calls with large requests end, runs the cyclic garbage collector
       (``gc_after_request_bytes``).

    A call of a plain-function (``def``) handler, which runs in a thread, holds a call
    slot (and its request bytes) until that thread is done with it: also when the call
    ended before, its caller gone while the handler ran
    (:func:`~meshkit._handlers.after_handler_thread`), as a synchronous ``grpc.server``
    holds its slot until the handler returns; a request-streaming one too (not one of the
    request streams' places: :meth:`_admit_thread_stream`), as its handler holds its
    thread while the stream is open. With a thread per slot
    (``ServeOptions.handler_threads``), an admitted call then never waits for a thread:
    a call past the slots is shed at once.

    grpc core takes in no more of a request nobody reads than its stream's flow-control
    window (64 KiB), but once a read is pending it takes in and holds the whole message;
    so the bound on memory is the reads pending at once plus the requests admitted, and
    shedding before the read costs nothing.
    Request-streaming calls are not read here: the handler this gate gives grpc for them
    admits each call (:meth:`admit_stream`: counted in :attr:`streams`, capped with the
    slots; a plain-function handler's takes a slot) before it runs the method's handler
    chain.

    Calls ended here (unary or streaming requests) end before any code of the call ran,
    the server's chain included: telemetry does not see them (not in
    ``grpc_server_started_total``/``grpc_server_handled_total``), the rate limit does not
    charge them, and they are counted in :attr:`shed`, :attr:`timed_out`,
    :attr:`evicted` and :attr:`cardinality` (``meshkit_server_gate_refusals_total``,
    reasons ``shed``, ``timed_out``, ``evicted``, ``cardinality``: each call under one,
    a call evicted for a newer one under ``evicted`` only, whether it then ends
    ``CANCELLED`` or, never read, ``RESOURCE_EXHAUSTED``) and logged as a warning at most
    once a minute.

    Args:
        limits: the :class:`ServerLimits` (``max_concurrent_rpcs``,
            ``max_concurrent_reads``, ``evict_waiting_after_s``,
            ``max_inflight_request_bytes``, ``first_message_timeout_s``,
            ``gc_after_request_bytes``, ``check_request_count``).
    """

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self._budget = limits.max_inflight_request_bytes
        self._timeout_s = limits.first_message_timeout_s
        self._one_request = limits.check_request_count
        self._gc_after = limits.gc_after_request_bytes
        self._garbage_bytes = 0
        self.collections = 0
        self._gc_next = 0.0  # monotonic time before which no collection runs (_run_gc)
        self._gc_timer: asyncio.TimerHandle | None = None  # a collection put off to then
        self.active = 0
        self.inflight_bytes = 0
        self.shed = 0
        self.timed_out = 0
        self.evicted = 0
        self.cardinality = 0  # calls refused UNIMPLEMENTED: no request message, or two
        self._cap = limits.max_concurrent_rpcs
        self._read_cap = limits.max_concurrent_reads
        # read permit holders (each with the time from which it may be evicted) and the
        # calls waiting for a permit (granted newest first)
        self._readers: dict[asyncio.Task[Any], float] = {}
        self._read_waiters: list[tuple[asyncio.Task[Any], asyncio.Future[None]]] = []
        self._evict_after = limits.evict_waiting_after_s
        # calls holding a slot: unary-request ones (waiting for or past their request) and
        # request streams of plain-function handlers (_admit_thread_stream)
        self.slots = 0
        self._waiting: dict[asyncio.Task[Any], float] = {}  # slot holders without a request
        self._evicting: set[asyncio.Task[Any]] = set()  # evicted or timed out
        # the calls ended by an eviction, counted in `evicted` when evicted and so in no
        # other reason as they end (_counted): one reason per refused call
        self._evicted_calls: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        # health checks holding a reserved place (_first_reserved): read without a permit,
        # evicted only for another check (_evict_reserved)
        self._reserved: set[asyncio.Task[Any]] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False  # close(): the server stopped, no timer is armed again
        self._loops = LoopCache()  # the call's task without a getpid per call
        self._logged_at = -1e9
        self._cache: dict[str, tuple[Handler, Handler]] = {}
        self.streams = 0  # request streams of async handlers admitted and not ended
        self._places = None if self._cap is None else self._cap + _STREAM_HEADROOM
        # request streams of async handlers with no message yet either way (admit_stream),
        # oldest first: evictable for a new stream at the places' cap (_evict_stream)
        self._stream_waiting: dict[asyncio.Task[Any], float] = {}
        self._streams_evict = self._places is not None and self._evict_after is not None
        # server streams of unary-request calls (holding a slot) whose last message waits
        # for its client to take it (grpc.aio has not asked for the next one), since when:
        # evictable at the slots' cap after first_message_timeout_s (_evict_stalled)
        self._stalled: dict[asyncio.Task[Any], float] = {}
        self._stall_s = None if self._cap is None else limits.evict_stalled_after_s

    def convert(self, handler: Handler) -> Handler:
        """``handler`` reading its request through the gate when it is a unary-request
        handler (converted to the request-streaming shape), else ``handler`` admitted by
        :meth:`admit_stream` before it runs (:meth:`_admitting`). What
        :meth:`intercept_service` does per method; :func:`meshkit._handlers.fold_outermost`
        folds it into the server's fused interceptor, outside the chain's wrap, so a call
        the gate refuses never reaches the chain (telemetry, authentication, rate limit)."""
        if handler.request_streaming:
            return self._admitting(handler)
        return self._convert(handler)

    def convert_for(self, method: str, handler: Handler) -> Handler:
        """:meth:`convert` of the handler of full method name ``method``, except the
        health service's ``Watch`` (see :meth:`resolve`), which takes no slot and is
        only passed through :func:`~meshkit._handlers.off_loop_handler` (a plain one
        that a user's interceptor returns runs as the server's plain handlers do: its
        threads, meshkit's synchronous context), and its ``Check``, which may take a
        reserved slot past the cap (:meth:`_first_reserved`)."""
        if method == _HEALTH_WATCH:
            return self._reading_watch(off_loop_handler(handler))
        if method == _HEALTH_CHECK and not handler.request_streaming:
            return self._convert(handler, reserved=True)
        return self.convert(handler)

    def _reading_watch(self, handler: Handler) -> Handler:
        """The health service's ``Watch`` (unary-stream) reading its request under
        ``first_message_timeout_s``, without a call slot or read permit: one whose request
        does not arrive in time ends ``CANCELLED`` "request did not arrive in time"
        (counted in :attr:`timed_out`), one half-closed without a request
        ``UNIMPLEMENTED`` (counted in :attr:`cardinality`), as the gate ends other
        unary-request calls. grpc.aio read it with no bound: headers-only ``Watch``
        streams (a hundred a connection) were held, with their tasks, for as long as
        their client kept its connection. One timer per ``Watch`` (a client with
        client-side health checking opens one per channel), nothing per message.
        Another shape, or no timeout, is returned as it is."""
        timeout_s = self._timeout_s
        if timeout_s is None or handler.request_streaming or not handler.response_streaming:
            return handler
        inner = async_behaviour(handler.unary_stream, False, True)
        if inner is None:
            return handler
        abort_late, refuse_count = self._abort_late, self._refuse_count

        async def watch(requests: Any, context: Any) -> AsyncIterator[Any]:
            request: Any = _LATE
            try:
                async with asyncio.timeout(timeout_s):
                    request = await context.read()
            except TimeoutError:
                pass
            if request is _LATE:
                await abort_late(context)
            if request is _EOF:
                await refuse_count(context, _NO_REQUEST)
            async for item in responses(inner(request, context)):
                yield item

        # grpc.aio's "is it async?" per call, cheaper (see meshkit._handlers._GrpcAsync)
        return _request_streaming(handler, _GrpcAsync(watch))

    resolves_per_method = True
    """:meth:`intercept_service` is :meth:`resolve` of the method's handler, so a server may
    apply the gate where handlers are looked up (:func:`meshkit._handlers.handler_resolver`)."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """The call's handler; unary-request ones read their request through the gate."""
        return self.resolve(handler_call_details.method,
                            await continuation(handler_call_details))

    def resolve(self, method: str, handler: Handler | None) -> Handler | None:
        """``handler`` of full method name ``method`` as :meth:`convert_for` makes it,
        cached per method (``None`` stays ``None``, and an unknown method's answer,
        :func:`~meshkit._handlers.answers_unknown`, is returned as it is: the names are
        the callers', so caching them would let a flood fill the cache). The health
        service's ``Watch`` takes no slot (it is not converted, only taken off the loop
        when it is a plain function: see :meth:`convert_for`): a gRPC client with
        client-side health checking keeps one open per channel for the channel's life,
        so 32 such clients would hold every slot and every other call would be shed."""
        if handler is None:
            return None
        if answers_unknown(handler):  # an unknown method's answer: per call, never cached
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        converted = self.convert_for(method, handler)
        if len(self._cache) < 4096:
            self._cache[method] = (handler, converted)
        return converted

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= 60.0:
            self._logged_at = now
            _log.warning(what, shed=self.shed, timed_out=self.timed_out,
                         evicted=self.evicted, cardinality=self.cardinality,
                         inflight_bytes=self.inflight_bytes)

    async def _busy(self, context: Any,
                    what: str = "shedding calls: too many request bytes in flight") -> None:
        if not self._counted():
            self.shed += 1
            self._warn(what)
        await _shed(context)

    def _counted(self) -> bool:
        """Whether the call being ended (the current task's) was evicted, and so already
        counted in :attr:`evicted`: each refused call is counted under one reason of
        ``meshkit_server_gate_refusals_total``. Failure path only."""
        if not self._evicted_calls:
            return False
        task = self._loops.current_task()
        if task is not None and task in self._evicted_calls:
            self._evicted_calls.discard(task)
            return True
        return False

    async def _first(self, context: Any) -> tuple[Any, int]:
        """Take a call slot (:meth:`_enter`'s steps, inline: no frame of their own per
        call), admit the call and read its one request message; returns it and its size
        in bytes (counted in :attr:`inflight_bytes` and the call in :attr:`active`), or
        aborts the call. The caller gives slot and bytes back once the call ends:
        :meth:`_release` (``size``: -1 when it raised before it was admitted, a call shed
        for want of a slot included: see :meth:`_shed_unslotted`)."""
        if self._cap is not None and self.slots >= self._cap and not self._evict():
            await self._shed_unslotted(context)
        self.slots += 1
        budget = self._budget  # (read three times per call: a local)
        if budget is not None and self.inflight_bytes >= budget:
            await self._busy(context)
        task = self._loops.current_task()
        assert task is not None
        self._waiting[task] = now = time.monotonic()
        if self._timeout_s is not None and self._sweep is None:
            self._arm_sweep(asyncio.get_running_loop())
        request: Any = _LATE
        reading = False  # holds a read permit
        try:
            if self._read_cap is not None:
                if len(self._readers) < self._read_cap and not self._read_waiters:
                    # a permit is free and nobody waits: _acquire_read's first step, inline
                    # (_evictable_from of a call that came just now)
                    self._readers[task] = now if self._evict_after is None \
                        else now + self._evict_after
                    reading = True  # (the bytes checked above: nothing ran since)
                else:
                    # waits for a permit: its arrival, for the deadline's admission
                    gate_arrival.set(now)
                    await self._acquire_read(task)
                    reading = True
                    if budget is not None and self.inflight_bytes >= budget:
                        request = _FULL  # filled up while this call waited to read
            if request is _LATE:  # (not _FULL)
                # context.read(), not the request iterator: grpc.aio's iterator is an
                # async generator around it (a frame and asyncgen-hook bookkeeping per call)
                request = await context.read()
                if request is _EOF:
                    request = _MISSING
                elif self._one_request:
                    # check_request_count: the request is whole at the half-close (a
                    # unary client's came with its message: this read answers at once)
                    first, request = request, _LATE
                    request = first if await context.read() is _EOF else _EXTRA
        except asyncio.CancelledError:
            if task not in self._evicting:
                raise
            task.uncancel()
            if self._read_cap is not None and not reading:
                request = _BUSY  # evicted while waiting to read: never read, retry it
        finally:
            self._waiting.pop(task, None)
            if self._evicting:  # empty but while the gate evicts: no call then
                self._evicting.discard(task)
            if reading:
                if self._read_waiters:
                    self._release_read(task)
                else:  # nobody to pass the permit to: _release_read's first step, inline
                    self._readers.pop(task, None)
        if type(request) is _NotAdmitted:  # one check per call for the five markers
            await self._refuse_not_admitted(context, request)
        size = _request_size.get()
        if budget is not None and self.inflight_bytes and self.inflight_bytes + size > budget:
            await self._busy(context)
        self.inflight_bytes += size
        self.active += 1
        return request, size

    async def _refuse_not_admitted(self, context: Any, request: _NotAdmitted) -> None:
        """End the call whose read gave ``request``, a marker of a request the gate does
        not hand on (raises grpc.aio's ``AbortError``): the in-flight budget full
        (``_FULL``) or evicted while waiting to read (``_BUSY``): ``RESOURCE_EXHAUSTED``
        "server busy" (:meth:`_busy`); not in within ``first_message_timeout_s`` or
        evicted while waiting for it (``_LATE``): :meth:`_abort_late`; no request message
        (``_MISSING``) or more than one (``_EXTRA``): :meth:`_refuse_count`."""
        if request is _FULL:
            await self._busy(context)
        elif request is _BUSY:
            await self._busy(context, "shedding calls: too many requests being read")
        elif request is _LATE:
            await self._abort_late(context)
        elif request is _MISSING:
            await self._refuse_count(context, _NO_REQUEST)
        elif request is _EXTRA:
            await self._refuse_count(context, _EXTRA_REQUEST)

    async def _abort_late(self, context: Any) -> None:
        """End a call whose request did not arrive within ``first_message_timeout_s``, or
        that was evicted for a newer call while it waited for it: ``CANCELLED`` (counted
        in :attr:`timed_out` and warned about, unless counted in :attr:`evicted`)."""
        if not self._counted():
            self.timed_out += 1
            self._warn("ended calls whose request did not arrive in time")
        await context.abort(grpc.StatusCode.CANCELLED, "request did not arrive in time")

    async def _refuse_count(self, context: Any, details: str) -> None:
        """End a unary-request call that sent no request message or more than one:
        ``UNIMPLEMENTED`` (gRPC's code for a request cardinality violation, grpc/grpc
        doc/statuscodes.md) with ``details`` (:data:`_NO_REQUEST` or
        :data:`_EXTRA_REQUEST`); counted in :attr:`cardinality` (reason ``cardinality``
        of ``meshkit_server_gate_refusals_total``) and warned about once the status is
        sent. A read grpc core failed (a request over ``max_receive_message_bytes``, or
        a compressed one inflating past it; the caller gone) also reads as ``EOF``: core
        ends that call itself (``RESOURCE_EXHAUSTED`` "Received message larger than
        max", as on a plain grpc.aio server) and cancels its task, which is neither
        counted nor warned about here."""
        try:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, details)
        except grpc.aio.AbortError:
            # the status went out: the client's request stream held another number of
            # messages than one. grpc.aio's read() answers EOF also when grpc core
            # failed the read (a message over grpc.max_receive_message_length, or one
            # inflating past it) or the caller left: core then ends the call itself
            # (RESOURCE_EXHAUSTED "Received message larger than max", CANCELLED), and
            # the call's task is cancelled before this status could be sent, so such a
            # call is not counted or warned about as a cardinality violation
            self.cardinality += 1
            self._warn("refused calls with no request message or more than one (a "
                       "proto that differs between client and server?)")
            raise

    async def _first_reserved(self, context: Any) -> tuple[Any, int]:
        """:meth:`_first` for a health check (``grpc.health.v1.Health/Check``), so that an
        overloaded server still answers the probes that decide whether it is restarted or
        reaped (Kubernetes' and Consul's gRPC checks, 1 s timeouts) instead of failing
        them "server busy": while fewer than ``_HEALTH_RESERVE`` (8) checks hold a
        reserved place, the check takes one, a slot that may lie past the cap
        (:attr:`slots` counts it), and no other call evicts it. With the 8 places held,
        the check takes the place of the check that has waited longest for its request,
        if that wait reached ``evict_waiting_after_s`` (:meth:`_evict_reserved`: a probe
        sends its few bytes with its headers, so checks that send headers only cannot
        hold the reserve for ``first_message_timeout_s`` while every slot is busy); else
        it is any call (:meth:`_first`: a slot, a read permit).

        One holding a reserved place reads its request at once, without a read permit
        (which, under a backlog of slow uploads, go to the newest waiter first: a probe
        waited until it was evicted "server busy") nor the byte budget's check before the
        read, and is evicted only for another check (:meth:`_evict_reserved`;
        ``first_message_timeout_s`` still ends it). Its request is
        bounded instead: one over ``_HEALTH_REQUEST_BYTES`` (4096; a HealthCheckRequest
        names a service) is refused ``RESOURCE_EXHAUSTED`` once read (counted in
        :attr:`shed`), so at most 8 such reads hold ``max_receive_message_bytes`` each,
        for the read only."""
        if len(self._reserved) >= _HEALTH_RESERVE and not self._evict_reserved():
            return await self._first(context)
        task = self._loops.current_task()
        assert task is not None
        self._reserved.add(task)
        self.slots += 1
        self._waiting[task] = time.monotonic()
        if self._timeout_s is not None and self._sweep is None:
            self._arm_sweep(asyncio.get_running_loop())
        request: Any = _LATE
        try:
            request = await context.read()
            if request is not _EOF and self._one_request:
                first, request = request, _LATE
                request = first if await context.read() is _EOF else _EXTRA
        except asyncio.CancelledError:
            if task not in self._evicting:
                raise
            task.uncancel()  # timed out, or evicted for a check: request stays _LATE
        finally:
            self._waiting.pop(task, None)
            self._evicting.discard(task)
        if request is _EOF:
            request = _MISSING
        if type(request) is _NotAdmitted:
            await self._refuse_not_admitted(context, request)
        size = _request_size.get()
        if size > _HEALTH_REQUEST_BYTES:
            request = None
            self.shed += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"health check request of {size} bytes is over "
                                f"{_HEALTH_REQUEST_BYTES}")
        self.inflight_bytes += size
        self.active += 1
        return request, size

    async def _acquire_read(self, task: asyncio.Task[Any]) -> None:
        """Take a read permit (``max_concurrent_reads``) for ``task`` (already in
        ``_waiting``): at once if one is free and nobody waits, else wait, newest waiter
        first; while calls wait, permit holders whose call came ``evict_waiting_after_s``
        ago or more and still has no request are ended (``CANCELLED`` "request did not
        arrive in time"), those that waited for their permit no sooner than a quarter of
        that after they got it: a call that never sends its request cannot keep a permit
        from callers for long, even one it got after waiting, and a call that waited
        still has time to read. Cancellation while waiting gives a permit granted
        meanwhile on to the next waiter."""
        assert self._read_cap is not None
        if len(self._readers) < self._read_cap and not self._read_waiters:
            self._readers[task] = self._evictable_from(task)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (task, granted)
        self._read_waiters.append(entry)
        try:
            while not granted.done():
                await asyncio.wait((granted,), timeout=self._evict_reader())
        except asyncio.CancelledError:
            if entry in self._read_waiters:
                self._read_waiters.remove(entry)
            if granted.done():
                self._release_read(task)
            raise

    def _release_read(self, task: asyncio.Task[Any]) -> None:
        """``task`` is done reading (or never will): its permit goes to the newest
        waiter (under overload the oldest have the least time left)."""
        if self._readers.pop(task, None) is None:
            return
        while self._read_waiters:
            waiter, granted = self._read_waiters.pop()
            if not granted.done():
                self._readers[waiter] = self._evictable_from(waiter)
                granted.set_result(None)
                return

    def _evictable_from(self, task: asyncio.Task[Any]) -> float:
        """When a call getting a read permit now may be evicted from it (monotonic
        seconds): ``evict_waiting_after_s`` after the call came, and not sooner than a
        quarter of that from now."""
        now = time.monotonic()
        if self._evict_after is None:
            return now
        return max(self._waiting.get(task, now) + self._evict_after,
                   now + self._evict_after / 4)

    def _evict_reader(self) -> float | None:
        """End the permit holders that are due (see :meth:`_evictable_from`; their
        permits pass on when their tasks end, moments later); returns the seconds until
        the next holder is due (``None``: never; ``evict_waiting_after_s`` when no holder
        is left to end: the permits freed may go to calls that never send their request
        either)."""
        if self._evict_after is None:
            return None
        now = time.monotonic()
        due: float | None = None
        for task, evictable_from in self._readers.items():
            if task in self._evicting or task.done():
                continue
            if now < evictable_from:
                left = evictable_from - now
                due = left if due is None else min(due, left)
                continue
            self._evict_task(
                task, "evicting calls whose request did not arrive: every read permit taken")
        return self._evict_after if due is None else due

    def admit_stream(self, context: Any) -> Awaitable[None] | None:
        """Admit a request-streaming call of an async handler (which this gate does not
        read; a plain-function handler's takes a call slot instead:
        :meth:`_admit_thread_stream`): counted in :attr:`streams` until it ends, or,
        once the calls holding a slot and the open request streams reach
        ``max_concurrent_rpcs`` + 8, refused: the awaitable returned sheds it
        ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer (counted in
        :attr:`shed`). Run by the handler :meth:`convert` makes, before the method's
        handler chain. grpc.aio's own ``maximum_concurrent_rpcs``, which capped these calls
        before, costs every call of the server a done callback; it is not set while the
        gate runs.

        A stream at the cap evicts the one that has waited longest, at least
        ``evict_waiting_after_s``, for its first message (a request that arrived, or a
        response its handler sent: :meth:`_arrived`), instead of being shed: that call
        ends ``CANCELLED`` "request did not arrive in time" (counted in :attr:`evicted`),
        so streams that send their headers and nothing else cannot hold every place for
        as long as their client keeps its connection. A stream that has exchanged a
        message keeps its place; nothing times out below the cap."""
        if self._places is not None and self.slots + self.streams >= self._places \
                and not self._evict_stream():
            return self._busy(context, "shedding request streams: every call place is taken")
        self.streams += 1
        context.add_done_callback(self._stream_ended)
        if self._streams_evict:
            task = self._loops.current_task()
            assert task is not None
            self._stream_waiting[task] = time.monotonic()
            _thread_stream.set(task)
        return None

    def _evict_stream(self) -> bool:
        """End the request stream of an async handler that has waited longest for its
        first message, if at least ``evict_waiting_after_s``; whether one was evicted
        (its place is given back when its task ends, moments later)."""
        if not self._streams_evict:
            return False
        assert self._evict_after is not None
        now = time.monotonic()
        for task, since in self._stream_waiting.items():
            if now - since < self._evict_after:
                return False  # oldest first: none of the rest has waited longer
            if task not in self._evicting and not task.done():
                self._evict_task(
                    task, "evicting request streams with no message: every place taken")
                return True
        return False

    def _admit_thread_stream(self, context: Any) -> Awaitable[None] | None:
        """:meth:`admit_stream` for a method whose handler runs in a thread
        (:func:`~meshkit._handlers.runs_in_a_thread`): the call takes a call slot, as a
        unary-request call does (:meth:`_enter`: a free slot, or one evicted from the
        call waiting longest for its request; else it is shed ``RESOURCE_EXHAUSTED``
        "server busy" with the nack trailer), not one of the places of request streams,
        and holds it until its handler's thread is done with it, also when the call
        ended before (its caller left while the handler ran:
        :func:`~meshkit._handlers.after_handler_thread`). Such a handler holds one of the
        server's ``handler_threads`` for as long as it runs (its request stream open),
        so with a thread per slot a call admitted beside it must be one a thread is free
        for: counted in the slots, it is (a plain unary call admitted beside an open
        plain upload waited for the thread until its deadline)."""
        refused = self._enter(context)
        if refused is not None:
            return refused
        context.add_done_callback(self._thread_stream_ended)
        # waiting for its first message, as a unary call for its request: evictable after
        # evict_waiting_after_s, ended after first_message_timeout_s (_admitting_in_thread)
        task = self._loops.current_task()
        assert task is not None
        self._waiting[task] = time.monotonic()
        _thread_stream.set(task)
        if self._timeout_s is not None and self._sweep is None:
            self._arm_sweep(asyncio.get_running_loop())
        return None

    def _arrived(self, codec: Callable[[Any], Any] | None,
                 waiting: dict[asyncio.Task[Any], float] | None = None
                 ) -> Callable[[Any], Any]:
        """``codec`` (a request deserializer or response serializer; ``None``: the message
        as it is) of a method whose plain-function handler's request stream takes a call
        slot (:meth:`_admit_thread_stream`), ending the call's wait for its first
        message (so it is neither evicted nor timed out) at its first message either
        way: a request that arrived, or a response the handler sends (a call the server
        is answering is served, not one locking callers out). Per message: a context
        variable read; only such methods pay it, and request-streaming methods of async
        handlers (``waiting``: :attr:`_stream_waiting`, see :meth:`admit_stream`) while
        the places of request streams are capped. The first message also takes the call
        out of ``waiting`` and clears the variable in the context it runs in, so the
        messages after it in that context (all of an async handler's, which grpc.aio
        decodes and encodes in the call's task) skip the dict (a thread's read runs in a
        copy of the call's context: its next read looks again, and finds nothing)."""
        if waiting is None:
            waiting = self._waiting
        if codec is None:
            def arrived_as_is(message: Any) -> Any:
                task = _thread_stream.get()
                if task is not None:
                    waiting.pop(task, None)
                    _thread_stream.set(None)
                return message

            return arrived_as_is
        run = codec

        def arrived(message: Any) -> Any:
            task = _thread_stream.get()
            if task is not None:
                waiting.pop(task, None)
                _thread_stream.set(None)
            return run(message)

        return arrived

    def _thread_stream_ended(self, context: Any) -> None:
        after_handler_thread(context, self._release, -1)

    def calls(self) -> int:
        """The calls holding a call slot: unary-request calls arrived (waiting for their
        request or past it) and not yet ended, and request-streaming calls of a
        plain-function handler (:meth:`_admit_thread_stream`); a plain-function handler's
        call until its thread is done with it (see the class)."""
        return self.slots

    def _stream_ended(self, context: Any) -> None:
        self.streams -= 1

    def _enter(self, context: Any) -> Awaitable[None] | None:
        """Take a call slot: free, or evicted from the call waiting longest for its request
        (``evict_waiting_after_s``); ``None`` once taken. Else the call is shed: the
        awaitable returned aborts it ``RESOURCE_EXHAUSTED`` (a plain function, so that a
        call taking a free slot costs no coroutine). The caller gives the slot back with
        :meth:`_release` once the call ends (also when aborted after). (A unary-request
        call takes its slot in :meth:`_first`, these steps inline.)"""
        if self._cap is not None and self.slots >= self._cap and not self._evict():
            self.shed += 1
            self._warn("shedding calls: every call slot is taken")
            return _shed(context)
        self.slots += 1
        return None

    async def _shed_unslotted(self, context: Any) -> None:
        """Shed a unary-request call that found every call slot taken (:meth:`_first`, as
        :meth:`_enter` sheds): ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer,
        counted in :attr:`shed`. Raises as :func:`_shed` does; as it raises, the call
        takes a slot, so that the caller's :meth:`_release` (size -1) of a call that
        raised in :meth:`_first` gives back what it took (taken and given back with no
        other code between them: no other call ever sees it)."""
        self.shed += 1
        self._warn("shedding calls: every call slot is taken")
        try:
            await _shed(context)
        finally:
            self.slots += 1

    def _evict_reserved(self) -> bool:
        """End the reserved check (:meth:`_first_reserved`) that has waited longest for its
        request, if that wait reached ``evict_waiting_after_s``; whether one was ended (it
        ends ``CANCELLED`` "request did not arrive in time", counted in :attr:`evicted`;
        its place is given back when its task ends, moments later). Asked only when the 8
        reserved places are held."""
        if self._evict_after is None:
            return False
        now = time.monotonic()
        for task, since in self._waiting.items():  # oldest first
            if task not in self._reserved or task in self._evicting or task.done():
                continue
            if now - since < self._evict_after:
                return False
            self._evict_task(task, "evicting health checks whose request did not arrive: "
                                   "every reserved place taken")
            return True
        return False

    def _release_reserved(self, size: int) -> None:
        """:meth:`_release` of a call read by :meth:`_first_reserved`."""
        self._reserved.discard(self._loops.current_task())
        self._release(size)

    def _settle(self, context: Any, size: int) -> None:
        """:meth:`_release` of a call that ended with an exception (cancelled: its caller
        left), once its handler's thread is done with it
        (:func:`~meshkit._handlers.after_handler_thread`): a plain-function handler
        still running holds its slot (and its request's bytes) until it returns, as a
        synchronous ``grpc.server`` holds it, so that with a thread per call slot
        (``ServeOptions.handler_threads``) an admitted call never waits for a thread."""
        after_handler_thread(context, self._release, size)

    def _settle_reserved(self, context: Any, size: int) -> None:
        """:meth:`_settle` of a call read by :meth:`_first_reserved`."""
        self._reserved.discard(self._loops.current_task())
        after_handler_thread(context, self._release, size)

    def _release(self, size: int) -> None:
        """A call that took a slot ended (``size``: its admitted request bytes, -1 if it
        was never admitted); an admitted call gives its request bytes back."""
        self.slots -= 1
        if size >= 0:
            self.active -= 1
            self.inflight_bytes -= size
            if size >= _LARGE_REQUEST_BYTES:
                self._collect(size)

    def _evict(self) -> bool:
        """End the call that has waited longest for its request, if long enough, else the
        server stream that has waited longest for its client to take a message
        (:meth:`_evict_stalled`); whether one was evicted (its slot is given back when its
        task ends, moments later)."""
        return self._evict_waiting() or (bool(self._stalled) and self._evict_stalled())

    def _evict_stalled(self) -> bool:
        """End the server stream (of a unary-request method, holding a slot) whose message
        has waited longest for its client to take it, if at least
        ``evict_stalled_after_s``: a client that never reads (grants no flow-control
        window) held its slots for as long as it kept its connection. Its task is
        cancelled (grpc cancels the stream; the caller, which reads nothing, sees no
        status), counted in :attr:`evicted`. A stream whose handler is producing (not
        parked at a message it handed on) is never stalled."""
        assert self._stall_s is not None
        now = time.monotonic()
        oldest: asyncio.Task[Any] | None = None
        since = now
        for task, at in self._stalled.items():
            if at < since and task not in self._evicting and not task.done():
                oldest, since = task, at
        if oldest is None or now - since < self._stall_s:
            return False
        self._evict_task(
            oldest, "evicting server streams whose client takes no message: every slot taken")
        return True

    def _evict_waiting(self) -> bool:
        """End the call that has waited longest for its request, if long enough."""
        if self._evict_after is None:
            return False
        now = time.monotonic()
        for task, since in self._waiting.items():
            if now - since < self._evict_after:
                return False  # oldest first: none of the rest has waited longer
            if task not in self._evicting and task not in self._reserved \
                    and not task.done():
                self._evict_task(
                    task, "evicting calls whose request did not arrive: every slot taken")
                return True
        return False

    def _evict_task(self, task: asyncio.Task[Any], why: str) -> None:
        """End ``task``'s call for a newer one (it is cancelled; the call ends
        ``CANCELLED`` or is shed, as its read stands), counted once in :attr:`evicted`
        (:meth:`_counted`) and warned about (``why``, rate-limited by :meth:`_warn`)."""
        self._evicting.add(task)
        self._evicted_calls.add(task)
        self.evicted += 1
        self._warn(why)
        task.cancel()

    def close(self) -> None:
        """The server stopped: cancel the timer of :meth:`_arm_sweep` and arm none again.

        The timer is armed when a call starts waiting for its request and stays armed
        until it is due (``first_message_timeout_s``, 10 s by default) even when every
        call got its request long before (cancelling it as the last wait ends would cost
        every call a timer), so a stopped server left it on the loop that long, holding
        the gate. :class:`meshkit.MeshServer` calls this once its grpc server has stopped
        (the drain's last step, and the undoing of a failed start): no call is in the gate
        then. Idempotent; costs the calls nothing (the check is where a timer is armed).
        """
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._gc_timer is not None:  # a collection put off (_collect)
            self._gc_timer.cancel()
            self._gc_timer = None

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm the one timer that ends calls waiting longer than ``first_message_timeout_s``
        for their request, due when the longest wait reaches it (one timer for all calls,
        not one per call: a call's wait then costs a dict entry only); none once the gate
        is closed (:meth:`close`)."""
        if self._closed:
            return
        assert self._timeout_s is not None
        oldest = next(since for t, since in self._waiting.items() if t not in self._evicting)
        self._sweep = loop.call_at(loop.time() + max(0.0, oldest + self._timeout_s
                                                     - time.monotonic()), self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """End every call that has waited ``first_message_timeout_s`` for its request
        (it ends ``CANCELLED``, see :meth:`_first`); re-arm for the rest."""
        self._sweep = None
        assert self._timeout_s is not None
        due = time.monotonic() - self._timeout_s
        for task, since in list(self._waiting.items()):
            if since > due:
                break  # oldest first
            if task not in self._evicting and not task.done():
                self._evicting.add(task)
                task.cancel()
        if any(t not in self._evicting for t in self._waiting):
            self._arm_sweep(loop)

    def _collect(self, size: int) -> None:
        """A large request's call ended: once ``gc_after_request_bytes`` of them have,
        run the cyclic garbage collector (see ``ServerLimits.gc_after_request_bytes``),
        now, or when the previous collection's pause has passed (:meth:`_run_gc`): one
        timer, armed once; none once the gate is closed."""
        if self._gc_after is None:
            return
        self._garbage_bytes += size
        if self._garbage_bytes < self._gc_after or self._gc_timer is not None:
            return
        wait = self._gc_next - time.monotonic()
        if wait <= 0.0:
            self._run_gc()
        elif not self._closed:
            loop = asyncio.get_running_loop()
            self._gc_timer = loop.call_at(loop.time() + wait, self._run_gc)

    def _run_gc(self) -> None:
        """Run the cyclic garbage collector (``gc.collect()``, on the loop), and set when
        the next may run: ``_GC_PAUSE`` (19) times this one's duration after it ended,
        so the collector takes at most about 5 % of the loop's time. A full collection
        costs with the whole heap, not with the requests (about 0.5 s with a cache of
        a million small objects): run per 16 MiB of requests regardless, it stalled
        every call of the server for most of the time large requests came."""
        self._gc_timer = None
        self._garbage_bytes = 0
        self.collections += 1
        started = time.monotonic()
        gc.collect()
        ended = time.monotonic()
        self._gc_next = ended + (ended - started) * _GC_PAUSE

    def _admitting(self, handler: Handler) -> Handler:
        """The request-streaming ``handler`` run once :meth:`admit_stream` has admitted the
        call (a refused call is shed before the handler, and so the server's chain, is
        called). Keeps the behaviour's shape, as the chain's wrap does: an async generator
        stays one (a layer per response message), a coroutine (a client stream, or a
        response stream written with ``context.write``) stays a coroutine (nothing per
        message)."""
        if runs_in_a_thread(handler):
            return self._admitting_in_thread(handler)
        admit = self.admit_stream
        if self._streams_evict:  # streams with no message yet are evictable at the cap
            return self._admitting_waiting(handler, admit, self._stream_waiting)
        if handler.response_streaming:
            inner_s = async_behaviour(handler.stream_stream, True, True)
            assert inner_s is not None
            behaviour: Any
            if _writes(inner_s):  # answers with context.write: grpc.aio awaits it
                behaviour = self._admitted_coroutine(inner_s, admit)
            else:
                async def admitted_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                    refused = admit(context)
                    if refused is not None:
                        await refused
                    async for item in responses(inner_s(requests, context)):
                        yield item

                behaviour = _GrpcAsync(admitted_stream)  # (see meshkit._handlers._GrpcAsync)
            return _request_streaming(handler, behaviour)
        inner_u = async_behaviour(handler.stream_unary, True, False)
        assert inner_u is not None
        return _request_streaming(handler, self._admitted_coroutine(inner_u, admit))

    def _admitting_in_thread(self, handler: Handler) -> Handler:
        """:meth:`_admitting` of a request-streaming ``handler`` that runs a plain-function
        handler in a thread: the call takes a call slot (:meth:`_admit_thread_stream`)
        and waits for its first message as a unary call waits for its request (the
        method's request deserializer and response serializer end the wait at the first
        message either way: :meth:`_arrived`); when the gate ends that wait (evicted at
        the cap after ``evict_waiting_after_s``, or ``first_message_timeout_s`` passed)
        the call ends ``CANCELLED`` "request did not arrive in time" (counted in
        :attr:`timed_out`, or in :attr:`evicted` when evicted), its handler's read fails
        and its thread is given back: headers-only uploads cannot lock callers out."""
        return self._admitting_waiting(handler, self._admit_thread_stream, self._waiting)

    def _admitting_waiting(self, handler: Handler,
                           admit: Callable[[Any], Awaitable[None] | None],
                           waiting: dict[asyncio.Task[Any], float]) -> Handler:
        """The request-streaming ``handler`` admitted by ``admit``, which enters the
        call's task in ``waiting`` (and :data:`_thread_stream`) until its first message
        either way (:meth:`_arrived`); a call the gate evicts from that wait (or times
        out) ends ``CANCELLED`` "request did not arrive in time" (:meth:`_abort_late`).
        For :meth:`_admitting_in_thread` (``waiting``: the call slots' waits) and for the
        request streams of async handlers (:meth:`admit_stream`, :attr:`_stream_waiting`).
        """
        evicting = self._evicting
        abort_late = self._abort_late
        behaviour: Any
        if handler.response_streaming:
            inner_s = async_behaviour(handler.stream_stream, True, True)
            assert inner_s is not None
            if _writes(inner_s):
                behaviour = self._admitted_coroutine(inner_s, admit, waiting)
            else:
                async def admitted_stream(requests: Any, context: Any
                                          ) -> AsyncIterator[Any]:
                    refused = admit(context)
                    if refused is not None:
                        await refused
                    task: Any = _thread_stream.get()  # set by admit
                    try:
                        async for item in responses(inner_s(requests, context)):
                            yield item
                        return
                    except asyncio.CancelledError:
                        if task not in evicting:
                            raise
                        task.uncancel()  # the gate ended its wait: answered below
                    finally:
                        waiting.pop(task, None)
                        evicting.discard(task)
                    await abort_late(context)

                behaviour = _GrpcAsync(admitted_stream)  # (see meshkit._handlers._GrpcAsync)
        else:
            inner_u = async_behaviour(handler.stream_unary, True, False)
            assert inner_u is not None
            behaviour = self._admitted_coroutine(inner_u, admit, waiting)
        return _request_streaming(handler, behaviour,
                                  self._arrived(handler.request_deserializer, waiting),
                                  self._arrived(handler.response_serializer, waiting))

    def _admitted_coroutine(self, inner: Any, admit: Callable[[Any], Awaitable[None] | None],
                            waiting: dict[asyncio.Task[Any], float] | None = None
                            ) -> Callable[[Any, Any], Awaitable[Any]]:
        """``inner`` (a coroutine function, or a function returning an awaitable, an
        async iterator or a response) run once ``admit`` (:meth:`admit_stream`, or its
        variant for a handler in a thread) has admitted the call; what it returns is
        handed on as it is, or awaited when it is awaitable. ``waiting``: the call waits
        for its first message there, in the gate's bookkeeping (see
        :meth:`_admitting_waiting`). Made a :class:`~meshkit._handlers._GrpcAsync`, as
        :meth:`_convert`'s ``unary_out``: grpc.aio's per-call "is it async?" answered at
        its first test."""
        awaits = inspect.iscoroutinefunction(inner)  # known per method: no check per call
        if waiting is not None:
            evicting = self._evicting
            abort_late = self._abort_late

            async def admitted_waiting(requests: Any, context: Any) -> Any:
                refused = admit(context)
                if refused is not None:
                    await refused
                task: Any = _thread_stream.get()  # set by admit
                try:
                    result = inner(requests, context)
                    if awaits or inspect.isawaitable(result):
                        return await result
                    return result
                except asyncio.CancelledError:
                    if task not in evicting:
                        raise
                    task.uncancel()  # the gate ended its wait: answered below
                finally:
                    waiting.pop(task, None)
                    evicting.discard(task)
                await abort_late(context)

            return _GrpcAsync(admitted_waiting)  # grpc.aio's "is it async?" per call, cheaper

        async def admitted(requests: Any, context: Any) -> Any:
            refused = admit(context)
            if refused is not None:
                await refused
            result = inner(requests, context)
            if awaits or inspect.isawaitable(result):
                return await result
            return result

        return _GrpcAsync(admitted)  # (see meshkit._handlers._GrpcAsync)

    def _convert(self, handler: Handler, reserved: bool = False) -> Handler:
        first = self._first_reserved if reserved else self._first  # (takes the slot)
        release = self._release_reserved if reserved else self._release
        settle = self._settle_reserved if reserved else self._settle
        if handler.response_streaming:
            inner_s = async_behaviour(handler.unary_stream, False, True)
            assert inner_s is not None

            stalled, evicting = self._stalled, self._evicting
            watch_stalls = self._stall_s is not None and not reserved
            current_task = self._loops.current_task

            async def stream_out(requests: Any, context: Any) -> AsyncIterator[Any]:
                size = -1
                task = current_task() if watch_stalls else None
                try:
                    request, size = await first(context)
                    result: Any = inner_s(request, context)
                    if task is None:
                        async for item in responses(result):
                            yield item
                    else:  # parked at each message until grpc.aio asks for the next
                        async for item in responses(result):
                            stalled[task] = time.monotonic()
                            yield item
                            del stalled[task]
                except BaseException:  # see unary_out
                    request = result = None
                    if task is not None:
                        stalled.pop(task, None)
                        evicting.discard(task)  # evicted (_evict_stalled), if it was
                    _drop_traceback(sys.exc_info()[1])
                    settle(context, size)
                    raise
                request = result = None
                release(size)

            # grpc.aio's "is it async?" per call, cheaper (see meshkit._handlers._GrpcAsync)
            return _request_streaming(handler, _GrpcAsync(stream_out))
        inner_u = async_behaviour(handler.unary_unary, False, False)
        assert inner_u is not None
        fused = _own_mark(inner_u, GATE_MARK)  # (not one copied onto a wrapper of it)
        if fused is not None:
            # the server's wrap (telemetry) runs these steps in its own frame, as
            # unary_out below: one coroutine frame fewer per call (see GATE_MARK)

            def abandon(context: Any, size: int) -> None:  # in the wrap's except block
                _drop_traceback(sys.exc_info()[1])  # see unary_out
                settle(context, size)

            behaviour = fused(gate=(first, release, abandon))
            if in_a_thread(inner_u):
                setattr(behaviour, THREAD_MARK, True)
            return _request_streaming(handler, behaviour)
        awaits = inspect.iscoroutinefunction(inner_u)  # known per method: no check per call

        async def unary_out(requests: Any, context: Any) -> Any:
            size = -1
            try:
                request, size = await first(context)
                result = inner_u(request, context)
                if awaits or inspect.isawaitable(result):
                    result = await result
            except BaseException:
                # A handler's exception holds, through its traceback, every frame of the
                # handler chain; this frame must not keep the request alive with it (the
                # reporter wrap drops its own reference to the exception, see
                # meshkit._handlers): a cycle through it is freed only by the cyclic GC,
                # which large objects do not trigger, so the traceback of an abort or a
                # cancel, which nothing reads after this, is dropped (_drop_traceback).
                # A call ended early (its caller left) whose handler still runs in a
                # thread gives its slot back when that thread is done (see _settle).
                request = result = None
                _drop_traceback(sys.exc_info()[1])
                settle(context, size)
                raise
            request = None
            release(size)
            return result

        # grpc.aio's "is it async?" per call, cheaper (see meshkit._handlers._GrpcAsync)
        return _request_streaming(handler, _GrpcAsync(unary_out))


class CallSlots(WrappingInterceptor):
    """``max_concurrent_rpcs`` when grpc.aio reads the requests
    (``ServerLimits(read_requests=False)``): a count of the calls running, checked in the
    server's fused handler wrap (no frame of its own: a check and a done callback per
    call), with the request gate's rules, not grpc.aio's cap (which counted the health
    ``Check`` like any call and shed without the nack trailer, uncounted).

    * the health service's ``Watch`` takes no slot (a client with client-side health
      checking holds one open per channel for the channel's life);
    * its ``Check`` may also take one of 8 slots past the cap, so an overloaded server
      still answers its probes;
    * any other call (all four kinds) over the cap is shed ``RESOURCE_EXHAUSTED`` "server
      busy" with the nack trailer (``meshkit-nack: 1``: meshkit clients retry it on
      another endpoint), counted in :attr:`shed` (``ServerStats.gate_shed``) and logged
      as a warning at most once a minute;
    * a call of a plain-function (``def``) handler holds its slot until its thread is
      done with it, also when the call ended before (see :meth:`_before_for_handler`).

    The check runs first in the wrap, before the server's other checks (authentication,
    rate limit), and after telemetry has started observing the call, so a shed call is
    seen by telemetry as ``RESOURCE_EXHAUSTED`` (the request gate sheds before it).

    Args:
        cap: the most calls running at once (``max_concurrent_rpcs``), >= 1.
    """

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap
        self.slots = 0  # calls holding a slot (health Check included, Watch not)
        self.shed = 0
        self._logged_at = -1e9

    def calls(self) -> int:
        """The calls holding a slot now (a plain-function handler's call: until its
        thread is done with it, see :meth:`_before_for_handler`)."""
        return self.slots

    def _before_for(self, method: str) -> Before | None:
        if method == _HEALTH_WATCH:
            return None
        return self._enter_reserved if method == _HEALTH_CHECK else self._enter

    def _before_for_handler(self, method: str, handler: Handler) -> Before | None:
        """:meth:`_before_for`; for a method whose handler runs in a thread
        (:func:`~meshkit._handlers.runs_in_a_thread`), a check whose slot is held until
        the handler's thread is done with the call, also when the call ended before
        (its caller left while the handler ran), as a synchronous ``grpc.server`` holds
        it: with a thread per call slot (``ServeOptions.handler_threads``) an admitted
        call never waits for a thread."""
        if method == _HEALTH_WATCH or not runs_in_a_thread(handler):
            return self._before_for(method)
        cap = self.cap + _HEALTH_RESERVE if method == _HEALTH_CHECK else self.cap
        left = self._left_thread

        def enter_thread(context: Any) -> Awaitable[None] | None:
            if self.slots >= cap:
                return self._refuse(context)
            self.slots += 1
            context.add_done_callback(left)
            return None

        return enter_thread

    def _enter(self, context: Any) -> Awaitable[None] | None:
        if self.slots >= self.cap:
            return self._refuse(context)
        self.slots += 1
        context.add_done_callback(self._left)
        return None

    def _enter_reserved(self, context: Any) -> Awaitable[None] | None:
        if self.slots >= self.cap + _HEALTH_RESERVE:
            return self._refuse(context)
        self.slots += 1
        context.add_done_callback(self._left)
        return None

    def _left(self, context: Any) -> None:
        self.slots -= 1

    def _left_thread(self, context: Any) -> None:
        after_handler_thread(context, self._left, context)

    def _refuse(self, context: Any) -> Awaitable[None]:
        self.shed += 1
        now = time.monotonic()
        if now - self._logged_at >= 60.0:
            self._logged_at = now
            _log.warning("shedding calls: every call slot is taken", shed=self.shed)
        return _shed(context)


_OWN: Any = object()  # _request_streaming: the handler's own (de)serializer


def _request_streaming(handler: Handler, behaviour: Any, des: Any = _OWN,
                       ser: Any = _OWN) -> Handler:
    """The request-streaming handler the gate gives grpc for ``handler``: ``behaviour``
    (a stream-stream one when ``handler`` streams its responses, else stream-unary) with
    ``handler``'s request deserializer and response serializer (or ``des`` / ``ser``
    when given). Made once per method."""
    factory = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
               else grpc.stream_unary_rpc_method_handler)
    made: Handler = factory(
        behaviour,
        request_deserializer=handler.request_deserializer if des is _OWN else des,
        response_serializer=handler.response_serializer if ser is _OWN else ser)
    return made


def _writes(behaviour: Any) -> bool:
    """Whether grpc.aio runs the response-streaming ``behaviour`` as a coroutine (that
    answers with ``context.write``) rather than iterating what it returns: a coroutine
    function, or an object whose ``__call__`` is one."""
    call = getattr(behaviour, "__call__", None)  # noqa: B004 - the method, not callable()
    return inspect.iscoroutinefunction(behaviour) or inspect.iscoroutinefunction(call)


async def _shed(context: Any) -> None:
    """Refuse a call none of whose code ran: ``RESOURCE_EXHAUSTED`` "server busy" with the
    nack trailer (``meshkit-nack: 1``), so meshkit clients retry it on another endpoint."""
    context.set_trailing_metadata((NACK_METADATA,))
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy")


_NO_REQUEST = "request message missing: the method takes exactly one"
_EXTRA_REQUEST = "more than one request message: the method takes exactly one"
_STREAM_HEADROOM = 8  # request streams may take this many places over the slots


class _NotAdmitted:
    """What :meth:`RequestGate._first` holds instead of a request it does not hand on (no
    message, several, none in time, evicted, the byte budget full): told from any message
    by its type."""

    __slots__ = ()


_MISSING = _NotAdmitted()
_EXTRA = _NotAdmitted()
_EOF = grpc.aio.EOF
_LATE = _NotAdmitted()
_BUSY = _NotAdmitted()
_FULL = _NotAdmitted()
_LARGE_REQUEST_BYTES = 1 << 20
# RequestGate._run_gc: the pause after a collection, in multiples of its duration
# (the collector at most 1/20 of the loop's time)
_GC_PAUSE = 19.0


def _drop_traceback(exc: BaseException | None) -> None:
    """Drop the traceback of ``exc`` when it is a call's end leaving the request gate, an
    ``AbortError`` (the status is sent) or a ``CancelledError`` (the call is gone), which
    grpc.aio, the only code outside the gate, neither logs nor reads: that traceback
    holds every frame of the handler chain, the handler's with its request, and a
    reference cycle through it kept the request until the cyclic collector ran (see
    ``ServerLimits.gc_after_request_bytes``); without it they are freed as the call
    ends. Any other exception keeps its traceback (grpc.aio logs it). Failure path
    only."""
    if isinstance(exc, (grpc.aio.AbortError, asyncio.CancelledError)):
        exc.__traceback__ = None
