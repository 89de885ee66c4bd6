"""The fused server interceptor: span, metrics and access log in one handler wrap."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import json
import time
from bisect import bisect_left as _bisect
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshkit._config import check_instance
from meshkit._handlers import Handler, Reporter, WrappingInterceptor, status_code_of
from meshkit._log import printable as _printable
from meshkit._metadata import LoggedMetadata, call_metadata, logged_metadata
from meshkit._methods import MethodMatcher
from meshkit.errors import ConfigError
from meshkit.observability._logging import (
    ACCESS_OFF,
    AccessEvent,
    TelemetryFailures,
    _AccessLog,
    _AccessWriter,
    access_mode,
    duration_ms,
    json_str,
    line_head,
    line_tail,
    write_access,
)
from meshkit.observability._metrics import BoundServer, rpc_metrics
from meshkit.observability._options import TelemetryOptions, auth_peer_identity
from meshkit.observability._semconv import (
    ATTR_PEER_IDENTITY,
    ATTR_RATE_LIMITED,
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SYSTEM,
    SERVER_ERROR_CODES,
    STATUS_CANCELLED,
    STATUS_DEADLINE,
    STATUS_EXHAUSTED,
    STATUS_OK,
    STATUS_UNAVAILABLE,
    STATUS_UNKNOWN,
    MethodNames,
    grpc_type,
    parse_peer,
)
from meshkit.observability._tracing import (
    PLAIN_NON_RECORDING,
    SpanStarter,
    attach_context,
    attach_span,
    bound_propagation_warnings,
    current_span_context_or_none,
    detach_context,
    extract_context,
    instrumentor_active,
    parse_traceparent,
    set_mesh_attributes,
)
from meshkit.resilience.ratelimit import rejected_by_rate_limit as _rejected_by_rate_limit

__all__ = ["TelemetryServerInterceptor"]

UNKNOWN_TYPE = "unknown"
"""The ``grpc_type`` (metrics, access line) of a call of a method no handler serves."""
OTHER_SPAN = "_OTHER"
"""The span name and ``rpc.method`` of such a call (OpenTelemetry RPC semconv)."""
RPC_METHOD_ORIGINAL = "rpc.method_original"

_perf = time.perf_counter
_time_ns = time.time_ns
_SERVER = SpanKind.SERVER
# what a cancelled call ends with: its task's CancelledError, or the GeneratorExit that
# closes a response stream's generator after grpc.aio cancelled the task (see _outcome)
_CANCELLATIONS = (asyncio.CancelledError, GeneratorExit)


_running_loop = asyncio._get_running_loop  # None outside a running loop (a stream
# handler finalized there)
_Handle = asyncio.Handle
_copy_context = contextvars.copy_context
_BASE_CALL_SOON = asyncio.BaseEventLoop.call_soon  # (_plain_ready: not replaced)


def _plain_ready(loop: asyncio.AbstractEventLoop | None) -> Any:
    """The ready queue of ``loop`` when ``loop.call_soon(...)`` from its own thread would
    only append a new :class:`asyncio.Handle` to it (asyncio's own loop, its
    ``call_soon`` not replaced, not in debug mode), else ``None`` (no loop, uvloop, a loop
    of one's own, debug mode: ``call_soon`` is called)."""
    ready = getattr(loop, "_ready", None)
    if (type(ready) is collections.deque and loop is not None and not loop.get_debug()
            and getattr(loop.call_soon, "__func__", None) is _BASE_CALL_SOON):
        return ready
    return None


def _address(peer: str | None) -> str | None:
    """``ipv4:127.0.0.1:5050`` -> ``127.0.0.1:5050``; ``ipv6:[::1]:5050`` -> ``[::1]:5050``,
    also from the percent-encoded form grpc core (1.6x on) reports,
    ``ipv6:%5B::1%5D:5050``."""
    if not peer:
        return None
    if "%" in peer:
        peer = unquote(peer)
    kind, _, rest = peer.partition(":")
    return rest if kind in ("ipv4", "ipv6") and rest else peer


def _json_once(s: str) -> str:
    """``s`` as a JSON string literal (quotes included), not remembered (see
    :func:`~meshkit.observability._logging.json_str`, which is)."""
    return json.dumps(s, ensure_ascii=False)


_peers: dict[str, tuple[str | None, int | None]] = {}
_peer_json: dict[str, str] = {}


def _address_json(peer: str) -> str:
    """:func:`_address` of ``peer`` as a JSON value (``null`` for none), remembered for the
    last few thousand peers (a connection's calls share one)."""
    quoted = _peer_json.get(peer)
    if quoted is None:
        if len(_peer_json) >= 4096:
            _peer_json.clear()
        address = _address(peer)
        quoted = _peer_json[peer] = "null" if address is None else json_str(address)
    return quoted


def _peer_parts(peer: str) -> tuple[str | None, int | None]:
    """:func:`parse_peer`, remembered for the last few thousand peers (a connection's
    calls share one)."""
    parts = _peers.get(peer)
    if parts is None:
        if len(_peers) >= 4096:
            _peers.clear()
        parts = _peers[peer] = parse_peer(peer)
    return parts


class _Method:
    """Everything one method needs per call, computed on its first call."""

    __slots__ = ("attrs", "bound", "line_head", "log_md", "names", "outcome", "plain_outcome",
                 "traced")

    def __init__(self, names: MethodNames, bound: BoundServer | None, traced: bool,
                 log_md: tuple[str, ...],
                 outcome: Callable[[Any, BaseException | None], grpc.StatusCode] | None = None,
                 ) -> None:
        self.names = names
        self.bound = bound
        self.traced = traced
        self.attrs = names.span_attributes()
        self.log_md = log_md
        self.line_head: str | None = None  # the start of its JSON access line, made once
        # the interceptor's _outcome (the default), or _request_stream_outcome for a
        # request-streaming method (chosen once: a unary-request call pays nothing for
        # the streams' check)
        self.outcome = outcome or TelemetryServerInterceptor._outcome
        # whether it is _outcome, whose commonest answer (no exception, no code set: OK)
        # the interceptor's _finish gives inline (no frame per call)
        self.plain_outcome = self.outcome is TelemetryServerInterceptor._outcome


class _MethodReporter:
    """One method's telemetry: ``start``/``finish`` bound to its record, and the record
    that counts its stream messages (``messages``, see :class:`~meshkit._handlers.Reporter`)."""

    __slots__ = ("finish", "messages", "start")

    def __init__(self, start: Callable[[Any], Any],
                 finish: Callable[[Any, Any, BaseException | None], None],
                 messages: BoundServer | None = None) -> None:
        self.start = start
        self.finish = finish
        self.messages = messages


class _ServerAccess(AccessEvent):
    """A server's ``rpc`` access-log event; its arguments are ``(method, code,
    duration_s, grpc peer string, peer identity or None, logged metadata or None)``."""

    __slots__ = ("service_name",)

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name

    def fields(self, m: _Method, code: grpc.StatusCode,
               duration_s: float, peer: str, identity: str | None,
               md: LoggedMetadata | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "side": "server", "service": self.service_name, "method": m.names.full,
            "grpc_type": m.names.grpc_type, "code": code._name_,
            "duration_ms": duration_ms(duration_s), "peer": _address(peer),
        }
        if identity is not None:
            fields["peer_identity"] = identity
        if md:
            fields["md"] = md
        return fields

    def line(self, args: tuple[Any, ...], level: str, ts: float,
             span_context: Any) -> str | None:
        m, code, duration_s, peer, identity, md = args
        if md:
            return None
        head = m.line_head
        if head is None:
            head = m.line_head = line_head("server", "service", self.service_name,
                                           m.names.full, m.names.grpc_type)
        who = "" if identity is None else f',"peer_identity":{json_str(identity)}'
        # duration_ms(duration_s), inline; the peer's JSON from its cache, or made there
        return (f'{head}{code._name_}","duration_ms":{int(duration_s * 1e6 + 0.5) / 1000!r},'
                f'"peer":{_peer_json.get(peer) or _address_json(peer)}{who}'
                f'{line_tail(level, ts, span_context)}')


class TelemetryServerInterceptor(WrappingInterceptor):
    """Tracing, RED metrics and access logs for a grpc.aio server, as one interceptor.

    Per call, in one wrap of the handler (all four call kinds):

    1. extracts the W3C trace context and baggage from the request metadata and starts a
       SERVER span ``{rpc.service}/{rpc.method}`` (RPC semconv attributes; status code,
       peer address, peer identity and ``meshkit.rate_limited`` (the rate limiter refused
       the call, :func:`meshkit.resilience.rejected_by_rate_limit`) at the end) and makes it
       current, so the handler's logs and outgoing calls belong to it; a failed call's
       unhandled exception is an ``exception`` event naming its type, never its text
       nor its stack trace (``TelemetryOptions.expose_exception_text``);
    2. counts ``grpc_server_started_total`` / ``grpc_server_in_flight`` and at the end
       ``grpc_server_handled_total{grpc_code}`` and ``grpc_server_handling_seconds``,
       labelled with the method's name when the server registered it, else ``other``
       (see :attr:`registered`); a call of a method no handler serves (answered
       ``UNIMPLEMENTED`` "Method not found!", as grpc.aio answers it) is counted as
       ``grpc_type="unknown", grpc_service="other", grpc_method="other"``, traced as
       ``_OTHER`` and logged with the name as sent, its control characters escaped (see
       :meth:`_unknown_reporter`);
    3. logs one ``rpc`` event on ``meshkit.access`` (method, code, duration_ms, peer,
       peer_identity, trace_id, span_id).

    Metrics are recorded before the handler's answer goes back to grpc; under light load
    ending a recorded (sampled) span, writing an access line rendered on the spot and
    capturing the JSON access log's record happen in the event loop's next turn, after the
    response has been handed to gRPC, with the span stamped with the handler's end time
    (``TelemetryOptions.complete_after_response_max_in_flight``), and only while the loop
    has nothing else ready (on asyncio's own loops), since the turn that adds is then idle
    time. An SDK span exists only for a sampled trace (the caller's flag under the default
    parent-based sampler); otherwise a non-recording span carries the trace context. An
    exception while doing either, while starting the span (a span processor's
    ``on_start``: the call then has none) or in ``TelemetryOptions.peer_identity`` (the
    call is then recorded without an identity) is logged on ``meshkit.observability``
    (the first of each exception type a minute, the others counted:
    :class:`~meshkit.observability._logging.TelemetryFailures`) and never fails the call.

    Building it bounds the warnings the OpenTelemetry API's propagators log (standard
    library loggers, :data:`~meshkit.observability._tracing.PROPAGATION_LOGGERS`) for a
    malformed ``baggage`` or ``tracestate`` header, one per call quoting up to 8 KB of the
    caller's text: the first of each message per minute is written, its quote cut to 200
    characters, and the others are counted on its next line
    (:func:`~meshkit.observability._tracing.bound_propagation_warnings`, once per process;
    nothing per call).

    Put it first (outermost) in ``ServeOptions.interceptors``: it then sees the statuses
    the later interceptors produce (``UNAUTHENTICATED``, ``RESOURCE_EXHAUSTED``...).

    Args:
        service_name: mesh service name for the access log's ``service``, e.g. ``"orderd"``.
        options: :class:`TelemetryOptions` (default: everything on).

    Raises:
        ConfigError: empty ``service_name``, or ``options`` no :class:`TelemetryOptions`
            (quoted).
    """

    def __init__(self, service_name: str, options: TelemetryOptions | None = None) -> None:
        if not isinstance(service_name, str) or not service_name:
            raise ConfigError(f"service_name must be a non-empty string, got {service_name!r}")
        check_instance("options", options, TelemetryOptions)
        opts = options or TelemetryOptions()
        self.service_name = service_name
        self.options = opts
        self._spans = SpanStarter(opts.tracer_provider, _SERVER)
        # opentelemetry-instrument's grpc instrumentor makes the spans itself
        self._tracing = opts.tracing and not instrumentor_active("server")
        self._metrics = rpc_metrics(opts.registry) if opts.metrics else None
        self._quiet = MethodMatcher.of(opts.quiet_methods, where="quiet_methods")
        self._identity = opts.peer_identity or auth_peer_identity()
        self._defer_max = opts.complete_after_response_max_in_flight
        self._in_flight = 0
        self._deferred = 0  # completions scheduled for the loop's next turn, not yet run
        # the loop of the last deferral and its ready queue when appended to directly
        # (_ready_of); a loop, once seen, is kept until another one finishes a call. One
        # tuple, read and written whole: an interceptor shared by servers whose loops run
        # in two threads never pairs one loop with the other's queue
        self._ready_at: tuple[asyncio.AbstractEventLoop | None, Any] = (None, None)
        self.server_calls: Callable[[], int] | None = None
        """The server's unary-request calls between arrival and end, when something counts
        them (``serve()`` sets its request gate's :meth:`~meshkit._limits.RequestGate.calls`):
        on a loop that does not show its ready queue (uvloop) a finishing call that is the
        only one lets its JSON access record be captured after the answer, as an idle
        asyncio loop does; ``None``: captured inline there."""
        self.registered: Callable[[str], bool] | None = None
        """Whether a full method name (``/pkg.Service/Method``) is one the server
        registered, asked once per method when its handler is resolved; ``serve()`` sets
        it (its registered methods and ``ServeOptions.generic_methods``). The metrics
        label a method by its name only when it is, else ``grpc_service="other",
        grpc_method="other"`` (gRFC A66: the names a generic handler serves, and those of
        calls failed before any handler was found, are the callers' choice). ``None``
        (this interceptor on a plain grpc.aio server, where nothing tells it): every
        method by its name, up to :data:`~meshkit.observability._metrics.MAX_SERVER_METHODS`
        per registry. Spans and access-log lines always carry the name the caller sent."""
        self.calls_cut: Callable[[], bool] | None = None
        """Whether the server's stop is now ending the calls in flight (a forced drain,
        or the drain's ``grace_s`` run out), whose callers get ``UNAVAILABLE`` from grpc
        core while their handlers see a cancellation: a call this interceptor would
        record ``CANCELLED`` is then recorded ``UNAVAILABLE``, the code sent. ``serve()``
        sets it (``MeshServer._calls_cut``); ``None``: ``CANCELLED`` as it is."""
        self._access = _ServerAccess(service_name)
        # a broken span processor's failures: a line a minute, not one per call
        self._failures = TelemetryFailures()
        # a malformed baggage/tracestate header: one warning per message and minute
        bound_propagation_warnings()
        super().__init__()

    # -- per call ------------------------------------------------------------------------
    def _start(self, m: _Method, context: Any) -> tuple[Any, Any, float, str]:
        bound = m.bound
        if bound is not None:  # bound.start(), inline: one frame fewer per call
            bound.started += 1
            bound.in_flight += 1
        self._in_flight += 1
        # Read the peer now: after a cancellation grpc core may have freed the transport,
        # and context.peer() then crashes the process (grpc/grpc#29069).
        peer = context.peer() if self.options.access_log or m.traced else ""
        span = token = None
        if m.traced:
            # a broken span processor's on_start, sampler or propagator must not fail
            # the call: it goes on without its span (a try costs nothing when none raises)
            try:
                md = call_metadata(context)
                remote = parse_traceparent(md)  # False: another propagator reads it
                if remote is False:  # tracestate, baggage or another propagator: the API's way
                    parent = extract_context(md)
                    sc = trace.get_current_span(parent).get_span_context()
                    span = self._spans.start(m.names.span_name, sc if sc.is_valid else None,
                                             parent, m.attrs)
                    token = attach_context(parent) if span is None \
                        else attach_span(span, parent)
                elif remote is not None or self._spans.makes_root():  # else: no SDK, no parent
                    span = self._spans.start(m.names.span_name, remote, None, m.attrs)
                    if span is not None:
                        token = attach_span(span)
            except Exception as e:
                self._failures.report("telemetry span start failed", e)
        return span, token, _perf(), peer

    def _finish(self, m: _Method, state: tuple[Any, Any, float, str], context: Any,
                exc: BaseException | None) -> None:
        span, token, t0, peer = state
        duration_s = _perf() - t0
        if exc is None and m.plain_outcome and context.code() is None:
            code = STATUS_OK  # _outcome's answer, inline: one frame fewer per call
        else:
            code = m.outcome(context, exc)
            if code is STATUS_CANCELLED and self._cut():
                code = STATUS_UNAVAILABLE  # the server's stop cut it: what the caller got
        defer = self._in_flight + self._deferred <= self._defer_max
        self._in_flight -= 1
        limited = code is STATUS_EXHAUSTED and _rejected_by_rate_limit()
        try:
            bound = m.bound
            if bound is not None:  # bound.finished(...), inline: one frame fewer per call
                if code is STATUS_OK:
                    bound.ok += 1
                else:  # under finished()'s lock: a thread switch splits get-then-set
                    bound.count_code(code)
                bound.counts[_bisect(bound.bounds, duration_s)] += 1
                bound.sum_s += duration_s
                bound.in_flight -= 1
                bound.extra += limited
            # access_mode() != ACCESS_OFF, the JSON access log's answer inline (a frame)
            log = self.options.access_log and (type(_AccessLog.logger) is _AccessWriter
                                               or access_mode() != ACCESS_OFF)
            if span is None and not log:
                return
            try:
                identity = self._identity() if self._identity is not None else None
            except Exception as e:  # a peer_identity function of one's own: never the call's
                self._failures.report("telemetry peer identity failed", e)
                identity = None
            md = self._md(m, context) if log and m.log_md else None
            # Deferred (a recorded span's end, an access line rendered when logged, a
            # captured JSON line) within the limit and only while the loop has nothing
            # else ready (_idle): the turn the deferral adds is then idle time, and the
            # work leaves the response's path (JSON capture -9 to -42 us and every call
            # sampled -22 us of p50 at concurrency 1); on a busy loop, a server under
            # load, it only adds a callback (every call sampled, concurrency 32: +0.9 and
            # +1.9 % QPS once spans too end inline there); benchmarks/RESULTS.md
            loop: Any = _running_loop() if defer else None
            # _idle(loop), its answer for asyncio's own loops inline (one frame fewer per
            # call); another loop (uvloop: no ready queue to read) asks _idle. On
            # asyncio's own loop (checked once per loop: _plain_ready) the completion's
            # handle is appended to the ready queue here, as call_soon() would append it
            # (the same Handle, in a copy of the current context), without its three
            # frames
            at = self._ready_at
            ready = at[1] if at[0] is loop else self._ready_of(loop)
            if ready is not None and not ready:
                # the context copied here still has the span current, as inline
                self._deferred += 1
                ready.append(_Handle(self._complete, (
                    True, m, span, _time_ns(), code, exc, duration_s, peer, identity, md,
                    limited, log), loop, _copy_context()))
            elif ready is None and loop is not None and self._idle(loop):
                # the context copied here still has the span current, as inline
                self._deferred += 1
                loop.call_soon(self._complete, True, m, span, _time_ns(), code, exc,
                               duration_s, peer, identity, md, limited, log)
            else:
                self._complete(False, m, span, None, code, exc, duration_s, peer, identity, md,
                               limited, log)
        finally:
            if token is not None:
                detach_context(token, type(exc) is GeneratorExit)

    def _ready_of(self, loop: asyncio.AbstractEventLoop | None) -> Any:
        """:func:`_plain_ready` of ``loop``, remembered for the next call from the same
        loop (``None``: no loop, not remembered, or ``call_soon`` is called)."""
        if loop is None:
            return None
        ready = _plain_ready(loop)
        self._ready_at = (loop, ready)
        return ready

    def _idle(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether deferring a capture to ``loop``'s next turn costs only idle time: no
        callback ready besides the one running now (asyncio's own loops: their ``_ready``
        queue is empty); on a loop that does not show its ready queue (uvloop), the
        finishing call is the server's only one (:attr:`server_calls`) and nothing is
        deferred yet, as at concurrency 1. (This interceptor's own count cannot say: a
        handler that answers without awaiting starts and finishes in one step, alone in
        it at any load.)"""
        ready = getattr(loop, "_ready", None)
        if ready is not None:
            return not ready
        calls = self.server_calls
        return calls is not None and self._deferred == 0 and calls() <= 1

    @staticmethod
    def _md(m: _Method, context: Any) -> LoggedMetadata | None:
        return logged_metadata(call_metadata(context) or (), m.log_md)

    def _complete(self, deferred: bool, m: _Method, span: Any, end_ns: int | None,
                  code: grpc.StatusCode, exc: BaseException | None, duration_s: float,
                  peer: str, identity: str | None, md: LoggedMetadata | None, limited: bool,
                  log: bool) -> None:
        """End the span (at ``end_ns``) and write the access-log line (``deferred``: run
        from the loop's next turn, counted in ``_deferred``)."""
        if deferred:
            self._deferred -= 1
        try:
            if span is not None:
                # a lean SDK span (a sampled trace's), or an unsampled trace's, read as
                # the client's _complete reads them: no is_recording(), end() (of an
                # unsampled one: it does nothing) or get_span_context() frame
                end_with = getattr(span, "_meshkit_end", None)
                recording = span._end_time is None if end_with is not None else (
                    None if type(span) is PLAIN_NON_RECORDING else span.is_recording() or False)
                if recording:
                    host, port = _peers.get(peer) or _peer_parts(peer)
                    attrs: dict[str, Any] = {RPC_GRPC_STATUS_CODE: code._value_[0]}
                    if host is not None:
                        attrs[NETWORK_PEER_ADDRESS] = host
                    if port is not None:
                        attrs[NETWORK_PEER_PORT] = port
                    if identity is not None:
                        attrs[ATTR_PEER_IDENTITY] = identity
                    if limited:
                        attrs[ATTR_RATE_LIMITED] = True
                    failed = code is not STATUS_OK and code in SERVER_ERROR_CODES
                    # a lean span sets the attributes and ends in one step
                    if end_with is not None and not failed:
                        end_with(attrs, end_ns)
                    else:
                        set_mesh_attributes(span, attrs)
                        if failed:
                            if exc is not None and not isinstance(exc, grpc.aio.AbortError):
                                self._record_exception(span, exc)
                            span.set_status(Status(StatusCode.ERROR, code._name_))
                        span.end(end_ns)
                elif recording is not None:
                    span.end(end_ns)
            if log:  # the access-log event, under the call's span (ended above)
                write_access(code is not STATUS_OK and code in SERVER_ERROR_CODES,
                             self._access, (m, code, duration_s, peer, identity, md),
                             current_span_context_or_none() if span is None
                             else span._context if end_with is not None or recording is None
                             else span.get_span_context())
        except Exception as e:  # telemetry must never break the server's loop
            self._failures.report("telemetry completion failed", e)

    def _record_exception(self, span: Any, exc: BaseException) -> None:
        """The ``exception`` event of a handler's unhandled ``exc`` on ``span``: its type
        and meshkit's details for it (:func:`meshkit._unhandled.unhandled_details`),
        never its text nor its stack trace (a secret in it stays in the server's log),
        unless ``options.expose_exception_text``."""
        if self.options.expose_exception_text:
            span.record_exception(exc)
            return
        name = type(exc).__name__
        # meshkit._unhandled.unhandled_details: what the caller got
        span.add_event("exception", {
            EXCEPTION_TYPE: name,
            EXCEPTION_MESSAGE: f"Unexpected {name} in the handler (logged by the server)",
            EXCEPTION_ESCAPED: True})

    # -- the reporter (meshkit._handlers wraps the handler once, with the checks) -------
    def _reporter_for(self, method: str, handler: Handler) -> Reporter | None:
        """This method's telemetry as a :class:`~meshkit._handlers.Reporter` (resolved
        once per method: names, bound metrics, whether it is traced or quiet), or ``None``
        when nothing is recorded for it. Its names are ``method``'s with each character
        that is not printable escaped as ``repr`` writes it (a generic handler may serve
        a caller's name with an ESC sequence in it, which the console log would write to
        a terminal raw)."""
        opts = self.options
        quiet = self._quiet.lookup(method)
        # a generic handler may serve any name a caller sends, control characters
        # included: the access line and span write it escaped (see _printable)
        names = MethodNames(_printable(method), grpc_type(handler.request_streaming,
                                                          handler.response_streaming))
        bound = None
        if self._metrics is not None:
            registered = self.registered
            bound = self._metrics.bind_server(
                names, registered=registered is None or registered(method))
        traced = self._tracing and not quiet
        if bound is None and not traced and (quiet or not opts.access_log):
            return None
        m = _Method(names, bound, traced, opts.log_metadata,
                    self._request_stream_outcome if handler.request_streaming
                    else self._outcome)
        if quiet:
            m.log_md = ()
            return _MethodReporter(functools.partial(self._start_quiet, m),
                                   functools.partial(self._finish_quiet, m),
                                   bound)
        return _MethodReporter(functools.partial(self._start, m),
                               functools.partial(self._finish, m), bound)

    def _cut(self) -> bool:
        """:attr:`calls_cut`'s answer (``False`` without one, or when it raises: the
        code is then recorded as the handler's task saw it)."""
        cut = self.calls_cut
        if cut is None:
            return False
        try:
            return cut()
        except Exception:
            return False

    @staticmethod
    def _outcome(context: Any, exc: BaseException | None) -> grpc.StatusCode:
        """The status a call ends with: what the handler set or aborted with, CANCELLED /
        DEADLINE_EXCEEDED when cancelled (DEADLINE_EXCEEDED when no time remains), for any
        other exception the non-OK code on ``context``, else UNKNOWN. That code is what
        the caller gets: meshkit's answer to an unhandled exception
        (``UnhandledErrorInterceptor``: UNKNOWN, a code the handler set before raising,
        DEADLINE_EXCEEDED for this call's own deadline run out or refused downstream)
        is set before the wrap reports the call (:func:`meshkit._handlers.wrap_handler`);
        without it, grpc.aio sends the code the handler set ("raise other types of
        exception with specified status code"), else UNKNOWN. A response stream's
        ``GeneratorExit`` is a cancellation: grpc.aio cancels the call's task (the client
        cancelled, or the deadline passed) while it sends a message, outside the
        handler's async generator, which is then closed before its end; except one the
        handler wrap reports as ``meshkit._handlers.MessageNotSent`` (grpc.aio could not
        send a message and answered the call itself)."""
        if exc is None or isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            if code is None:  # none set (most calls: one check)
                return STATUS_OK if exc is None else STATUS_UNKNOWN
            if isinstance(code, grpc.StatusCode):
                return code
            # an integer code grpc.aio sends as that code
            return status_code_of(code) or (STATUS_OK if exc is None else STATUS_UNKNOWN)
        if isinstance(exc, _CANCELLATIONS):
            remaining = context.time_remaining()
            return STATUS_DEADLINE if remaining is not None and remaining <= 0 else STATUS_CANCELLED
        if isinstance(exc, Exception):
            code = status_code_of(context.code())
            if code is not None and code is not STATUS_OK:
                return code
        return STATUS_UNKNOWN

    @staticmethod
    def _request_stream_outcome(context: Any, exc: BaseException | None) -> grpc.StatusCode:
        """:meth:`_outcome` of a request-streaming call (client stream, bidi): one that
        would be OK (the handler returned, no other code set) is DEADLINE_EXCEEDED when no
        time remains (``context.time_remaining()`` <= 0 s). grpc.aio ends the handler's
        request iterator when the deadline passes, before it cancels the handler's task: a
        handler that returns right after it returns normally, but its answer is never
        delivered; the caller gets DEADLINE_EXCEEDED, what grpc core ends the call with.

        (A client's cancel ends the iterator the same way, but grpc.aio shows nothing of
        it to a handler that returned first: ``cancelled()`` stays false and the code
        ``None``, also in the call's done callback; such a call is still counted OK.)"""
        code = TelemetryServerInterceptor._outcome(context, exc)
        if code is STATUS_OK:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                return STATUS_DEADLINE
        return code

    def _unknown_reporter(self, method: str) -> Reporter | None:
        """The telemetry of one call of ``method``, which no handler of the server serves
        (see :meth:`~meshkit._handlers.WrappingInterceptor.unknown`), or ``None`` when
        nothing is recorded. Made per call (the name is the caller's choice, nothing is
        kept per name): metrics in the one record ``grpc_type="unknown",
        grpc_service="other", grpc_method="other"`` (gRFC A66's ``other``; a call that
        cannot be routed shows no kind, a unary call and a bidi stream look the same
        there), also on a server that labels every method by name (:attr:`registered`
        ``None``); a span named ``_OTHER`` with ``rpc.method="_OTHER"`` and the name as
        sent in ``rpc.method_original`` (OpenTelemetry RPC semantic conventions for a
        method the server does not recognise); an access line with the name as sent but
        for its characters that are not printable (grpc core passes a ``:path`` on with
        its control characters, and no check runs before such a call is answered: an ESC
        sequence of any caller's would act on the terminal showing the log), escaped as
        ``repr`` writes them (``\\x1b``, ``\\u202e``; one ``str.isprintable`` per such
        call). Never quiet (``TelemetryOptions.quiet_methods`` names methods the server
        serves: a call of one it does not serve is what an operator looks for). The
        name, up to grpc core's header limit (8 KiB), is kept in no per-name cache (the
        quiet methods' matcher, the JSON access line's strings), which a scanner's names
        would fill with thousands of them."""
        opts = self.options
        shown = _printable(method)  # what the access line writes
        names = MethodNames(shown, UNKNOWN_TYPE)
        names.span_name = OTHER_SPAN
        bound = None
        if self._metrics is not None:
            bound = self._metrics.bind_server(names, registered=False)
        traced = self._tracing
        if bound is None and not traced and not opts.access_log:
            return None
        m = _Method(names, bound, traced, opts.log_metadata)
        m.attrs = {RPC_SYSTEM: "grpc", RPC_METHOD: OTHER_SPAN, RPC_METHOD_ORIGINAL: method}
        if opts.access_log:
            # the JSON line's start, made as line() makes it but for the name, which
            # json_str would remember
            head = line_head("server", "service", self.service_name, "", UNKNOWN_TYPE)
            m.line_head = head.replace(',"method":"",', f',"method":{_json_once(shown)},',
                                       1)
        return _MethodReporter(functools.partial(self._start, m),
                               functools.partial(self._finish, m), bound)

    # quiet methods (health, reflection): metrics only
    def _start_quiet(self, m: _Method, context: Any) -> tuple[Any, Any, float, str]:
        if m.bound is not None:
            m.bound.start()
        return None, None, _perf(), ""

    def _finish_quiet(self, m: _Method, state: tuple[Any, Any, float, str], context: Any,
                      exc: BaseException | None) -> None:
        bound = m.bound
        if bound is None:
            return
        duration_s = _perf() - state[2]
        code = m.outcome(context, exc)
        if code is STATUS_CANCELLED and self._cut():
            code = STATUS_UNAVAILABLE  # (see _finish)
        # a quiet method gets metrics only, the rate limiter's refusals among them
        bound.finished(code, duration_s,
                       code is STATUS_EXHAUSTED and _rejected_by_rate_limit())
