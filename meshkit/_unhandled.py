"""What a meshkit server answers for an exception its handler does not handle.

grpc.aio answers it with ``UNKNOWN`` and the details ``"Unexpected <class 'X'>: <str(exc)>"``
(and logs it on the ``grpc._cython.cygrpc`` logger), so whatever the exception's text holds
reaches every caller: a database URL with its password, a query, a downstream call's
status with its peer's address. grpc-java's server answers "Application error processing
RPC" and keeps the exception to itself.
:class:`UnhandledErrorInterceptor` answers ``UNKNOWN`` with the exception's type name only
and logs the whole exception (text and traceback) on the server's side, where the trace
and span ids of the call join it when the logs carry them.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import structlog

from meshkit._calls import DEADLINE_SLACK_S, own_deadline_of, propagated_deadline_of
from meshkit._handlers import (
    NoResponse,
    ResponseSerializerError,
    Unhandled,
    WrappingInterceptor,
    status_code_of,
)
from meshkit._log import printable
from meshkit.auth._errors import PermissionDeniedError, UnauthenticatedError
from meshkit.resilience._deadline import (
    ADMISSION_REFUSAL_METADATA,
    DOWNSTREAM_REFUSAL_DETAILS,
    admission_refusal,
)
from meshkit.resilience._retry import size_refusal

__all__ = ["DOWNSTREAM_STATUS_KEY", "UnhandledErrorInterceptor", "downstream_refusal",
           "unhandled_answer", "unhandled_details"]

_log = structlog.get_logger("meshkit.server")


def unhandled_details(exc: BaseException) -> str:
    """The status details a caller gets for ``exc``: its type's name, never its text (e.g.
    ``"Unexpected KeyError in the handler (logged by the server)"``); for a
    :class:`~meshkit._handlers.ResponseSerializerError` (a message the handler wrote
    with ``context.write`` that the serializer refused), its cause's."""
    if type(exc) is ResponseSerializerError and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"Unexpected {type(exc).__name__} in the handler (logged by the server)"


async def _no_response(method: str, context: Any, streaming: bool,
                       shown: str | None = None) -> None:
    """A unary-response handler returned ``None``: ``INTERNAL`` "<method>: the handler
    returned no response" (grpc-go's answer to a nil message; grpc.aio sends an empty
    message for a method without a serializer, ``UNKNOWN`` with protobuf's ``TypeError``
    text for one with); a streaming handler yielded ``None`` (``streaming``): ``INTERNAL``
    "<method>: the handler yielded None for a message" after the messages before it
    (grpc.aio sends an empty message and goes on, or ``UNKNOWN`` with the serializer's
    text). Unless the handler set a status (``set_code``), which is then the answer and
    the missing message is none. Logged with the method's name as ``shown`` (its
    non-printable characters escaped), else as it is."""
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK and code != 0:
        return
    if streaming:
        event, details = "handler yielded no message", "the handler yielded None for a message"
    else:
        event, details = "handler returned no response", "the handler returned no response"
    _log.error(event, method=method if shown is None else shown)
    await context.abort(grpc.StatusCode.INTERNAL, f"{method}: {details}")


_REFUSALS = (UnauthenticatedError, PermissionDeniedError)
"""The errors a handler may raise to refuse its call with their status (see
:func:`unhandled_answer`); any other ``AioRpcError`` (a downstream call's, a meshkit
client's ``MeshRpcError``) is ``UNKNOWN``."""

_DOWNSTREAM_DEADLINE = "deadline exceeded (in a call the handler made under it)"
_DOWNSTREAM_REFUSAL = DOWNSTREAM_REFUSAL_DETAILS

DOWNSTREAM_STATUS_KEY = "meshkit-downstream-status"
"""The trailer a meshkit server answers a downstream refusal that escaped its handler with
(:func:`downstream_refusal`), beside ``RESOURCE_EXHAUSTED``: its value the status code
name (``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``) of the root refusal, the downstream's own
code or, when the downstream is a meshkit server that answered so itself, the code its
own trailer named (a chain of any length names the first refusal). Exported as
``meshkit.DOWNSTREAM_STATUS_KEY``."""

_DOWNSTREAM_REFUSALS = frozenset({grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED})
"""The downstream codes that say the downstream could not serve now (down, draining, no
endpoints, overloaded, its rate-limit storage down), not that this server is at fault."""


def _is_call_error(exc: Exception) -> bool:
    """Whether ``exc`` is a call's error: a grpc.aio channel's ``AioRpcError`` (a meshkit
    channel's ``MeshRpcError`` among them), or a synchronous channel's ``grpc.RpcError``
    that is a ``grpc.Call`` (what a plain-function handler's stub raises)."""
    return isinstance(exc, (grpc.aio.AioRpcError, grpc.Call)) and \
        isinstance(exc, grpc.RpcError)


def downstream_refusal(exc: Exception, context: Any) -> grpc.StatusCode | None:
    """The downstream code of ``exc`` when it is a call's error (:func:`_is_call_error`)
    with a code of :data:`_DOWNSTREAM_REFUSALS` and the handler set no non-``OK`` code
    of its own on ``context`` (``set_code``, which stays the answer), else ``None``. A
    message size limit's ``RESOURCE_EXHAUSTED``
    (:func:`~meshkit.resilience._retry.size_refusal`: the handler's request over the
    downstream's receive limit or its own channel's send limit, an answer over its own
    receive limit) is no refusal to serve now but this server's request or limit, met
    alike on every endpoint: ``None``, as for an ``INVALID_ARGUMENT``. Such a refusal is
    answered ``RESOURCE_EXHAUSTED`` "a call the handler made was refused (<CODE>)" with
    the trailer :data:`DOWNSTREAM_STATUS_KEY` ``: <CODE>`` (:func:`unhandled_answer`,
    :class:`UnhandledErrorInterceptor`). A downstream ``RESOURCE_EXHAUSTED`` that carries
    that trailer itself (a meshkit server's answer to a refusal further down) gives the
    code its trailer names (:func:`_root_refusal`), so a chain of any length answers its
    first caller with the root refusal's code. The failure path only; never raises."""
    if not _is_call_error(exc):
        return None
    call: Any = exc
    try:
        code = call.code()
        if code not in _DOWNSTREAM_REFUSALS or size_refusal(code, call.details()):
            return None
    except Exception:  # a grpc.Call of one's own that cannot tell
        return None
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        code = _root_refusal(call, code)
    own = status_code_of(context.code())
    if own is not None and own is not grpc.StatusCode.OK:
        return None
    refused: grpc.StatusCode = code
    return refused


_ROOT_REFUSALS = {code.name: code for code in _DOWNSTREAM_REFUSALS}
"""The values of a downstream's :data:`DOWNSTREAM_STATUS_KEY` trailer taken as its root
refusal (:func:`_root_refusal`); any other value is no meshkit server's and is ignored."""


def _root_refusal(call: Any, code: grpc.StatusCode) -> grpc.StatusCode:
    """The root refusal of a downstream call's ``RESOURCE_EXHAUSTED``: the code its
    :data:`DOWNSTREAM_STATUS_KEY` trailer names when it carries one of
    :data:`_ROOT_REFUSALS` (the downstream is a meshkit server that answered so for a
    refusal further down: A -> B -> C, C ``UNAVAILABLE``, B answers A
    ``RESOURCE_EXHAUSTED`` with the trailer ``UNAVAILABLE``, and A passes ``UNAVAILABLE``
    on, not B's ``RESOURCE_EXHAUSTED``), else ``code``. Never raises."""
    try:
        trailers = call.trailing_metadata() or ()
        for key, value in trailers:
            if key == DOWNSTREAM_STATUS_KEY:
                return _ROOT_REFUSALS.get(value, code) if isinstance(value, str) else code
    except Exception:  # a grpc.Call of one's own: no trailers, or not pairs
        return code
    return code


def _refused_details(code: grpc.StatusCode) -> str:
    return f"a call the handler made was refused ({code.name})"


def _answer_refusal(code: grpc.StatusCode, context: Any) -> None:
    """Set the answer to a downstream refusal of ``code`` on ``context``: ``RESOURCE_EXHAUSTED``
    :func:`_refused_details` and the trailer :data:`DOWNSTREAM_STATUS_KEY`."""
    context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
    context.set_details(_refused_details(code))
    context.set_trailing_metadata(
        (*(context.trailing_metadata() or ()), (DOWNSTREAM_STATUS_KEY, code.name)))


def _downstream_deadline(exc: Exception, context: Any) -> str | None:
    """The details to answer ``DEADLINE_EXCEEDED`` with when ``exc`` is a downstream call's
    ``DEADLINE_EXCEEDED`` (a grpc.aio or meshkit channel's error, or a synchronous
    channel's ``grpc.RpcError``, what a plain-function handler's stub raises) that this
    call's own deadline accounts for, else ``None``:

    * it ran out this call's deadline, propagated
      (:class:`~meshkit.resilience.DeadlineInterceptor`): raised when this call has (all
      but: :data:`~meshkit._calls.DEADLINE_SLACK_S`) no time left, or by a mesh channel's
      call that ran under this call's deadline less its ``DialOptions.deadline_margin_s``
      and ran that out (the error carries this call's deadline:
      :func:`~meshkit._calls.propagated_deadline_of`, matched within the slack):
      :data:`_DOWNSTREAM_DEADLINE`;
    * a meshkit server refused it before its handler ran, its deadline too short for
      that server's ``DeadlineOptions.min_remaining_s``, or answered so for a refusal
      further down the chain (:func:`~meshkit.resilience._deadline.admission_refusal`:
      its details and trailer), while this call has a deadline and the refused call ran
      under it: a mesh channel's call under this call's deadline, propagated (not one
      under a shorter timeout of its own, or of a channel that does not propagate:
      :func:`~meshkit._calls.own_deadline_of`), or another channel's call, which
      meshkit cannot tell: :data:`_DOWNSTREAM_REFUSAL`, sent with the refusal's trailer
      (:data:`~meshkit.resilience._deadline.ADMISSION_REFUSAL_METADATA`), so a chain of
      any length answers its first caller so and no hop counts the one below it against
      its endpoint.

    The caller's deadline is what ran out or was too short, and the caller is told so
    (as grpc-go's handlers return a downstream status), not ``UNKNOWN``; in details that
    name no downstream (its peer, its own details and trailers stay on this side). A
    downstream call with a shorter timeout of its own, run out with this call's time
    left, is no such error; nor is any downstream status of a call without a deadline.
    Asked on the failure path only."""
    if not _is_call_error(exc):  # (a plain-function handler's stub's too)
        return None
    call: Any = exc
    try:
        if call.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            return None
        details, trailers = call.details(), call.trailing_metadata()
    except Exception:  # a grpc.Call of one's own that cannot tell
        return None
    try:
        remaining = context.time_remaining()
    except Exception:  # a stand-in context
        return None
    if remaining is None:
        return None
    if remaining <= DEADLINE_SLACK_S:
        return _DOWNSTREAM_DEADLINE
    propagated = propagated_deadline_of(exc)  # a margin's time left
    if propagated is not None and \
            abs(time.monotonic() + remaining - propagated) <= DEADLINE_SLACK_S:
        return _DOWNSTREAM_DEADLINE
    try:
        refusal = admission_refusal(details, trailers)
    except Exception:  # a grpc.Call of one's own: trailers of no pairs, odd details
        return None
    if refusal and not own_deadline_of(exc):
        return _DOWNSTREAM_REFUSAL
    return None


def unhandled_answer(exc: Exception, context: Any) -> tuple[grpc.StatusCode, str]:
    """The status (code, details) a meshkit server answers for ``exc``, an exception a
    handler let escape (no gRPC status), on the call of ``context`` (a grpc.aio
    ``ServicerContext``): the non-``OK`` code the handler set before it raised
    (``set_code``, as grpc.aio answers); for :class:`~meshkit.auth.UnauthenticatedError`
    and :class:`~meshkit.auth.PermissionDeniedError` (the server-side refusals a verifier or
    authorizer raises, which no meshkit client call raises: a handler raising one, or
    letting a shared auth helper's escape, refuses its caller) their own code and details,
    as a verifier's are answered (grpc-go's handler returning ``status.Error``); else
    ``RESOURCE_EXHAUSTED`` "a call the handler made was refused (<CODE>)" for a
    downstream call's ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED`` (:func:`downstream_refusal`:
    this server is healthy, its dependency is not; the interceptor adds the trailer
    :data:`DOWNSTREAM_STATUS_KEY`); else ``DEADLINE_EXCEEDED`` for a downstream
    ``DEADLINE_EXCEEDED`` that this call's own deadline accounts for (see
    :func:`_downstream_deadline`: details :data:`_DOWNSTREAM_DEADLINE` or
    :data:`_DOWNSTREAM_REFUSAL`); else ``UNKNOWN``. Details are
    :func:`unhandled_details` but for the deadline answers. The one decision of the code
    an escaping exception gets: :class:`UnhandledErrorInterceptor` sets it on
    ``context`` before the handler wrap reports the call, so telemetry records the code
    sent. Never raises."""
    if isinstance(exc, _REFUSALS):
        return exc.code(), exc.details() or ""
    code = status_code_of(context.code())  # (an integer too: grpc.aio sends it)
    if code is not None and code is not grpc.StatusCode.OK:
        return code, unhandled_details(exc)
    refused = downstream_refusal(exc, context)
    if refused is not None:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, _refused_details(refused)
    downstream = _downstream_deadline(exc, context)
    if downstream is not None:
        return grpc.StatusCode.DEADLINE_EXCEEDED, downstream
    return grpc.StatusCode.UNKNOWN, unhandled_details(exc)


class UnhandledErrorInterceptor(WrappingInterceptor):
    """Answers a handler's unhandled exception ``UNKNOWN`` with
    :func:`unhandled_details`, and logs it at ``error`` on ``meshkit.server`` (event
    ``unhandled exception``, ``method``, ``error_type``, the traceback); with the code the
    handler set (``set_code``) before it raised, when that is not ``OK``, as grpc.aio
    answers (the details are :func:`unhandled_details` all the same); with
    ``DEADLINE_EXCEEDED`` for a downstream call's ``DEADLINE_EXCEEDED`` raised as this
    call's own deadline ran out, or as a mesh channel's call ran out that deadline less
    its ``DialOptions.deadline_margin_s`` (it was that deadline, propagated; details
    ``"deadline exceeded (in a call the handler made under it)"``), and for a meshkit
    server's admission refusal of a call the handler made (too little time left for its
    ``DeadlineOptions.min_remaining_s``; ``meshkit-deadline-refused``), or its answer to
    one further down the chain, while this call has a deadline that the refused call ran
    under (details ``"deadline exceeded (too short for a call the handler made under
    it)"`` and the trailer ``meshkit-deadline-refused``, so every hop of a chain answers
    so; the downstream's details and other trailers are not passed on; ``UNKNOWN`` when a
    mesh channel's call ran under a shorter timeout of its own): see
    :func:`unhandled_answer`; those two are logged at ``debug`` only (event ``deadline
    ran out in a call the handler made``, no traceback: the caller's deadline ran out
    down the chain, an outcome that telemetry counts, not a fault of the handler; at
    ``error`` they were a traceback per call under overload); with the code and details of an
    :class:`~meshkit.auth.UnauthenticatedError` or
    :class:`~meshkit.auth.PermissionDeniedError` the handler raised (a refusal, as
    ``context.abort`` would answer it; not logged); with ``RESOURCE_EXHAUSTED`` "a call
    the handler made was refused (<CODE>)" and the trailer :data:`DOWNSTREAM_STATUS_KEY`
    ``: <CODE>`` for a downstream call's ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED`` (not
    a message size limit's; :func:`downstream_refusal`), in both modes: this server is
    healthy, its dependency is not. ``RESOURCE_EXHAUSTED`` is no default
    outlier-ejection failure code (``UNKNOWN``, ``UNAVAILABLE`` and ``INTERNAL`` are:
    every replica of a middle tier was ejected for its dependency's outage) and no
    default retryable code (the hop below already retried: a second hop retrying
    ``UNAVAILABLE`` multiplies the load on the failing dependency, as RFC 3261 16.7
    forbids a proxy to pass a 503 on); the downstream's details and trailers (a nack,
    the rate-limit storage refusal, its peer) are not passed on; logged at ``debug``
    (``downstream refused a call the handler made``). Any other downstream status
    (a call's error of a grpc.aio, meshkit or synchronous channel) stays ``UNKNOWN``.
    The status is set before the handler wrap reports the call, so telemetry
    (``grpc_server_handled_total``, the server span, the access line) records the code
    sent, and the log line is written under the call's span. What the handler answers
    itself is left alone: ``context.abort``, ``set_code``/``set_details``, and any
    other ``grpc.aio.BaseError``; so is ``asyncio.CancelledError`` (the call is gone).
    A unary-response handler that returns ``None``, or a streaming one that yields it,
    with no status set gets ``INTERNAL`` instead (:func:`_no_response`). A unary response
    is serialized inside the wrap, so an exception of the method's response serializer is
    answered (and counted by telemetry) as the handler's; a streaming response's messages
    are still serialized by grpc.aio (in the wrap, when the server has a
    ``grpc.max_send_message_length``: see :func:`meshkit._handlers.wrap_handler`, which
    also serializes a unary response with one when this is not installed), its
    serializer's exception raised to grpc.aio as a
    :class:`~meshkit._handlers.ResponseSerializerError` naming its type only (its text
    logged here, ``response serializer failed``), as grpc.aio answers it with the text.

    ``serve()`` installs it innermost of the mesh's own checks, fused into their one handler
    wrap (no cost on a call that does not raise). It covers the handler and the
    ``interceptors`` given to ``serve()``, their ``intercept_service`` included (an
    exception there is answered by a handler that aborts at once, whatever the call's
    kind).

    Args:
        expose_exception_text: what ``ServeOptions(expose_exception_text=True)`` installs
            (default ``False``): only the two refusals and a downstream refusal are
            answered (their code and details, as above); every other exception, and
            a unary ``None`` or a ``None`` yielded, is left to grpc.aio (``UNKNOWN``
            "Unexpected <class 'X'>: <text>"), and nothing is logged. On a server with
            no other wrap (no telemetry, no check) this adds one to each call.
    """

    def __init__(self, *, expose_exception_text: bool = False) -> None:
        super().__init__()
        self.expose_exception_text = expose_exception_text

    def _unhandled_for(self, method: str) -> Unhandled:
        # the name as logged: a generic handler may serve any name a caller sends, and
        # the console log writes a value raw (an ESC sequence acts on the reader's
        # terminal, a line break forges a line); escaped once per method
        shown = printable(method)
        if self.expose_exception_text:
            async def refusals_only(exc: Exception, context: Any) -> bool:
                return await _refusals_only(exc, context, shown)

            # the wrap hands it no missing response: left to grpc.aio
            refusals_only.answers_none = False  # type: ignore[attr-defined]
            return refusals_only

        async def unhandled(exc: Exception, context: Any) -> bool:
            if type(exc) is NoResponse:
                await _no_response(method, context, exc.streaming, shown)
                return False
            refused = downstream_refusal(exc, context)
            if refused is not None:
                _answer_downstream_refusal(refused, context, shown)
                return True
            # a code the handler set before it raised is the answer, as grpc.aio's ("allows
            # users to raise other types of exception with specified status code")
            code, details = unhandled_answer(exc, context)
            if details is _DOWNSTREAM_DEADLINE or details is _DOWNSTREAM_REFUSAL:
                # the caller's deadline ran out down the chain: an outcome, not a fault
                # of the handler (grpc-go's handler returning ctx.Err() logs nothing);
                # at error with a traceback it was a line per call under overload
                _log.debug("deadline ran out in a call the handler made", method=shown,
                           error_type=type(exc).__name__, details=details)
            elif not isinstance(exc, _REFUSALS) and type(exc) is not ResponseSerializerError:
                # (a refusal is an answer, as an abort; the serializer's error is logged)
                _log.error("unhandled exception", method=shown,
                           error_type=type(exc).__name__, exc_info=exc)
            # the status set, not aborted with here: the wrap sends it after its except
            # block, a unary response by aborting (the status alone, Trailers-Only), so
            # the AbortError grpc keeps does not chain exc with its frames and the
            # request (see meshkit._handlers.Unhandled)
            context.set_code(code)
            context.set_details(details)
            if details is _DOWNSTREAM_REFUSAL:  # the hop above reads it as the refusal
                context.set_trailing_metadata(
                    (*(context.trailing_metadata() or ()), ADMISSION_REFUSAL_METADATA))
            return True

        return unhandled


def _answer_downstream_refusal(code: grpc.StatusCode, context: Any, shown: str) -> None:
    """Answer a downstream refusal of ``code`` (:func:`downstream_refusal`) on ``context``
    (:func:`_answer_refusal`), logged at ``debug`` (``downstream refused a call the
    handler made``, ``method`` ``shown``): an outcome telemetry counts, not a fault of
    the handler."""
    _log.debug("downstream refused a call the handler made", method=shown, code=code.name)
    _answer_refusal(code, context)


async def _refusals_only(exc: Exception, context: Any, shown: str) -> bool:
    """The answer of an exposing :class:`UnhandledErrorInterceptor` (of the method
    ``shown``, as logged): a refusal's status (:func:`unhandled_answer`) or a downstream
    refusal's (:func:`downstream_refusal`), set; ``False`` for anything else (grpc.aio
    answers it)."""
    refused = downstream_refusal(exc, context)
    if refused is not None:
        _answer_downstream_refusal(refused, context, shown)
        return True
    if not isinstance(exc, _REFUSALS):
        return False
    code, details = unhandled_answer(exc, context)
    context.set_code(code)
    context.set_details(details)
    return True

