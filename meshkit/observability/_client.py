"""The fused client interceptor (per logical call) and the opt-in attempt-span interceptor."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import time
from typing import Any

import grpc
from grpc.aio import AioRpcError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshkit._calls import DEADLINE_SLACK_S, add_end_callback, kept_status
from meshkit._config import check_instance
from meshkit._log import printable
from meshkit._metadata import LoggedMetadata, logged_metadata
from meshkit._methods import MethodMatcher
from meshkit.interceptors import (
    CallKind,
    ClientCallDetails,
    ClientInterceptor,
    StreamProceed,
    UnaryProceed,
)
from meshkit.observability._logging import (
    ACCESS_CAPTURED,
    ACCESS_INLINE,
    ACCESS_OFF,
    AccessEvent,
    TelemetryFailures,
    _AccessLog,
    _AccessWriter,
    access_mode,
    duration_ms,
    get_logger,
    json_str,
    line_head,
    line_tail,
    write_access,
)
from meshkit.observability._metrics import BoundClient, rpc_metrics
from meshkit.observability._options import TelemetryOptions
from meshkit.observability._semconv import (
    ATTR_ATTEMPTS,
    ATTR_INSTANCE_ID,
    ATTR_RATE_LIMITED,
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
    RPC_GRPC_STATUS_CODE,
    SERVER_ADDRESS,
    SERVER_ERROR_CODES,
    STATUS_CANCELLED,
    STATUS_DEADLINE,
    STATUS_EXHAUSTED,
    STATUS_OK,
    STATUS_UNKNOWN,
    MethodNames,
    grpc_type,
)
from meshkit.observability._tracing import (
    PLAIN_NON_RECORDING,
    SpanStarter,
    attach_span,
    baggage_set,
    current_span_context_or_none,
    detach_context,
    fast_propagation,
    inject_context,
    inject_span,
    instrumentor_active,
    set_mesh_attributes,
    tracing_from_env,
    tracing_wanted,
)
from meshkit.resilience._deadline import current_deadline

__all__ = ["AttemptSpanInterceptor", "TelemetryClientInterceptor"]

_perf = time.perf_counter
_time_ns = time.time_ns
_running_loop = asyncio._get_running_loop  # None outside a running loop
_Handle = asyncio.Handle
_copy_context = contextvars.copy_context
_BASE_CALL_SOON = asyncio.BaseEventLoop.call_soon  # (_ready_of: not replaced)
_internal_log = get_logger("meshkit.observability")
_CLIENT = SpanKind.CLIENT
_INTERNAL = SpanKind.INTERNAL
_STATUS_INTERNAL = grpc.StatusCode.INTERNAL
# method names whose split names an AttemptSpanInterceptor keeps (as many as a channel keeps
# per-method plans); further ones, names a generic proxy's callers chose, are split per call
_MAX_ATTEMPT_NAMES = 1024
_TYPES = {
    CallKind.UNARY_UNARY: grpc_type(False, False),
    CallKind.UNARY_STREAM: grpc_type(False, True),
    CallKind.STREAM_UNARY: grpc_type(True, False),
    CallKind.STREAM_STREAM: grpc_type(True, True),
}
# The logical call an attempt belongs to, for AttemptSpanInterceptor (set only when
# attempt spans are on).
_current_call: contextvars.ContextVar[ClientCallDetails | None] = contextvars.ContextVar(
    "meshkit_observability_call", default=None)
# The attempt being started, ``(number, endpoint)`` (1-based; a
# meshkit.balancer.Endpoint), set by the balanced channel around the start of each attempt
# when an AttemptSpanInterceptor is on its sub-channels: grpc.aio runs the interceptor in
# a task of its own, which copies the context at the start, while the logical call's
# shared list of attempts (_current_call) may have grown by then (hedges launched in the
# same loop turn).
current_attempt: contextvars.ContextVar[tuple[int, Any] | None] = contextvars.ContextVar(
    "meshkit_observability_attempt", default=None)
_tasks: set[asyncio.Task[Any]] = set()


# seconds a call's own deadline may still have left at a cancel and count as passed (the
# clocks' and timers' rounding): a cancel with more time left is its caller's
_DEADLINE_PASSED_S = 0.001


def _cancelled_code(deadline: float | None) -> grpc.StatusCode:
    """:func:`_cancel_code` of a cancelled call with ``deadline``, the deadline of the
    call being handled read where this runs (:func:`~meshkit.resilience.current_deadline`):
    the call's own context (it runs in the one it was made in), or for a stream's done
    callback the canceller's (the handler's task, or one it started)."""
    return _cancel_code(deadline, current_deadline())


def _cancel_code(deadline: float | None, inherited: float | None) -> grpc.StatusCode:
    """The status a cancelled call is counted, logged and traced with (never what its
    caller sees): ``DEADLINE_EXCEEDED`` when a deadline cut it, else ``CANCELLED``.

    A deadline cut it when the call's own ``deadline`` (``time.monotonic()`` seconds,
    ``None`` for none) has passed (to within 1 ms), or when it was made in the handling
    of a call whose deadline (``inherited``, ``time.monotonic()`` seconds:
    :func:`~meshkit.resilience.current_deadline` where the call was made) has (all but
    :data:`~meshkit._calls.DEADLINE_SLACK_S`, 0.05 s) run out: grpc.aio cancels the
    handler's task, and with it the calls it made, when that deadline passes, mostly a
    moment before the own timer of a call under it (propagated) fires, and grpc-go and
    grpc-java end such a child call DEADLINE_EXCEEDED (the server's reporter counts a
    call cancelled with no time left so too). A call its caller cancels with time left,
    however short its timeout, outside a handler's last 0.05 s, is ``CANCELLED``. Read on
    the cancelled path only."""
    now = time.monotonic()
    if deadline is not None and deadline - now <= _DEADLINE_PASSED_S:
        return STATUS_DEADLINE
    if inherited is not None and inherited - now <= DEADLINE_SLACK_S:
        return STATUS_DEADLINE
    return STATUS_CANCELLED


class _Method:
    __slots__ = ("attrs", "bound", "line_head", "names", "quiet", "traced")

    def __init__(self, names: MethodNames, bound: BoundClient | None, traced: bool,
                 quiet: bool = False) -> None:
        self.names = names
        self.bound = bound
        self.traced = traced
        self.quiet = quiet  # no access line (a quiet method, or access_log off)
        self.attrs = names.span_attributes()
        # (target, the start of its JSON access line), made at the first line
        self.line_head: tuple[str, str] | None = None


_NO_SPAN = (None, None, None)  # (span, token, call_token) of an untraced call

class TelemetryClientInterceptor(ClientInterceptor):
    """Tracing, RED metrics and access logs for :func:`meshkit.dial` channels, as one
    per-call :class:`~meshkit.ClientInterceptor` (put it first in
    ``DialOptions.interceptors``; retries run inside it).

    Per logical call (all four kinds; streams are finished when the stream ends):

    1. starts a CLIENT span ``{rpc.service}/{rpc.method}`` (``server.address`` = the
       dialed mesh service), makes it current and injects its context
       (W3C ``traceparent``/``tracestate``, ``baggage``) into the call's metadata, so
       every attempt carries it; at the end it records ``rpc.grpc.status_code``,
       ``meshkit.attempts``, the last endpoint as ``network.peer.address``/``port`` and
       ``meshkit.instance_id``, ``meshkit.rate_limited`` for a rate limiter's
       ``RESOURCE_EXHAUSTED`` (one sent with ``retry-after`` or
       ``grpc-retry-pushback-ms``), and, when there was more than one attempt, an ``attempt``
       event per endpoint tried (or, with ``attempt_spans``, leaves attempts to
       :class:`AttemptSpanInterceptor` and becomes an INTERNAL span);
    2. counts ``grpc_client_started_total``, ``grpc_client_in_flight``,
       ``grpc_client_handled_total{grpc_code}``, ``grpc_client_handling_seconds``,
       ``meshkit_client_attempts_total``;
    3. logs one ``rpc`` event on ``meshkit.access`` (target, method, code, duration_ms,
       peer, attempts, trace_id, span_id).

    A call cancelled (its task's cancellation, ``cancel()``) is recorded ``CANCELLED``,
    or ``DEADLINE_EXCEEDED`` when a deadline cut it: its own deadline had passed, or it
    was made by a handler whose call's deadline had (all but 0.05 s) run out, grpc.aio
    cancelling the handler's task, and the calls it made, when that deadline passes (as
    grpc-go and grpc-java end such a call). A call its caller cancels with time left,
    however short its timeout, is ``CANCELLED``. Only what is recorded: the caller still
    gets its ``CancelledError``.

    Metrics are recorded before the response is returned; under light load ending a
    recorded (sampled) span and writing an access line its logger renders on the spot
    happen two event-loop turns later (after the caller's next step, so that a call it
    starts at once is sent first), the span stamped with the call's end time
    (``TelemetryOptions.complete_after_response_max_in_flight``). The JSON access log's
    record is captured before the response, inline. An SDK span exists only for a
    sampled trace; otherwise a non-recording span carries the trace context. An
    exception while doing either (a broken span processor or log sink), or while
    starting the span (a span processor's ``on_start``: the call then has none), is
    logged on ``meshkit.observability`` (the first of each exception type a minute, the
    others counted: :class:`~meshkit.observability._logging.TelemetryFailures`) and never
    reaches the caller.

    Args:
        options: :class:`TelemetryOptions` (default: everything on).

    Raises:
        ConfigError: ``options`` is no :class:`TelemetryOptions` (quoted).
    """

    def __init__(self, options: TelemetryOptions | None = None) -> None:
        check_instance("options", options, TelemetryOptions)
        opts = options or TelemetryOptions()
        self.options = opts
        self._kind = _INTERNAL if opts.attempt_spans else _CLIENT
        self._spans = SpanStarter(opts.tracer_provider, self._kind)
        # opentelemetry-instrument's grpc instrumentor makes the spans itself
        self._tracing = opts.tracing and not instrumentor_active("client")
        # a process that only dials honours OTEL_* like one that serves (set up at the
        # first call, so serve() in the same process names the service first)
        self._env_tracing = (self._tracing and opts.tracer_provider is None
                             and tracing_wanted())
        self._metrics = rpc_metrics(opts.registry) if opts.metrics else None
        self._quiet = MethodMatcher.of(opts.quiet_methods, where="quiet_methods")
        self._defer_max = opts.complete_after_response_max_in_flight
        self._in_flight = 0
        self._deferred = 0  # completions scheduled for two turns later, not yet run
        # the loop of the last deferral and its ready queue when appended to directly
        # (_ready_of), as one tuple read and written whole: channels on two threads'
        # loops may share this interceptor, and two attributes written one after the
        # other could pair one loop with the other's queue; a loop, once seen, is kept
        # until another one finishes a call
        self._ready_at: tuple[asyncio.AbstractEventLoop | None, Any] = (None, None)
        # per (method, kind, dialed service): one interceptor may serve several channels
        # (client_interceptors(opts) reused in their DialOptions), and each call's span
        # names its own channel's service as server.address
        self._methods: dict[tuple[str, CallKind, str], _Method] = {}
        # a broken span processor's failures: a line a minute, not one per call
        self._failures = TelemetryFailures()

    def _method(self, details: ClientCallDetails) -> _Method:
        key = (details.method, details.kind, details.service)
        m = self._methods.get(key)
        if m is None:
            if self._env_tracing:
                self._env_tracing = False
                try:
                    tracing_from_env(os.environ.get("OTEL_SERVICE_NAME") or "unknown_service")
                except Exception as e:  # checked at construction; never fail a call
                    _internal_log.warning("tracing set-up from OTEL_* failed",
                                          error=str(e))
            # a gateway's channel may call any name its own callers sent, control
            # characters included: the access line and span write it escaped (a console
            # log writes a value raw; see printable), once per method
            names = MethodNames(printable(details.method), _TYPES[details.kind])
            bound = self._metrics.bind_client(names) if self._metrics is not None else None
            quiet = self._quiet.lookup(details.method)
            m = _Method(names, bound, self._tracing and not quiet,
                        quiet or not self.options.access_log)
            m.attrs[SERVER_ADDRESS] = details.service
            if len(self._methods) < 10_000:
                self._methods[key] = m
        return m

    def _start_span(self, m: _Method, details: ClientCallDetails) -> tuple[Any, Any, Any]:
        """``(span, token, call_token)`` of a call of a traced method (``m.traced``): its
        span started, made current and its context injected, as the class docstring
        says (each ``None`` when not made); the calls of other methods take
        :data:`_NO_SPAN` without calling it."""
        span = token = call_token = None
        # a broken span processor's on_start or sampler must not fail the call (see the
        # class docstring): it goes on without its span (a try costs nothing when none
        # raises)
        try:
            parent = self._spans.current_parent()  # False: e.g. defaults without an SDK
            if parent is not False:
                span = self._spans.start(m.names.span_name, parent, None, m.attrs)
                if span is not None:
                    inject_span(details.metadata, span)  # then made current
                    token = attach_span(span)
                elif not fast_propagation() or baggage_set():
                    inject_context(details.metadata)  # no trace context; baggage may travel
        except Exception as e:
            self._failures.report("telemetry span start failed", e)
        if self.options.attempt_spans:
            call_token = _current_call.set(details)
        return span, token, call_token

    def unary_runner(self, proceed: UnaryProceed) -> UnaryProceed:
        """:meth:`intercept_unary` with ``proceed`` bound: the step a channel's chain
        calls for it (:func:`meshkit.interceptors.chain_unary`), with no frame between it
        and the step before it."""

        async def unary_call(details: ClientCallDetails, request: Any) -> Any:
            # _method(details), its cache read inline
            m = (self._methods.get((details.method, details.kind, details.service))
                 or self._method(details))
            bound = m.bound
            if bound is not None:  # bound.start(), inline: one frame fewer per call
                bound.started += 1
                bound.in_flight += 1
            self._in_flight += 1
            # the span of a traced method (no frame for the others), t0 taken after it
            span, token, call_token = self._start_span(m, details) if m.traced else _NO_SPAN
            t0 = _perf()
            if bound is not None and details.kind is CallKind.STREAM_UNARY:
                details.messages = bound  # the channel's request iterator counts msg_sent
            # the error is finished with in its except block, whose name is cleared when it
            # ends: a local keeping it would be held by this frame in the error's own
            # traceback, a reference cycle holding the failed call's state for the collector
            try:
                response = await proceed(details, request)
            except AioRpcError as e:
                self._finish_unary(m, details, span, t0, e.code(), e, call_token, token)
                raise
            except asyncio.CancelledError as e:
                # a cancel by a deadline (its own passed, or the handler's: see _cancel_code)
                self._finish_unary(m, details, span, t0, _cancelled_code(details.deadline), e,
                                   call_token, token)
                raise
            except Exception as e:
                self._finish_unary(m, details, span, t0, STATUS_UNKNOWN, e, call_token, token)
                raise
            except BaseException:  # GeneratorExit, KeyboardInterrupt: finished as before
                self._finish_unary(m, details, span, t0, STATUS_OK, None, call_token, token)
                raise
            try:
                self._finish(m, details, span, t0, STATUS_OK, None)
            finally:
                if call_token is not None:
                    _current_call.reset(call_token)
                if token is not None:
                    detach_context(token)
            return response

        return unary_call

    async def intercept_unary(self, details: ClientCallDetails, request: Any,
                              proceed: UnaryProceed) -> Any:
        """Run a unary-response call inside a span, counted and logged."""
        return await self.unary_runner(proceed)(details, request)

    def _finish_unary(self, m: _Method, details: ClientCallDetails, span: Any, t0: float,
                      code: grpc.StatusCode, exc: BaseException | None, call_token: Any,
                      token: Any) -> None:
        """:meth:`intercept_unary`'s end of a call that raised ``exc``."""
        try:
            self._finish(m, details, span, t0, code, exc)
        finally:
            if call_token is not None:
                _current_call.reset(call_token)
            if token is not None:
                detach_context(token)

    async def intercept_stream(self, details: ClientCallDetails, request: Any,
                               proceed: StreamProceed) -> Any:
        """Open a streaming-response call inside a span; the span, metrics and log are
        finished when the stream ends (from the call's done callback)."""
        m = self._method(details)
        if m.bound is not None:
            m.bound.start()
        self._in_flight += 1
        span, token, call_token = self._start_span(m, details) if m.traced else _NO_SPAN
        t0 = _perf()  # (after the span, as a unary call's)
        if m.bound is not None:
            # the call object counts the responses (and writes), the channel's request
            # iterator the requests
            details.messages = m.bound
        try:
            call = await proceed(details, request)
        except BaseException as e:
            code = e.code() if isinstance(e, AioRpcError) else (
                _cancelled_code(details.deadline) if isinstance(e, asyncio.CancelledError)
                else STATUS_UNKNOWN)
            self._finish(m, details, span, t0, code, e)
            raise
        finally:
            if call_token is not None:
                _current_call.reset(call_token)
            if token is not None:
                detach_context(token)

        def done(c: Any) -> None:
            if c.cancelled():
                # ended by the mesh for a message its codec refused (INTERNAL, or UNKNOWN
                # for a request iterator that raised): that error's code, as the caller
                # reads it from code(); else the caller's own cancel (DEADLINE_EXCEEDED
                # once a deadline cut it: see _cancel_code)
                err = getattr(details, "codec_error", None)
                if not isinstance(err, AioRpcError):
                    # a stream the drain of its departed endpoint cut reads UNAVAILABLE
                    # to its caller (MeshChannel._cut_of), not the caller's cancel
                    cut_of = getattr(getattr(details, "codec", None), "cut_of", None)
                    err = cut_of(c) if cut_of is not None else None
                if isinstance(err, AioRpcError):
                    self._finish(m, details, span, t0, err.code(), err)
                else:
                    self._finish(m, details, span, t0, _cancelled_code(details.deadline),
                                 None)
                return
            task = asyncio.get_running_loop().create_task(
                self._finish_stream(m, details, span, t0, c))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

        # held while a bidi attempt's end is: grpc.aio's stand-in INTERNAL, the server's
        # status still to come once the responses are read (meshkit._calls._HeldEnd)
        add_end_callback(call, done)
        return call

    async def _finish_stream(self, m: _Method, details: ClientCallDetails, span: Any,
                             t0: float, call: Any) -> None:
        exc: AioRpcError | None = None
        try:
            code = await call.code()
            # the server's status, kept by the channel as it came, when grpc.aio replaced
            # it with its own INTERNAL for a write that failed after it (grpc/grpc#36066)
            kept = kept_status(details, call) if code is _STATUS_INTERNAL else None
            if kept is not None:
                code = kept[0]
            if code is STATUS_EXHAUSTED:  # its trailers tell a rate limiter's refusal
                exc = AioRpcError(code, kept[2], kept[3], kept[1]) if kept is not None \
                    else AioRpcError(code, await call.initial_metadata(),
                                     await call.trailing_metadata(), await call.details())
        except Exception:
            code = STATUS_UNKNOWN
        self._finish(m, details, span, t0, code, exc)

    def _finish(self, m: _Method, details: ClientCallDetails, span: Any, t0: float,
                code: grpc.StatusCode, exc: BaseException | None) -> None:
        duration_s = _perf() - t0
        self._in_flight -= 1
        if m.bound is not None:
            m.bound.finished(code, duration_s, len(details.attempts))
        # access_mode(), the JSON access log's answer inline (one frame fewer per call)
        mode = ACCESS_OFF if m.quiet else ACCESS_CAPTURED \
            if type(_AccessLog.logger) is _AccessWriter else access_mode()
        if span is None and mode == ACCESS_OFF:
            return
        # Deferred: ending a recorded span and an access line rendered when logged,
        # whenever the limit allows. Two hops (call_soon of call_soon): a caller that
        # starts its next call at once has that call's first step (grpc.aio sends the
        # request from it) queued behind the first hop, so the completion runs while
        # that request is on its way, not before it is sent (every call sampled, A/B at
        # concurrency 1: -24 to -39 us of p50 against one hop on an AMD EPYC VM; on an
        # Intel Xeon VM, where client and server shared two cores, +6 and +14 against
        # one hop and +37 against inline). A captured JSON line stays inline: deferred
        # the same way it took 13 us off the p50 on the EPYC but added 52-54 us on the
        # Xeon, where the work then runs while the server's threads receive the request
        # (one hop, before the send, measured as inline there); benchmarks/RESULTS.md.
        # the limit read last, only for a completion that could be deferred (this call
        # still counted in flight: + 1)
        if ((span is not None and span.is_recording()) or mode == ACCESS_INLINE) and (
                self._in_flight + 1 + self._deferred <= self._defer_max):
            loop = _running_loop()  # None: a done callback run outside the loop
            if loop is not None:
                self._deferred += 1
                args = (True, m, details, span, _time_ns(), code, exc, duration_s)
                # on asyncio's own loop (checked once per loop: _ready_of) the two hops'
                # handles are made here and the first appended to the ready queue: it
                # appends the second when it runs, as call_soon() from the loop's thread
                # would (the same Handles, in one copy of the current context, which the
                # second hop's call_soon would copy unchanged), without six frames
                at = self._ready_at
                ready = at[1] if at[0] is loop else self._ready_of(loop)
                if ready is not None:
                    ctx = _copy_context()
                    ready.append(_Handle(ready.append, (
                        _Handle(self._complete, args, loop, ctx),), loop, ctx))
                else:  # uvloop, a loop of one's own, debug mode
                    loop.call_soon(loop.call_soon, self._complete, *args)
                return
        if span is None:  # _complete(False, ...) without a span, inline (a frame less)
            try:
                self._log(m, details, code, duration_s, current_span_context_or_none())
            except Exception as e:  # telemetry must never break the caller
                self._failures.report("telemetry completion failed", e)
            return
        self._complete(False, m, details, span, None, code, exc, duration_s)

    def _ready_of(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The ready queue of ``loop`` when ``loop.call_soon(...)`` from its own thread
        would only append a new :class:`asyncio.Handle` to it (asyncio's own loop, its
        ``call_soon`` not replaced, not in debug mode when first seen), else ``None``
        (uvloop, a loop of one's own, debug mode: ``call_soon`` is called); remembered
        for the next call finished on the same loop."""
        ready = getattr(loop, "_ready", None)
        if not (type(ready) is collections.deque and not loop.get_debug()
                and getattr(loop.call_soon, "__func__", None) is _BASE_CALL_SOON):
            ready = None
        self._ready_at = (loop, ready)
        return ready

    def _complete(self, deferred: bool, m: _Method, details: ClientCallDetails, span: Any,
                  end_ns: int | None, code: grpc.StatusCode, exc: BaseException | None,
                  duration_s: float) -> None:
        """End the span (at ``end_ns``) and write the access-log line (``deferred``: run
        two loop turns later, counted in ``_deferred``)."""
        if deferred:
            self._deferred -= 1
        try:
            if span is None:
                self._log(m, details, code, duration_s, current_span_context_or_none())
                return
            # the spans SpanStarter makes are read without their methods' frames (two
            # or three per call): a lean SDK span (a sampled trace's: _meshkit_end)
            # records until it ends; an unsampled trace's (PLAIN_NON_RECORDING) records
            # nothing and its end() does nothing (recording None); both hold their
            # context in _context
            end_with = getattr(span, "_meshkit_end", None)
            recording = span._end_time is None if end_with is not None else (
                None if type(span) is PLAIN_NON_RECORDING else span.is_recording() or False)
            if recording:
                attempts = details.attempts
                n = len(attempts)
                attrs: dict[str, Any] = {RPC_GRPC_STATUS_CODE: code._value_[0],
                                         ATTR_ATTEMPTS: n}
                if n:
                    inst = (attempts[0] if n == 1 else _answered(attempts)).instance
                    attrs[NETWORK_PEER_ADDRESS] = inst.host
                    attrs[NETWORK_PEER_PORT] = inst.port
                    attrs[ATTR_INSTANCE_ID] = inst.instance_id
                if code is STATUS_EXHAUSTED and _limiter_refusal(exc):
                    attrs[ATTR_RATE_LIMITED] = True
                # a lean span sets the attributes and ends in one step when nothing else
                # is added (no attempt events, no error status)
                if end_with is not None and code is STATUS_OK and (
                        n <= 1 or self.options.attempt_spans):
                    end_with(attrs, end_ns)
                else:
                    self._end_span(span, details, attrs, code, exc, end_ns)
            elif recording is not None:
                span.end(end_ns)
            if not m.quiet and (type(_AccessLog.logger) is _AccessWriter
                                or access_mode() != ACCESS_OFF):
                self._log(m, details, code, duration_s, span._context
                          if end_with is not None or recording is None
                          else span.get_span_context())
        except Exception as e:  # telemetry must never break the caller
            self._failures.report("telemetry completion failed", e)

    def _end_span(self, span: Any, details: ClientCallDetails, attrs: dict[str, Any],
                  code: grpc.StatusCode, exc: BaseException | None,
                  end_ns: int | None) -> None:
        """Set ``attrs``, an event per attempt (a retried call without attempt spans) and
        the error status (``code`` not OK) on a recording ``span``, and end it."""
        set_mesh_attributes(span, attrs)
        attempts = details.attempts
        if len(attempts) > 1 and not self.options.attempt_spans:
            starts = details.attempt_started_ns
            for i, ep in enumerate(attempts, 1):
                inst = ep.instance
                span.add_event("attempt", {"meshkit.attempt": i,
                                           NETWORK_PEER_ADDRESS: inst.host,
                                           NETWORK_PEER_PORT: inst.port,
                                           ATTR_INSTANCE_ID: inst.instance_id},
                               timestamp=starts[i - 1] if i <= len(starts) else None)
        if code is not STATUS_OK:
            detail = exc.details() if isinstance(exc, AioRpcError) else None
            span.set_status(Status(StatusCode.ERROR, f"{code._name_}: {detail}"
                                   if detail else code._name_))
        span.end(end_ns)

    def _log(self, m: _Method, details: ClientCallDetails, code: grpc.StatusCode,
             duration_s: float, span_context: Any) -> None:
        # capture only what the line needs, not the call's details: a captured record
        # lives until its batch is written (flush_interval_s), and the details hold the
        # attempt's grpc call; every object kept alive that long is walked by the garbage
        # collector's young-generation passes and promoted to the old ones
        attempts = details.attempts
        md = None
        if self.options.log_metadata and details.metadata:
            md = logged_metadata(details.metadata, self.options.log_metadata)
        n = len(attempts)
        # a failure the server's side would log as a warning (UNAVAILABLE, DEADLINE_EXCEEDED,
        # INTERNAL, UNKNOWN, ...) is one here too: at a WARNING log level a call that never
        # reached a server is otherwise in no log at all
        write_access(code is not STATUS_OK and code in SERVER_ERROR_CODES, _CLIENT_ACCESS, (
            m, details.service, (attempts[0] if n == 1 else _answered(attempts)).address
            if n else None, n, code, duration_s, md), span_context)


_PUSHBACK_KEYS = ("retry-after", "grpc-retry-pushback-ms")


def _limiter_refusal(exc: BaseException | None) -> bool:
    """Whether a ``RESOURCE_EXHAUSTED`` answer ``exc`` is a rate limiter's refusal: it
    carries the ``retry-after`` or ``grpc-retry-pushback-ms`` trailer that meshkit's
    limiter (:mod:`meshkit.resilience.ratelimit`) sends with it, not a message over a size
    limit, a handler's own quota answer or a server's call-slot refusal, which the
    ``meshkit.rate_limited`` span attribute does not count (as the server's side does
    not). Read for such answers only."""
    if not isinstance(exc, AioRpcError):
        return False
    try:
        trailers = exc.trailing_metadata() or ()
        return any(key in _PUSHBACK_KEYS for key, _ in trailers)
    except Exception:  # telemetry never fails the call
        return False


def _answered(attempts: list[Any]) -> Any:
    """The endpoint a call of several attempts settled on: a hedged call's
    (``HedgedAttempts.answered``: attempts run side by side), else the last one tried
    (retries run one after another)."""
    answered = getattr(attempts, "answered", None)
    return answered if answered is not None else attempts[-1]


class _ClientAccess(AccessEvent):
    """A client's ``rpc`` access-log event; its arguments are ``(method, target, the
    address of the endpoint the call settled on (the last attempt's, a hedged call's
    that answered) or None, attempts, code, duration_s, logged metadata or None)``."""

    __slots__ = ()

    def fields(self, m: _Method, service: str, peer: str | None, attempts: int,
               code: grpc.StatusCode, duration_s: float,
               md: LoggedMetadata | None) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "side": "client", "target": service, "method": m.names.full,
            "grpc_type": m.names.grpc_type, "code": code._name_,
            "duration_ms": duration_ms(duration_s), "peer": peer, "attempts": attempts,
        }
        if md:
            fields["md"] = md
        return fields

    def line(self, args: tuple[Any, ...], level: str, ts: float,
             span_context: Any) -> str | None:
        m, service, peer, attempts, code, duration_s, md = args
        if md:
            return None
        head = m.line_head
        if head is None or head[0] != service:
            head = m.line_head = (service, line_head("client", "target", service,
                                                     m.names.full, m.names.grpc_type))
        # duration_ms(duration_s), inline
        return (f'{head[1]}{code._name_}","duration_ms":{int(duration_s * 1e6 + 0.5) / 1000!r},'
                f'"peer":{"null" if peer is None else json_str(peer)},'
                f'"attempts":{attempts}{line_tail(level, ts, span_context)}')


_CLIENT_ACCESS = _ClientAccess()


class AttemptSpanInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """One CLIENT span per attempt (opt-in): what ``DialOptions.telemetry`` with
    ``attempt_spans=True`` installs; by hand (:func:`attempt_interceptors`) only in the
    ``DialOptions.attempt_interceptors`` of a channel dialed with ``telemetry=None``.

    Runs on each endpoint's sub-channel, under the logical span of a
    :class:`TelemetryClientInterceptor` built with ``attempt_spans=True``: names the span
    like the call, records ``server.address`` (the dialed mesh service, Required on RPC
    client spans by the OpenTelemetry RPC semconv), ``meshkit.attempt`` (1-based), the endpoint
    (``network.peer.address``/``port``, ``meshkit.instance_id``) and the attempt's status
    (a cancelled attempt's ``DEADLINE_EXCEEDED`` when the logical call's deadline had
    passed or the handled call's had run out, as the logical span's), and re-injects
    ``traceparent`` so the server span is the attempt's child (on a copy of the details,
    ``_replace``, of their class: an application's ``grpc.aio.ClientCallDetails``
    subclass reaches the interceptors after this one with its own attributes, as
    grpc.aio passes it on). The number and endpoint
    are those of the attempt being started, as the balanced channel gives them when it
    starts it (hedged attempts started in the same loop turn each name their own,
    although grpc.aio runs the interceptor a turn later).
    Without the logical interceptor (or when tracing is off) it passes calls through.

    Costs an extra task per attempt (grpc.aio runs client interceptors in a task), which
    is why attempts are events on the logical span by default.

    Args:
        options: the same :class:`TelemetryOptions` as the logical interceptor (only
            ``tracer_provider`` is used).

    Raises:
        ConfigError: ``options`` is no :class:`TelemetryOptions` (quoted).
    """

    def __init__(self, options: TelemetryOptions | None = None) -> None:
        check_instance("options", options, TelemetryOptions)
        opts = options or TelemetryOptions()
        self._tracer = trace.get_tracer("meshkit.observability",
                                        tracer_provider=opts.tracer_provider)
        self._names: dict[str, MethodNames] = {}
        self._failures = TelemetryFailures()  # a line a minute, not one per attempt

    def _begin(self, client_call_details: Any) -> tuple[Any, Any]:
        call = _current_call.get()
        if call is None:
            return None, client_call_details
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        names = self._names.get(method)
        if names is None:
            names = MethodNames(method, "")
            if len(self._names) < _MAX_ATTEMPT_NAMES:  # method names a proxy's callers chose
                self._names[method] = names
        # this attempt's number and endpoint, as the channel started it (current_attempt);
        # else (an attempt started by other code) the logical call's latest
        attempt = current_attempt.get()
        if attempt is None:
            attempts = call.attempts
            number = len(attempts)  # (a HedgedAttempts is truthy while one waits)
            ep = attempts[-1] if number else None
        else:
            number, ep = attempt
        attrs: dict[str, Any] = {**names.span_attributes(), SERVER_ADDRESS: call.service,
                                 "meshkit.attempt": number}
        if ep is not None:
            inst = ep.instance
            attrs[NETWORK_PEER_ADDRESS] = inst.host
            attrs[NETWORK_PEER_PORT] = inst.port
            attrs[ATTR_INSTANCE_ID] = inst.instance_id
        try:
            span = self._tracer.start_span(names.span_name, None, _CLIENT, attrs)
        except Exception as e:  # a broken span processor's on_start: the attempt goes on
            self._failures.report("telemetry span start failed", e)
            return None, client_call_details
        md: list[tuple[str, str | bytes]] = list(client_call_details.metadata or ())
        inject_context(md, trace.set_span_in_context(span))
        details = client_call_details._replace(metadata=grpc.aio.Metadata(*md))
        own = getattr(client_call_details, "__dict__", None)
        if own:  # an application's details subclass: _replace (tuple.__new__) drops these
            details.__dict__.update(own)
        return span, details

    @staticmethod
    def _end(span: Any, code: grpc.StatusCode) -> None:
        span.set_attribute(RPC_GRPC_STATUS_CODE, code._value_[0])
        if code is not STATUS_OK:
            span.set_status(Status(StatusCode.ERROR, code._name_))
        span.end()

    async def _unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        span, details = self._begin(client_call_details)
        if span is None:
            return await continuation(details, request)
        call = None
        try:
            call = await continuation(details, request)
            code = await call.code()
        except AioRpcError as e:
            self._end(span, e.code())
            raise
        except asyncio.CancelledError:
            # grpc.aio cancels only this interceptor's task while it runs: the RPC itself
            # must be cancelled too, or it runs on at its server (a caller's cancel, a
            # hedge that lost)
            if call is not None:
                call.cancel()
            # by a deadline: the logical call's (this task's context still names it),
            # or the handled call's (see _cancel_code)
            logical = _current_call.get()
            self._end(span, _cancelled_code(None if logical is None else logical.deadline))
            raise
        except Exception:  # no status (grpc's UsageError of a closed sub-channel): ended too
            self._end(span, STATUS_UNKNOWN)
            raise
        self._end(span, code)
        return call

    async def _stream(self, continuation: Any, client_call_details: Any,
                      request: Any) -> Any:
        span, details = self._begin(client_call_details)
        if span is None:
            return await continuation(details, request)
        logical = _current_call.get()  # set: there is a span
        deadline = None if logical is None else logical.deadline
        inherited = current_deadline()  # the handled call's, for a cancel
        try:
            call = await continuation(details, request)
        except BaseException as e:
            self._end(span, e.code() if isinstance(e, AioRpcError) else STATUS_UNKNOWN)
            raise

        async def finish() -> None:
            try:
                code = (_cancel_code(deadline, inherited) if call.cancelled()
                        else await call.code())
            except Exception:
                code = STATUS_UNKNOWN
            self._end(span, code)

        def done(_c: Any) -> None:
            task = asyncio.get_running_loop().create_task(finish())
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

        call.add_done_callback(done)
        return call

    # grpc.aio calls these positionally (so the third parameter's name, ``request`` here
    # and ``request_iterator`` in grpc's stream-request interfaces, is never used): a
    # unary-response attempt waits for its status before returning, a streaming one is
    # ended from the call's done callback
    intercept_unary_unary = _unary
    intercept_stream_unary = _unary  # type: ignore[assignment]
    intercept_unary_stream = _stream
    intercept_stream_stream = _stream  # type: ignore[assignment]
