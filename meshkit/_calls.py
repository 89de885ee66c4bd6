"""The call objects the balanced channel returns: one grpc.aio call protocol, written once.

A meshkit call is a *logical* call: telemetry, retries and the balancer may run several
attempts (grpc.aio calls on endpoints' sub-channels) behind it. Like grpc's own
``aio/_interceptor.py`` (``InterceptedCall``), every call object here has one base,
:class:`MeshCall`, that answers the grpc.aio call API — ``cancel``, ``cancelled``,
``done``, ``add_done_callback``, ``time_remaining``, ``initial_metadata``,
``trailing_metadata``, ``code``, ``details``, ``wait_for_connection`` — from two facts
fixed when the call *settles*:

* ``_call``: the grpc.aio call of the attempt the call settled on (the one that answered,
  or the committed stream), or ``None`` when no attempt carries the outcome;
* ``_error``: the error the call ended with before or instead of that attempt (a status
  raised by the mesh, e.g. ``UNAVAILABLE`` for no endpoint, or by an attempt), or ``None``.
  A gRPC status (``AioRpcError``, :class:`~meshkit.errors.MeshRpcError`) or a
  cancellation is kept as a copy without its traceback and raised as a new copy each
  time the call reports it, as grpc.aio raises a new ``AioRpcError`` each time
  (:func:`_fresh`: such a failed call is no reference cycle); any other exception (one
  a client interceptor raised) is kept and raised as itself, with the traceback it was
  raised with, every time, as grpc.aio re-raises its interceptors' task's exception.

Three subclasses say how a call settles: :class:`UnaryResponseCall` (unary-unary and
stream-unary: when the response or the final error is there), :class:`StreamResponseCall`
(unary-stream and stream-stream: when the attempt is open) and :class:`RetryingStreamCall`
(a server stream retried until its first message, gRFC A6's commit point).

As grpc.aio's own call objects: a unary-response call is sent whether or not it is
awaited (from the loop's next turns when no await in the turn it was made in ran it
inline); a call runs (a stream opens) in the context it was made in, wherever and
whenever it is awaited or used (the caller's identity, current span and baggage,
propagated deadline: a call made under a span and awaited after its ``with`` block, or by
another task, is still that span's child); cancelling the task awaiting a unary-response
call, or a stream's ``read``, ``write``, ``done_writing`` or iteration
(``task.cancel()``, an ``asyncio.wait_for`` timeout) cancels the call
(``_StreamResponseMixin._read``), even before its attempt is open; cancelling a task
awaiting an accessor (``code()``, ``initial_metadata()``...) leaves the call alone.
``cancel()`` of a stream sets its outcome (``CANCELLED``) at once: ``done()`` is true
when it returns. A stream the *mesh* ends ends its reader or writer with
:class:`~meshkit.errors.MeshRpcError`, as a unary call in flight, not with grpc.aio's
``CancelledError`` in a task nobody cancelled: ``CANCELLED`` when the channel closed,
``UNAVAILABLE`` when its endpoint left and ``drain_timeout_s`` ran out (retried as such
before a retried stream's commit).

A call's ``DEADLINE_EXCEEDED`` that ran out the propagated deadline of the call being
handled (``DialOptions.deadline_margin_s`` before it) is marked as it is raised
(:func:`propagated_deadline_of`), so a meshkit server answers the handler that lets it
escape ``DEADLINE_EXCEEDED`` (meshkit._unhandled); nothing is done on a call that ends
otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, ClassVar

import grpc
import structlog
from grpc.aio import AioRpcError, Metadata

from meshkit._codecs import (
    Undecodable,
    bytes_message,
    codec_error,
    serialize_message,
    undecodable_error,
)
from meshkit._loop import LoopCache
from meshkit._metadata import with_previous_attempts
from meshkit.errors import MeshRpcError, RequestSerializationError
from meshkit.interceptors import ClientCallDetails

__all__ = [
    "DEADLINE_SLACK_S",
    "MeshCall",
    "RetryingStreamCall",
    "StreamResponseCall",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryResponseCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "own_deadline_of",
    "propagated_deadline_of",
]

_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_UNKNOWN = grpc.StatusCode.UNKNOWN
_INTERNAL = grpc.StatusCode.INTERNAL
_OK = grpc.StatusCode.OK
_EOF = grpc.aio.EOF

_LOCALLY_CANCELLED = "Locally cancelled by application!"  # grpc.aio's details of a cancel
_CORE_INTERNAL = "Internal error from Core"  # grpc.aio's details of its own INTERNAL
_log = structlog.get_logger("meshkit.channel")
# the task a unary call runs in (for cancel()), without a getpid per call
_current_task = LoopCache().current_task
_get_running_loop = asyncio._get_running_loop
_copy_context = contextvars.copy_context
_BASE_CALL_SOON = asyncio.BaseEventLoop.call_soon  # (_Made: a loop that did not replace it)


def _call_back(callback: Callable[[Any], None], call: MeshCall) -> None:
    """Run one done callback. An exception it raises is logged (``done callback raised``)
    and goes no further, as asyncio's and grpc.aio's: not into the caller's ``await``, not
    in the way of the callbacks after it."""
    try:
        callback(call)
    except Exception as exc:
        _log.error("done callback raised", method=call._details.method,
                   callback=repr(callback), error_type=type(exc).__name__, exc_info=exc)


class _NoTask:
    """Stands for the task of a unary call whose coroutine runs outside any asyncio task
    (driven by hand): there is no task to cancel (done: :meth:`MeshCall.cancel` cancels
    only a task not done), and the call still counts as started."""

    __slots__ = ()

    def done(self) -> bool:
        return True

    def uncancel(self) -> int:
        return 0


_NO_TASK: Any = _NoTask()


async def _not_sent(details: ClientCallDetails, request: Any) -> Any:
    """The chain of a unary call cancelled before it started: sends nothing."""
    raise asyncio.CancelledError()


DEADLINE_SLACK_S = 0.05
"""Seconds a deadline may still have left and count as run out (0.05): timers, and the
deadline's own timer still to fire."""

# the attribute of a DEADLINE_EXCEEDED error that ran out the propagated deadline
_PROPAGATED = "_meshkit_propagated_deadline"
# the attribute of a DEADLINE_EXCEEDED error of a call that ran under a deadline of its
# own, not the propagated one
_OWN_DEADLINE = "_meshkit_own_deadline"


def _mark_propagated_deadline(details: ClientCallDetails, error: BaseException) -> None:
    """On a call's ``DEADLINE_EXCEEDED`` (the error path only): when the call ran under the
    deadline of the call being handled (as admitted, before any ``deadline_scope`` of the
    handler's: ``meshkit.resilience._deadline.handled_deadline()``, less
    ``DialOptions.deadline_margin_s``, propagated) and that deadline has run out, ``error``
    carries the handled call's deadline (``time.monotonic()`` seconds), for
    :func:`propagated_deadline_of`; when it ran under a deadline of its own while a call
    is being handled (its timeout or a ``deadline_scope`` of the handler's shorter than
    the propagated deadline, or a channel that does not propagate), ``error`` is marked
    so, for :func:`own_deadline_of`. The
    channel's method record (``details.codec``) knows whether it propagates and its
    margin."""
    codec: Any = getattr(details, "codec", None)
    propagated = getattr(codec, "propagated_deadline", None)
    if propagated is None:
        return
    deadline = propagated(details)
    with contextlib.suppress(AttributeError):  # an error class with __slots__
        if deadline is not None:
            setattr(error, _PROPAGATED, deadline)
        elif codec.own_deadline(details):
            setattr(error, _OWN_DEADLINE, True)


def propagated_deadline_of(error: BaseException) -> float | None:
    """The deadline (``time.monotonic()`` seconds) of the handled call whose propagated
    deadline a mesh channel's call ran out with ``error`` (``DEADLINE_EXCEEDED``), or
    ``None`` when it did not (a timeout of its own, no propagation, another status)."""
    deadline = getattr(error, _PROPAGATED, None)
    return deadline if isinstance(deadline, float) else None


def own_deadline_of(error: BaseException) -> bool:
    """Whether ``error`` (``DEADLINE_EXCEEDED``) ended a mesh channel's call made while a
    call was being handled, under a deadline of the call's own rather than the handled
    call's, propagated (a shorter timeout, a method's default one, or a channel that does
    not propagate): then it is not the handled call's deadline that was short or ran
    out. ``False`` for any other error, a call of another channel among them."""
    return getattr(error, _OWN_DEADLINE, False) is True


def _fresh(error: BaseException) -> BaseException:
    """For a gRPC status (``AioRpcError`` and its subclasses, meshkit's
    :class:`~meshkit.errors.MeshRpcError` among them) or an
    :class:`asyncio.CancelledError`: a new exception that is ``error`` for whoever catches
    it (its type, ``args``, attributes: an ``AioRpcError``'s code, details, metadata and
    debug string, a mesh error's fields, a propagated deadline's mark; its
    ``__cause__``, ``__context__`` and notes), without a traceback; ``error`` itself when
    its type cannot be made so (a ``__new__`` refusing its ``args``). Any other exception
    is ``error`` itself.

    A call keeps such a copy as its outcome and raises another each time it reports it
    (``await``, ``read``...), as grpc.aio's ``_raise_for_status`` builds a new
    ``AioRpcError`` per raise, and a cancelled task a new ``CancelledError``: an
    exception gets the frames it goes through, the call's own (``self``) and its
    caller's (a local holding the call), so an outcome kept and raised as itself holds
    its call in a reference cycle, and the call's whole state (details, metadata,
    request, attempts, the chain's frames) waits for the cyclic collector.

    Other exceptions (a client interceptor's ``OSError``, ``UnicodeDecodeError``, an
    application's own error class) are not copied, as grpc.aio raises its interceptors'
    task's own exception each time: a copy would lose the traceback of where it was
    raised and what the exception keeps outside ``args`` and ``__dict__``
    (``OSError.filename``, ``UnicodeDecodeError``'s fields, ``__slots__``,
    ``AttributeError.name``). Such a call is a reference cycle, as grpc.aio's is (its
    interceptors' task keeps the exception). The error path only."""
    if not isinstance(error, (AioRpcError, asyncio.CancelledError)):
        return error
    cls = type(error)
    try:
        new: BaseException = cls.__new__(cls, *error.args)
    except Exception:
        return error
    new.__dict__.update(error.__dict__)
    new.__cause__ = error.__cause__
    new.__context__ = error.__context__
    new.__suppress_context__ = error.__suppress_context__
    return new


def _mesh_cut(details: ClientCallDetails, call: Any = None) -> MeshRpcError:
    """The error of a stream whose attempt (``call``, when known) the mesh ended under its
    reader or writer (grpc.aio's ``CancelledError`` in a task nobody cancelled): the
    channel's (``details.codec.cut_of``: ``UNAVAILABLE`` for an attempt a drain cut,
    whatever happened since; else ``details.codec.mesh_cut``: ``CANCELLED`` when it was
    closed, ``UNAVAILABLE`` when the endpoint left and its ``drain_timeout_s`` ran out, as
    a unary call so cut, and retried as ``UNAVAILABLE`` is before a retried stream's
    commit); ``CANCELLED`` without a channel's plan. The error path only."""
    if call is not None:
        cut_of = getattr(details.codec, "cut_of", None)
        if cut_of is not None and (err := cut_of(call)) is not None:
            return err  # type: ignore[no-any-return]
    cut = getattr(details.codec, "mesh_cut", None)
    if cut is not None:
        return cut("stream")  # type: ignore[no-any-return]
    return MeshRpcError(_CANCELLED, f"stream to {details.service!r} cancelled: the channel "
                        "was closed or its endpoint left")


def kept_status(details: ClientCallDetails, call: Any) -> tuple[Any, ...] | None:
    """For ``call``, a bidi attempt grpc.aio reports ``INTERNAL``: the status its server
    sent, ``(code, details, initial metadata, trailing metadata, debug string)``, kept by
    the channel as it arrived (``details.codec.kept_status``); the call objects' and
    telemetry's (``meshkit.observability._client``) one way to it: grpc.aio (1.85,
    grpc/grpc#36066) replaces a call's status with ``INTERNAL`` "Internal error from
    Core" when a write in flight as the server ended it fails after that status. ``None``
    when nothing was kept (the ``INTERNAL`` is the call's own). The error path only."""
    kept = getattr(details.codec, "kept_status", None)
    return kept(call) if kept is not None else None


def _kept_error(details: ClientCallDetails, status: tuple[Any, ...]) -> AioRpcError:
    """The ``AioRpcError`` of a kept status (:func:`kept_status`; not ``OK``)."""
    code, text, initial, trailing, debug = status
    error = AioRpcError(code, initial, trailing, text, debug)
    if code is _DEADLINE_EXCEEDED:
        _mark_propagated_deadline(details, error)
    return error


# the attribute of a bidi attempt (a grpc.aio call) whose end is held (_HeldEnd)
_HELD = "_meshkit_held_end"
_GC_CANCELLED = "Cancelled upon garbage collection!"  # grpc.aio's details of such a cancel


def _now(coro: Coroutine[Any, Any, Any]) -> Any:
    """What ``coro`` (an accessor of an ended grpc.aio call) returns, run to its end at
    once; ``RuntimeError`` when it would suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the accessor suspended")


def _stand_in(call: Any) -> bool:
    """Whether ``call`` (a grpc.aio call) reports grpc.aio's own ``INTERNAL`` "Internal
    error from Core" as its status now (not an ended call: ``False``)."""
    try:
        return bool(call.done()) and _now(call.code()) is _INTERNAL \
            and _now(call.details()) == _CORE_INTERNAL
    except Exception:
        return False


class _HeldEnd:
    """The end of a bidi attempt (``call``, a grpc.aio call) whose first status was
    grpc.aio's stand-in: a write of the caller's failed as the server ended the call, and
    grpc.aio (1.85, grpc/grpc#36066) set its own ``INTERNAL`` "Internal error from Core"
    and ran the call's done callbacks then, although the server's status (an ``OK``
    answer, mostly) comes only once the responses are read, as any stream's (grpc core
    gives it after the messages); it sets that status then, running no callback. So the
    channel holds the attempt's end here (:func:`hold_end`, kept on the attempt as
    :data:`_HELD`): its done callbacks (the balancer's outcome, telemetry's, the call
    object's) wait in :attr:`callbacks`, and run when the responses have been read to
    their end (:meth:`release`, by the call object's ``read()`` and iteration at
    ``EOF`` or the status, and by its accessors once the status is the server's, which
    they await: :func:`_server_status`), each reading the server's status; or, for a
    call dropped before (:meth:`dropped`), as grpc.aio's collection of a call not done,
    its core call is cancelled ("Cancelled upon garbage collection!", ``CANCELLED``),
    which also ends grpc.aio's task waiting for the status (one per such call until its
    channel closed), and the callbacks run in the loop. The attempt and this record hold
    each other (:data:`_HELD`; :attr:`call` and the callbacks, bound to it) until the
    release, so a drop is seen as the call object that read the attempt is freed
    (``StreamResponseCall.__del__``), or else when the collector frees this record
    (:meth:`__del__`). No task, future or timer per held end. :attr:`responded` keeps
    the balancer's first-response callback the channel took out of its own table
    (which would hold the attempt)."""

    __slots__ = ("call", "callbacks", "loop", "responded")

    def __init__(self, call: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.call = call
        self.callbacks: list[Callable[[], None]] | None = []
        self.loop = loop
        self.responded: Callable[[], None] | None = None

    def hold(self, callback: Callable[[], None]) -> bool:
        """Hold ``callback`` until the end; ``False`` (not held) once released."""
        callbacks = self.callbacks
        if callbacks is None:
            return False
        callbacks.append(callback)
        return True

    def release(self) -> None:
        """Run the held callbacks (once), each isolated: one that raises is logged
        (``held end callback raised``) and stops none after it."""
        callbacks = self.callbacks
        if callbacks is None:
            return
        self.callbacks = None
        self.call = None  # (the cycle through the attempt undone)
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                _log.error("held end callback raised", callback=repr(callback),
                           error_type=type(exc).__name__, exc_info=exc)

    def dropped(self) -> None:
        """The call was dropped (its call object freed, or collected) before its end was
        released: its core call cancelled while grpc.aio still reports its stand-in,
        then the callbacks run."""
        call = self.call
        if call is not None and _stand_in(call):
            self.cancel_core(_GC_CANCELLED)
        self.release()

    def cancel_core(self, details: str) -> None:
        """Cancel the attempt's core call (``CANCELLED``, ``details``), as grpc.aio's
        ``cancel()`` does for a call not done: grpc.aio's own is a no-op here, the call
        reporting its stand-in as its status (under ``attempt_interceptors``, the core
        call of the call grpc.aio's intercepted call wraps). This sets the status at
        once and ends grpc.aio's task waiting for the server's."""
        core = self.core()
        if core is not None:
            with contextlib.suppress(Exception):
                core.cancel(details)

    def core(self) -> Any:
        """The attempt's core call (grpc.aio's ``_cython_call``; under
        ``attempt_interceptors``, that of the call grpc.aio's intercepted call wraps), or
        ``None``."""
        call = self.call
        core = getattr(call, "_cython_call", None)
        if core is None:  # grpc.aio's intercepted call: the call its interceptors made
            inner = getattr(call, "_interceptors_task", None)
            if inner is not None and inner.done() and not inner.cancelled() \
                    and inner.exception() is None:
                core = getattr(inner.result(), "_cython_call", None)
        return core

    def channel_closed(self) -> bool:
        """Whether the grpc.aio channel of the attempt's core call is closing or closed
        (its ``close()``, which cancels only the calls it sees not done: not this one,
        done for grpc.aio with its stand-in; the server's status then never comes)."""
        try:
            return bool(self.core()._channel.closed())  # (true from its closing)
        except Exception:  # no core call, or one of another shape
            return False

    def __del__(self) -> None:
        if self.callbacks and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (closed meanwhile, by its thread)
                self.loop.call_soon_threadsafe(self.dropped)


def hold_end(call: Any) -> _HeldEnd | None:
    """For the channel, in a bidi attempt's first done callback, its status grpc.aio's
    stand-in: hold the attempt's end (:class:`_HeldEnd`, returned); ``None`` for a call
    object that takes no attribute."""
    try:
        held = _HeldEnd(call, asyncio.get_running_loop())
        setattr(call, _HELD, held)
    except (AttributeError, RuntimeError):
        return None
    return held


def held_end(call: Any) -> _HeldEnd | None:
    """The held end of attempt ``call`` not released yet (:func:`hold_end`), or ``None``."""
    held = getattr(call, _HELD, None)
    return held if held is not None and held.callbacks is not None else None


def _release_end(call: Any) -> None:
    """The responses of attempt ``call`` were read to their end: its held end, if any,
    released (the status now the server's)."""
    held = getattr(call, _HELD, None)
    if held is not None:
        held.release()


# seconds between two looks at a held end's status while an accessor waits for the
# server's (_server_status): the first, doubled up to the last
_STATUS_LOOK_FIRST_S = 0.001
_STATUS_LOOK_MAX_S = 0.05


async def _server_status(call: Any) -> None:
    """For an accessor of attempt ``call`` (``code()``, ``details()``, the trailers, the
    debug string): when its end is held (:class:`_HeldEnd`), wait until grpc.aio's
    stand-in has given way to the server's status, then release the held end. As
    grpc.aio's own accessors await a call's end: grpc core gives the status once the
    responses are read, so it comes right after the last message is read (within a
    millisecond or so), or once a reader reads them, or, with responses left unread, at
    the call's deadline (nothing comes without one, as for grpc.aio's ``code()`` of a
    stream nobody reads). grpc.aio sets that status with no callback nor waiter to
    wake, so this looks at it from 1 ms, the interval doubled up to 50 ms; it also
    stops once a reader released the end (``EOF`` read: the status is the server's,
    or grpc.aio's stand-in still when grpc core gave none). Nothing is done for a call
    whose end is not held. A cancelled wait leaves the call alone."""
    held = held_end(call)
    if held is None:
        return
    delay = _STATUS_LOOK_FIRST_S
    while held.callbacks is not None and _stand_in(call):
        if held.channel_closed():  # as grpc.aio's close() cancels a call not done
            held.cancel_core(_LOCALLY_CANCELLED)
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, _STATUS_LOOK_MAX_S)
    held.release()


def add_end_callback(call: Any, callback: Callable[[Any], None]) -> None:
    """``call.add_done_callback(callback)`` for a streaming attempt's (``call``'s) own
    watchers (the channel's outcome, telemetry): ``callback(call)`` is held with the
    attempt's end when that is held (:class:`_HeldEnd`), else run at once. (A callback
    that held itself would be a reference cycle per stream.)"""
    call.add_done_callback(functools.partial(_held_or_run, callback))


def _held_or_run(callback: Callable[[Any], None], call: Any) -> None:
    held = getattr(call, _HELD, None)
    if held is not None and held.hold(functools.partial(callback, call)):
        return
    callback(call)


def _attempt_done(attempt: Any, callback: Callable[[Any], None], call: MeshCall) -> None:
    """A call object's done callback, run at its attempt's end: held with the attempt's
    end when that is held (:class:`_HeldEnd`), else run."""
    held = getattr(attempt, _HELD, None)
    if held is not None and held.hold(functools.partial(_call_back, callback, call)):
        return
    _call_back(callback, call)


def _code_of(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, AioRpcError):
        return error.code()
    if isinstance(error, asyncio.CancelledError):
        return _CANCELLED
    return _UNKNOWN


class MeshCall:
    """Base of meshkit's call objects: the grpc.aio call API over a settled outcome.

    Subclasses call :meth:`_settle` exactly once and implement :meth:`_start` (start the
    work if it has not started, setting ``_task``: ``None`` means not started);
    :meth:`_current` is the attempt in flight, for ``cancel`` (a unary-response call's
    own: the attempt its chain launched last).
    """

    # _error_tb: set (in _settle) only when _error is kept as itself (see _fresh)
    __slots__ = ("_call", "_callbacks", "_cancelled", "_details", "_error", "_error_tb",
                 "_is_settled", "_settled_fut", "_task")

    # cancel() settles the call at once (streams); a unary call settles in its task, where
    # the awaiting task's cancellation is accounted for (UnaryResponseCall._run)
    _settles_at_cancel: ClassVar[bool] = True

    def __init__(self, details: ClientCallDetails) -> None:
        # UnaryResponseCall.__init__ repeats these: change both
        self._details = details
        self._call: Any = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._settled_fut: asyncio.Future[None] | None = None  # made only for a waiter
        self._is_settled = False
        self._task: asyncio.Task[Any] | None = None

    # -- what subclasses provide --------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _current(self) -> Any:
        # a stream's: the opened call; while it opens or a retry opens, the attempt the
        # chain launched (details.last_call), so a cancel() in the turn before the task
        # takes the opened attempt cancels it too
        return self._call if self._call is not None else self._details.last_call

    # -- settling ----------------------------------------------------------------------
    def _settle(self, call: Any, error: BaseException | None) -> None:
        """Fix the outcome (once) and run the done callbacks registered so far."""
        # UnaryResponseCall._run writes out the case of an answer with no callback and
        # no waiter: change both
        if self._is_settled:
            return
        self._is_settled = True
        self._call = call
        if error is not None:  # else _error stays None, as made
            code = _code_of(error)
            if code is _CANCELLED:
                self._cancelled = True
            elif code is _DEADLINE_EXCEEDED:
                _mark_propagated_deadline(self._details, error)  # the one raised, too
            # a gRPC status or a cancellation: a copy without the traceback, the error
            # raised being given the frames it goes through, which hold the call; any
            # other exception itself, with the traceback it has now (see _fresh)
            self._error = kept = _fresh(error)
            if kept is error:
                self._error_tb = error.__traceback__
        fut = self._settled_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        callbacks = self._callbacks
        if callbacks is not None:
            self._callbacks = None
            for cb in callbacks:
                self._when_done(cb)  # each isolated: one that raises stops none after it

    def _reported(self, error: BaseException) -> BaseException:
        """The exception to raise for the call's outcome ``error`` (``_error``): a new
        copy of a gRPC status or cancellation; any other exception itself, its traceback
        put back to the one it was settled with (as ``Future.result`` does), so each
        report's traceback runs from its catcher down to where it was first raised."""
        again = _fresh(error)
        if again is error:
            return error.with_traceback(self._error_tb)
        return again

    def _settle_from_task(self, task: asyncio.Task[Any]) -> None:
        """Done callback of a settling task: a task cancelled or failed before it settled
        the call settles it as cancelled or with that error. The call lets the task go
        (``_task``: started, nothing to cancel): a task's exception holds its coroutine's
        frame, which holds the call (a task cancelled before its first step, or failed
        in a stream's opening)."""
        self._task = _NO_TASK
        if task.cancelled():
            self._settle(None, asyncio.CancelledError())
        elif (exc := task.exception()) is not None:
            self._settle(None, exc)

    def _waiter(self) -> asyncio.Future[None]:
        """The future :meth:`_settle` sets. Asked only while the call has not settled
        (each caller has just read ``_is_settled`` false, with no ``await`` since)."""
        fut = self._settled_fut
        if fut is None:
            self._settled_fut = fut = asyncio.get_running_loop().create_future()
        return fut

    async def _settled(self) -> Any:
        """Wait until the call has settled; the attempt's grpc.aio call or ``None``.

        Raises:
            asyncio.CancelledError: the *caller* was cancelled (the call goes on: an
                accessor's wait; read/write cancel the call, see :meth:`_settled_or_cancel`).
        """
        if not self._is_settled:
            self._start()
            if not self._is_settled:
                await asyncio.shield(self._waiter())
        return self._call

    # the accessors' call (initial_metadata, trailing_metadata, code, details,
    # debug_error_string): the settled one (UnaryResponseCall tells an answer of a per-call
    # interceptor's own from its failed attempt)
    _outcome = _settled

    async def _settled_or_cancel(self) -> Any:
        """:meth:`_settled` for a read or a write: a cancelled wait cancels the call (as
        grpc.aio's ``_read``/``_write``), so nothing is sent or retried for nobody."""
        try:
            return await self._settled()
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _cut_by_mesh(self, call: Any) -> bool:
        """Whether ``call``, the attempt this call settled on, found cancelled, was cut by
        the drain of its departed endpoint (``details.codec.cut_of``) rather than by the
        caller: then that ``UNAVAILABLE`` becomes the call's error (what a read raises,
        and :meth:`code`, :meth:`details`, :meth:`cancelled` report from now on, whether
        or not anyone was reading when it was cut). The error path only."""
        if self._cancelled or self._error is not None:
            return False
        cut_of = getattr(self._details.codec, "cut_of", None)
        err = cut_of(call) if cut_of is not None else None
        if err is None:
            return False
        self._error = _fresh(err)  # a copy: kept without the frames it is raised through
        return True

    def _when_done(self, callback: Callable[[Any], None]) -> None:
        call = self._call
        if call is not None and self._error is None:
            call.add_done_callback(lambda c: _attempt_done(c, callback, self))
        else:
            asyncio.get_running_loop().call_soon(_call_back, callback, self)

    # -- the grpc.aio call API ---------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the call: its attempt in flight and any attempt not started yet.

        A call nothing has started yet (not awaited, read or asked anything; a unary
        response call starts on its own from the loop's next turn but one, see
        :class:`UnaryResponseCall`) settles cancelled at once and is never sent.
        Otherwise the attempt in flight is cancelled and so is the task the call runs
        in: a unary call awaited directly runs in the awaiting task, so its ``await``
        raises :class:`asyncio.CancelledError` (as grpc.aio's) and its retry backoff and
        hedges end with it. The call's code is then ``CANCELLED``. A stream settles
        cancelled at once, as grpc.aio's ``cancel()`` sets the status (still opening, in
        a retry's backoff, or before its first message), so ``done()`` is true when this
        returns. A bidi stream whose write met the server's end before its responses
        were read (done for grpc.aio, its end held: :class:`_HeldEnd`) is cancelled too:
        its core call, so a :meth:`code` awaiting the server's status ends ``CANCELLED``.

        Returns:
            ``True`` if this cancelled the call; ``False`` if it had already finished or
            been cancelled.
        """
        if self._cancelled:
            return False
        if self.done():
            # a bidi attempt whose end is held (_HeldEnd): done for grpc.aio (its
            # stand-in), whose cancel() is then a no-op, while code() awaits the
            # server's status: its core call is cancelled so that wait ends
            current = self._current()
            held = held_end(current)
            if held is None or not _stand_in(current):
                return False
            self._cancelled = True
            held.cancel_core(_LOCALLY_CANCELLED)
            held.release()
            return True
        self._cancelled = True
        task = self._task
        if task is None:  # not started: nothing to stop, nothing will be sent
            self._settle(None, asyncio.CancelledError())
            return True
        cancelled = False
        current = self._current()
        if current is not None:
            cancelled = bool(current.cancel())
        if not task.done():
            cancelled = task.cancel() or cancelled
        if self._settles_at_cancel and not self._is_settled:
            # no attempt carries the outcome yet (the task would settle it so, later)
            self._settle(None, asyncio.CancelledError())
            return True
        return cancelled

    def cancelled(self) -> bool:
        """Whether the call ended cancelled (or :meth:`cancel` was called on it)."""
        if self._cancelled:
            return True
        if not self._is_settled:
            return False
        err = self._error
        if err is not None:  # (one set once a stream opened: the mesh cancelled it)
            return _code_of(err) is _CANCELLED
        call = self._call
        return (call is not None and bool(call.cancelled())
                and getattr(self._details, "codec_error", None) is None
                and not self._cut_by_mesh(call))

    def done(self) -> bool:
        """Whether the call has finished, with any outcome; true as soon as :meth:`cancel`
        has cancelled it, as grpc.aio's (a unary-response call in flight settles in its
        task, a turn later)."""
        if not self._is_settled:
            return self._cancelled
        call = self._call
        return call is None or self._error is not None or bool(call.done())

    def time_remaining(self) -> float | None:
        """Seconds before the call's deadline (``0.0`` once it has passed), or ``None``
        without one."""
        remaining = self._details.time_remaining_s()
        return None if remaining is None else max(0.0, remaining)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` once the logical call has finished (soon, if it has);
        starts the call if nothing has. An exception ``callback`` raises is logged
        (``done callback raised``, logger ``meshkit.channel``), not raised.

        A bidi stream whose write failed as its server ended it, before the server's
        status came (grpc.aio then reports its own ``INTERNAL`` "Internal error from
        Core" and runs done callbacks at once, grpc/grpc#36066), runs ``callback`` once
        its responses have been read to their end, the server's status then its
        :meth:`code`, or, dropped unread, when its call object is freed (``CANCELLED``):
        see :class:`_HeldEnd`."""
        if self._is_settled:
            self._when_done(callback)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)
        self._start()

    async def initial_metadata(self) -> Metadata:
        """Initial metadata of the attempt the call settled on, or the error's when the
        call settled on an error alone (a failed hedged call: the failing attempt's);
        empty without either."""
        call = await self._outcome()
        if call is None:
            err = self._error
            md = err.initial_metadata() if isinstance(err, AioRpcError) else None
            return md if md is not None else Metadata()
        return await call.initial_metadata()  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> Metadata:
        """Trailing metadata: the attempt's, or the mesh's error's when no attempt carries
        the outcome."""
        call = await self._outcome()
        if call is None:
            err = self._error
            return err.trailing_metadata() if isinstance(err, AioRpcError) else Metadata()
        await _server_status(call)
        md: Metadata = await call.trailing_metadata()
        if not md and await call.code() is _INTERNAL and (
                kept := kept_status(self._details, call)) is not None:
            return kept[3]  # type: ignore[no-any-return]  # what its server sent
        return md

    async def code(self) -> grpc.StatusCode:
        """The final status code (waits for the call to finish). For a bidi stream whose
        write met the server's end, the server's status, awaited as a stream's status
        is, once its responses are read (grpc.aio reports its own ``INTERNAL`` "Internal
        error from Core" until then: :func:`_server_status`)."""
        call = await self._outcome()
        if self._error is not None:
            return _code_of(self._error)
        if call is None:  # answered without an attempt (UnaryResponseCall._outcome)
            return _CANCELLED if self._cancelled else _OK
        await _server_status(call)  # a held end's: the server's status, not the stand-in
        code: grpc.StatusCode = await call.code()
        if code is _CANCELLED:  # ended by a message its codec refused? by a drain?
            err = getattr(self._details, "codec_error", None)
            if err is not None:
                return _code_of(err)
            if self._cut_by_mesh(call):
                return _code_of(self._error)  # type: ignore[arg-type]
        elif code is _INTERNAL and (kept := kept_status(self._details, call)) is not None:
            return kept[0]  # type: ignore[no-any-return]  # what its server sent
        return code

    async def details(self) -> str:
        """The final status message (waits for the call to finish); grpc.aio's "Locally
        cancelled by application!" for a call cancelled here."""
        call = await self._outcome()
        err = self._error
        if err is not None:
            if isinstance(err, AioRpcError):
                return err.details() or ""
            return _LOCALLY_CANCELLED if isinstance(err, asyncio.CancelledError) else ""
        if call is None:
            return ""
        await _server_status(call)  # a held end's: the server's status, not the stand-in
        code = await call.code()
        if code is _CANCELLED:
            err = getattr(self._details, "codec_error", None)
            if err is not None:
                return err.details() or ""
            if self._cut_by_mesh(call):
                return self._error.details() or ""  # type: ignore[union-attr]
        elif code is _INTERNAL and (kept := kept_status(self._details, call)) is not None:
            return kept[1] or ""  # what its server sent
        return await call.details()  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str:
        """grpc core's debug string of the outcome (waits for the call to finish): the
        settled attempt's, or the error's when the call settled on an error (a mesh error's
        is ``""``: it has no core status); ``""`` for a call cancelled before any attempt."""
        call = await self._outcome()
        err = self._error
        if isinstance(err, AioRpcError):
            return err.debug_error_string() or ""
        if call is None or err is not None:
            return ""
        await _server_status(call)
        if await call.code() is _INTERNAL and (
                kept := kept_status(self._details, call)) is not None:
            return kept[4] or ""  # what its server sent
        return await call.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        """Wait until the attempt's connection is up (for a unary call: until it ends).

        Raises:
            grpc.aio.AioRpcError: the call failed before an attempt was open.
            asyncio.CancelledError: the call was cancelled before an attempt was open
                (as grpc.aio's: a call never sent is not connected).
        """
        call = await self._settled()
        if call is None:
            if self._error is not None:
                raise self._reported(self._error)
            return
        await _wait_for_connection(call)


class UnaryResponseCall(MeshCall):
    """The call of unary-unary and stream-unary methods: ``await`` it for the response.

    As grpc.aio's, it is sent whether or not it is awaited. Awaited in the loop turn it
    was made in (directly, or by a task made in that turn: ``asyncio.wait_for``,
    ``gather``) it runs inline in the awaiting task (no extra task per call); any other
    use first (``add_done_callback``, ``code()``...) starts it in a task, and so does the
    loop's next turn but one when nothing has (:class:`_Made`: a call never awaited, the
    calls of a fan-out awaited one after another). Either way it is sent once, however
    many awaits and accessors follow; cancelling the task awaiting it cancels it, as
    grpc.aio's ``__await__``. It settles on the attempt that answered
    (``details.last_call``).

    As grpc.aio's, it runs in the context it was made in (a copy taken then: the
    caller's identity, current span and baggage, propagated deadline), wherever and
    whenever it runs: awaited where the context is no longer the same (after the
    ``with`` block of the span it was made under, in a task that did not make it), its
    inline run is stepped in that copy (:func:`_in_context`).

    Args:
        details: the call's :class:`~meshkit.interceptors.ClientCallDetails`.
        request: the request, or the request iterator of a stream-unary call.
        invoke: ``await invoke(details, request) -> response``: the per-call chain.
    """

    __slots__ = ("_ctx", "_invoke", "_request", "_response")

    _settles_at_cancel = False
    # _settle is MeshCall's: _run settles an answer without a done callback or a waiter
    # itself (a frame less per call); False for a subclass whose _settle, as its MRO
    # finds it (its own, a base's or a mixin's), is another (StreamUnaryCall: it ends
    # the request stream too). Set when the class is made: a _settle assigned to a
    # class later is not seen
    _plain_settle: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plain_settle = cls._settle is MeshCall._settle

    def __init__(self, details: ClientCallDetails, request: Any,
                 invoke: Callable[[ClientCallDetails, Any], Awaitable[Any]]) -> None:
        # MeshCall.__init__ written out: no super() call and frame on the per-call path
        self._details = details
        self._call: Any = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._settled_fut: asyncio.Future[None] | None = None
        self._is_settled = False
        self._task: asyncio.Task[Any] | None = None
        self._request = request
        self._invoke = invoke
        self._response: Any = None
        # the context it is made in, which it runs in wherever and whenever it runs (a
        # turn's calls may come from several tasks, an await may come after the maker
        # left a span or reset a variable: identity, trace, baggage, deadline)
        self._ctx = _copy_context()
        # started, as grpc.aio's, whether or not it is awaited: from the loop's next turns
        # (_start_turn) unless something starts it first (an await in this turn runs it
        # inline); calls made in one turn of a loop share one scheduled callback
        made = _made
        # reused only by its loop's own thread while it runs it (a loop stopped in one
        # thread may run on in another: the thread's running loop is the test)
        if made is not None and made.loop is _get_running_loop():
            calls = made.calls
            if not calls:
                made.schedule(made.soon)  # loop.call_soon(_start_turn, calls): _Made
            calls.append(self)
        else:
            _start_soon(self)

    def __await__(self) -> Any:
        if self._task is None:  # not started: run inline in the awaiting task
            try:
                # the same context (the usual case: awaited where it was made) compares
                # in O(1), the two sharing their mapping; run in it directly
                if _copy_context() == self._ctx:
                    return self._run().__await__()
            except Exception:  # a variable's values compared, and their == raised
                pass  # not the same: run in the call's
            return _in_context(self._ctx, self._run())
        return self._result().__await__()

    async def _run(self) -> Any:
        # the task it runs in (the awaiting one, or _start's), for cancel(); also marks
        # the call started
        self._task = _current_task() or _NO_TASK
        try:
            self._response = await self._invoke(self._details, self._request)
        except BaseException as exc:
            if (self._cancelled and not self._is_settled and self._task is not None
                    and isinstance(exc, asyncio.CancelledError)):
                # cancel() cancelled the task: that request is spent here (the awaiting
                # task's cancelling() is as before), its CancelledError goes on (the task
                # in no local: a cancelled task keeps its CancelledError, whose traceback
                # keeps this frame)
                self._task.uncancel()
            # the call keeps a copy of a gRPC status or cancellation without the
            # traceback (_settle, _fresh); exc's traceback keeps this frame and the frames
            # that awaited the call (asyncio.wait_for's holds it): without this frame's
            # self, no reference cycle holds the failed call's state for the collector
            self._settle(self._details.last_call, exc)
            del self
            raise
        if (self._callbacks is None and self._settled_fut is None and self._plain_settle
                and not self._is_settled):
            # _settle(last_call, None) written out for its usual case (no done callback
            # and no waiter yet, _settle not extended): change both
            self._is_settled = True
            self._call = self._details.last_call
        else:
            self._settle(self._details.last_call, None)
        return self._response

    def _start(self) -> None:
        if self._task is None:
            self._task = task = asyncio.get_running_loop().create_task(
                self._run(), context=self._ctx)
            task.add_done_callback(self._settle_from_task)

    def cancel(self) -> bool:
        """:meth:`MeshCall.cancel`; a call not started yet is never sent, and an ``await``
        on it raises :class:`asyncio.CancelledError`."""
        if self._task is None and not self._cancelled:
            self._invoke = _not_sent  # an await after this raises CancelledError
        return super().cancel()

    def cancelled(self) -> bool:
        """Whether the call was cancelled (:meth:`cancel`, its awaiting task's
        cancellation) or ended ``CANCELLED``; never for a call that answered, whatever
        becomes of the attempt it settled on (an attempt a per-call interceptor started
        and answered without, cancelled later: as grpc.aio's call of an interceptor's own
        response)."""
        return self._cancelled

    def done(self) -> bool:
        """:meth:`MeshCall.done`: true once the call has its response or its final error,
        whether or not the attempt it settled on (``details.last_call``) has ended: a
        per-call interceptor that answered itself while an attempt it started runs on
        (a prefetch) finished the call, as grpc.aio's call of an interceptor's own
        response is done; so :meth:`cancel` then returns ``False`` and cancels nothing
        (the task that awaited the call among them). True too as soon as :meth:`cancel`
        has cancelled the call."""
        return self._is_settled or self._cancelled

    def _current(self) -> Any:
        return self._details.last_call

    async def _outcome(self) -> Any:
        """:meth:`MeshCall._settled` for the accessors, ``None`` in place of a failed
        attempt when the call answered all the same: a per-call interceptor gave its own
        response (a fallback after ``proceed`` failed, or an answer while an attempt it
        started runs on: not waited for), so the call's status is ``OK`` with no details
        or metadata, as grpc.aio's call of an interceptor's own response (not the
        attempt's). Asked by the accessors only, never on the way to the response."""
        call = await self._settled()
        if call is not None and self._error is None and (
                not call.done() or await call.code() is not _OK):
            # answered in place of the attempt, or while it runs on (an interceptor's
            # prefetch: the call has finished, the attempt's status is not its own)
            self._call = call = None
        return call

    def _when_done(self, callback: Callable[[Any], None]) -> None:
        call = self._call
        if call is not None and self._error is None and not call.done():
            # answered while the attempt it settled on runs on (see _outcome): finished
            asyncio.get_running_loop().call_soon(_call_back, callback, self)
            return
        MeshCall._when_done(self, callback)

    async def wait_for_connection(self) -> None:
        """Wait until the call has ended, starting it if nothing has: a unary call's
        connection is its whole life, as grpc.aio's, whose ``wait_for_connection`` raises
        the status of a call that failed. The call's own outcome, not its attempt's: a
        call a per-call interceptor answered itself after its attempt failed returns
        (``OK``, as :meth:`code`), a call whose answer the mesh refused raises.

        Cancelling the wait (an ``asyncio.wait_for`` timeout) cancels the call, as
        grpc.aio's unary ``wait_for_connection`` (it awaits the call's task) and as its
        ``await``: nothing runs on for nobody.

        Raises:
            grpc.aio.AioRpcError: the call failed, with the status its ``await`` raises
                (``INTERNAL`` for a response its deserializer refused, a mesh status).
            asyncio.CancelledError: the call was cancelled.
            Exception: what a client interceptor raised, as the ``await``.
        """
        if not self._is_settled:
            await self._settled_or_cancel()
        await self._outcome()
        if self._error is not None:
            raise self._reported(self._error)  # a status: a new copy (see _fresh)

    async def _result(self) -> Any:
        # as grpc.aio's __await__: cancelling the awaiting task (an asyncio.wait_for
        # timeout) cancels the call, as it does a call running inline in that task
        await self._settled_or_cancel()
        if self._error is not None:
            raise self._reported(self._error)  # a status: a new copy (see _fresh)
        return self._response


class _Made:
    """The unary-response calls made in the current turn of one event loop (run by one
    thread) that may not be started yet: grpc.aio starts a call in its constructor, a
    meshkit call starts when awaited (inline, in the awaiting task) or used, and
    :func:`_start_turn`, scheduled once per turn by the turn's first call, starts the
    others.

    The calls' constructor keeps the record of the loop that made a call last
    (``_made``) and reuses it while its loop is the calling thread's running loop (one
    C call: a loop stopped in one thread may run on in another), so a turn's calls cost
    one ``call_soon`` together; a call made on another thread or loop makes a new record
    (:func:`_start_soon`).

    ``schedule(soon)`` is ``loop.call_soon(_start_turn, calls)``. On asyncio's own loop
    (its ``call_soon`` not replaced, not in debug mode when the record is made) it
    appends one :class:`asyncio.Handle` of it, made with the record, to the loop's ready
    queue itself: what ``call_soon`` does from the loop's thread, without a new handle,
    a context copy and the four Python frames per call (the handle is queued at most
    once at a time: ``calls`` is emptied only when it runs). It runs in an empty
    context: it reads none (each call's task runs in the call's own). Neither holds
    the record (no reference cycle).
    """

    __slots__ = ("calls", "loop", "schedule", "soon")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # not empty: _start_turn is scheduled (it empties the list in place)
        calls: list[UnaryResponseCall] = []
        self.calls = calls
        ready = getattr(loop, "_ready", None)
        self.schedule: Callable[[Any], Any]
        self.soon: Any
        if (type(ready) is collections.deque and not loop.get_debug()
                and getattr(loop.call_soon, "__func__", None) is _BASE_CALL_SOON):
            self.schedule = ready.append
            self.soon = asyncio.Handle(_start_turn, (calls,), loop, contextvars.Context())
        else:  # uvloop (its call_soon is C), a loop of its own, debug mode
            call_soon: Callable[..., Any] = loop.call_soon
            self.schedule = functools.partial(call_soon, _start_turn)
            self.soon = calls


def _start_turn(calls: list[UnaryResponseCall]) -> None:
    """The turn that made ``calls`` (a :class:`_Made` record's, emptied here) is over: if
    any of them has not been started (an await in that turn runs a call inline) or
    cancelled, start those one turn later, in a task each, after the tasks that turn
    scheduled (``asyncio.wait_for`` or ``gather`` of a call made there, which await it
    inline first)."""
    for call in calls:
        if call._task is None and not call._is_settled:
            made = calls.copy()
            calls.clear()
            asyncio.get_running_loop().call_soon(_start_each, made)
            return
    calls.clear()


_made: _Made | None = None  # the record of the loop that made a unary-response call last


def _start_soon(call: UnaryResponseCall) -> None:
    """Have ``call``, just made on a thread or loop other than the last call's, started
    soon (see :class:`_Made`); a call made outside a running event loop starts when
    awaited or used."""
    global _made
    loop = asyncio._get_running_loop()
    if loop is None:
        return
    made = _made = _Made(loop)
    made.calls.append(call)
    made.schedule(made.soon)


def _start_each(calls: list[UnaryResponseCall]) -> None:
    """Start each of ``calls`` that nothing has started or cancelled yet, in a task that
    runs in the context the call was made in (``UnaryResponseCall._start``)."""
    for call in calls:
        if call._task is None and not call._is_settled:
            call._start()


def _in_context(ctx: contextvars.Context,
                coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """``coro.__await__()`` with each of its steps run in ``ctx``: what ``await coro``
    does in a task whose context is ``ctx``, in the awaiting task (no task of its own, so
    cancelling the awaiting task throws into ``coro``, as an inline await). The values
    sent, the exceptions thrown (a cancellation) and ``close()`` are passed on; what
    ``coro`` returns or raises is the ``await``'s. ``ctx`` is entered only here while
    ``coro`` runs (a call's own copy)."""
    run = ctx.run
    send = coro.send
    try:
        out = run(send, None)
        while True:
            try:
                value = yield out
            except GeneratorExit:
                run(coro.close)
                raise
            except BaseException as exc:  # unbound at the block's end, also if it raises
                out = run(coro.throw, exc)
            else:
                out = run(send, value)
    except StopIteration as done:
        return done.value


class StreamResponseCall(MeshCall):
    """The call of unary-stream and stream-stream methods.

    The attempt opens on first use (iteration, ``read``, ``write``, metadata, a done
    callback), in the context the call was made in (a copy taken then, as grpc.aio starts
    a stream and its interceptors in the context it is made in: the caller's identity,
    current span and baggage, propagated deadline), wherever it is first used; the call
    settles once it is open, and from then on every operation is the opened call's (a
    grpc.aio call, or a :class:`RetryingStreamCall`).

    Args:
        details: the call's :class:`~meshkit.interceptors.ClientCallDetails`.
        request: the request, or the request iterator (``None`` for ``write()``).
        open_: ``await open_(details, request) -> call``: the per-call chain.
    """

    __slots__ = ("_ctx", "_loop", "_open", "_request", "_unanswered")

    def __init__(self, details: ClientCallDetails, request: Any,
                 open_: Callable[[ClientCallDetails, Any], Awaitable[Any]]) -> None:
        super().__init__(details)
        self._request = request
        self._open = open_
        self._unanswered = True  # no response message read yet (see _first_response)
        self._ctx = _copy_context()  # where it opens, on first use
        self._loop: asyncio.AbstractEventLoop | None = None  # set as it opens

    async def _opening(self) -> None:
        call = await self._open(self._details, self._request)
        if self._is_settled:  # cancel() settled it while it opened: nobody will read
            call.cancel()
            return
        self._loop = _get_running_loop()
        self._settle(call, None)

    def __del__(self) -> None:
        """Collected while its attempt is still open (dropped before its responses were
        read to their end): the attempt is cancelled in its loop, as grpc.aio cancels a
        call of its own collected before its end. Nothing else would end it: its status
        comes only once its responses are read, and grpc.aio's task waiting for it holds
        the attempt (through the done callbacks of its core call), so each such stream
        kept a task, its call objects and its endpoint's count until the channel closed,
        and telemetry counted it in flight for ever. Counted ``CANCELLED``, no
        endpoint's outcome. A bidi attempt whose end is held (:class:`_HeldEnd`: done
        for grpc.aio, its stand-in as its status) is dropped so, in its loop, at once:
        its record and the attempt hold each other, and waiting for the cyclic
        collector to find them kept the end, grpc.aio's task waiting for the status and
        the stream's count in flight until the next collection."""
        call = self._call
        loop = self._loop
        if call is None or loop is None or self._error is not None:
            return
        try:
            if loop.is_closed():
                return
            if call.done():
                held = held_end(call)
                if held is not None:
                    loop.call_soon_threadsafe(held.dropped)
                return
            loop.call_soon_threadsafe(call.cancel)
        except Exception:  # a call object of an interceptor's own without done(), a
            pass  # loop closed meanwhile by its thread: nothing to end here

    def _start(self) -> None:
        if self._task is None:
            self._task = task = asyncio.get_running_loop().create_task(
                self._opening(), context=self._ctx)
            task.add_done_callback(self._settle_from_task)

    async def _opened(self) -> Any:
        """The opened call, for read/write/iteration (a cancelled wait cancels the call)."""
        call = await self._settled_or_cancel()
        if call is None:
            raise (self._reported(self._error) if self._error is not None
                   else asyncio.CancelledError())
        return call

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        call = await self._opened()
        messages = self._details.messages
        first = self._unanswered
        try:
            if messages is None:
                async for response in call:
                    if type(response) is Undecodable:
                        self._undecodable(call, response)
                    if first:
                        first = False
                        self._first_response()
                    yield response
            else:
                async for response in call:
                    if type(response) is Undecodable:
                        self._undecodable(call, response)
                    if first:
                        first = False
                        self._first_response()
                    messages.msg_received += 1
                    yield response
        except asyncio.CancelledError:
            self._raise_codec_error()
            self._raise_if_cancelled_by_mesh()
            raise
        except AioRpcError as exc:
            _release_end(call)  # the status: the end of the responses (_HeldEnd)
            code = exc.code()
            if code is _DEADLINE_EXCEEDED:
                _mark_propagated_deadline(self._details, exc)
            elif code is _INTERNAL and (kept := kept_status(self._details, call)) is not None:
                if kept[0] is _OK:  # grpc.aio replaced an OK end (grpc/grpc#36066)
                    return
                raise _kept_error(self._details, kept) from None
            raise
        _release_end(call)  # the end of the responses (_HeldEnd)

    async def read(self) -> Any:
        """Read one response; ``grpc.aio.EOF`` at the end. Also after a write that
        failed as the server ended the call (grpc.aio's ``read()`` raises its own
        ``INTERNAL`` at once there): the responses the server sent, then its status.

        Raises:
            grpc.aio.AioRpcError: the call failed (``INTERNAL`` as
                :class:`~meshkit.errors.ResponseDeserializationError` for a message its
                deserializer refused, :class:`~meshkit.errors.RequestSerializationError`
                once a request message was refused).
        """
        # open: no coroutine per message (_call is set only as the call settles, to the
        # opened call or None: one slot read, not _is_settled's too)
        call = self._call
        if call is None:
            call = await self._opened()
        try:
            response = await call.read()
        except asyncio.CancelledError:
            self._raise_codec_error()
            self._raise_if_cancelled_by_mesh()
            raise
        except AioRpcError as exc:
            code = exc.code()
            if code is _DEADLINE_EXCEEDED:
                _mark_propagated_deadline(self._details, exc)
            elif code is _INTERNAL:
                if (kept := kept_status(self._details, call)) is not None:
                    _release_end(call)
                    if kept[0] is _OK:  # grpc.aio replaced an OK end (grpc/grpc#36066)
                        return _EOF
                    raise _kept_error(self._details, kept) from None
                if held_end(call) is not None and hasattr(call, "_read"):
                    # grpc.aio's read() of a call it reports done raises its stand-in
                    # at once: the responses and the server's status are still to come
                    return await self._read_held(call)
            _release_end(call)
            raise
        if response is _EOF:
            _release_end(call)
        if type(response) is Undecodable:
            self._undecodable(call, response)
        if self._unanswered and response is not _EOF:
            self._first_response()
        messages = self._details.messages
        if messages is not None and response is not _EOF:
            messages.msg_received += 1
        return response

    async def _read_held(self, call: Any) -> Any:
        """:meth:`read` of an attempt whose end is held (:class:`_HeldEnd`): grpc.aio
        reports its stand-in ``INTERNAL`` as the call's status while the responses the
        server sent before its status are still to be read, and its ``read()`` raises
        that at once (the caller never got the answer, nor the server's status); they are
        read as its iteration reads them (its ``_read``), and at their end the server's
        status, come after them, is the outcome: ``EOF`` for ``OK``, else raised (still
        grpc.aio's stand-in when grpc core gave none: raised as before)."""
        try:
            response = await call._read()
        except asyncio.CancelledError:
            self._raise_codec_error()
            self._raise_if_cancelled_by_mesh()
            raise
        if response is not _EOF:
            if type(response) is Undecodable:
                self._undecodable(call, response)
            if self._unanswered:
                self._first_response()
            messages = self._details.messages
            if messages is not None:
                messages.msg_received += 1
            return response
        _release_end(call)
        code = await call.code()
        if code is _OK:
            return _EOF
        raise _kept_error(self._details, (
            code, await call.details(), await call.initial_metadata(),
            await call.trailing_metadata(), await call.debug_error_string()))

    def _first_response(self) -> None:
        """The stream's first response message was read: the channel tells the balancer
        (``details.codec.answered``: P2C stops counting the stream as pending, a
        half-open probe is decided), once."""
        self._unanswered = False
        answered = getattr(self._details.codec, "answered", None)
        if answered is not None:
            answered(self._details, self._call)

    def _undecodable(self, call: Any, message: Undecodable) -> None:
        """End the call for a response message its deserializer refused, and raise. An
        attempt whose end is held (:class:`_HeldEnd`) grpc.aio reports done, and its
        ``cancel()`` does nothing: its core call is cancelled here and its end released,
        so its watchers (telemetry, the balancer) and :meth:`code` read the refusal
        (``INTERNAL``), not the server's status that came after the refused message."""
        err = undecodable_error(self._details, message)
        if not call.cancel() and (held := held_end(call)) is not None:
            held.cancel_core(_LOCALLY_CANCELLED)
            held.release()
        raise err from message.error

    def _raise_codec_error(self) -> None:
        err = codec_error(self._details)
        if err is not None:
            raise err from err.__cause__

    def _raise_if_cancelled_by_mesh(self) -> None:
        """In a read or write grpc.aio ended with ``CancelledError``: when neither the
        caller (:meth:`cancel`) nor the reading task's own cancellation (``task.cancel()``,
        an ``asyncio.wait_for`` timeout) ended the call, the mesh did: raise
        :class:`~meshkit.errors.MeshRpcError` for the caller, as a unary call in flight
        gets, not a ``CancelledError`` in a task nobody cancelled: ``CANCELLED`` when the
        channel was closed, ``UNAVAILABLE`` when the endpoint left and its
        ``drain_timeout_s`` ran out (:func:`_mesh_cut`)."""
        if self._cancelled:
            return
        task = _current_task()
        if task is None:
            return
        if task.cancelling():
            # the caller's cancellation: grpc.aio's read/write cancelled the call for it,
            # so a later read or write of it is the caller's cancel too, not the mesh's
            self._cancelled = True
            return
        if self._error is not None:
            # an earlier read or write reported the cut: the same error again (not the
            # channel's close, come since, in place of the drain's cut)
            raise self._reported(self._error) from None
        err = _mesh_cut(self._details, self._call)
        # what the call reports from now on (details(), code(), cancelled()), as a unary
        # call the mesh cancelled: not the attempt's "Locally cancelled by application!"
        # (a copy: the one raised gets frames that hold the call)
        self._error = _fresh(err)
        raise err from None

    async def write(self, request: Any) -> None:
        """Write one request (stream-stream calls made without a request iterator).

        Raises:
            RequestSerializationError: the method's serializer refused ``request`` (a
                method without one: ``request`` is not bytes); the call ends
                ``INTERNAL`` (as grpc-go's ``SendMsg``), nothing is sent. Not
                for a write the call refuses whatever the message (a call made with a
                request iterator, ended, or half-closed): that refusal is raised, as
                grpc.aio's, and the call goes on (:meth:`_refused_write`).
            grpc.aio.UsageError: the call was made with a request iterator (grpc.aio's).
            asyncio.InvalidStateError: the call had ended before it opened, cancelled or
                failed with a status ("RPC already finished.", as grpc.aio's write to a
                finished call; not a ``CancelledError`` in a writing task nobody
                cancelled, nor the status again: a write that waited while the call
                failed raises the status, as grpc.aio's); or :meth:`cancel` ended it
                while this write waited for it to open or for its initial metadata to go
                out (as grpc.aio's intercepted call; grpc.aio's own write waited for
                good there);
                or the server ended the call while this write was in flight, ``OK`` or
                with a status that has not come yet (grpc.aio raises its own ``INTERNAL``
                "Internal error from Core" there, and reports it as the call's status
                until the responses are read, plain grpc.aio too): the message was not
                sent, as the next write's, and the call's status is the reads' and, once
                they are done, ``code()``'s (grpc-go's ``SendMsg`` returns ``io.EOF``
                there, grpc-js's write fails quietly). A write the server's error status
                came before raises that status (``AioRpcError``).
            asyncio.CancelledError: the writing task was cancelled (the call is too).
        """
        call = self._call  # as read()
        if call is None:
            if self._request is not None:
                # made with a request iterator, not open (yet, or ever): grpc.aio's style
                # check comes first, ended or not (an opened call's write raises it)
                raise grpc.aio.UsageError(_STYLES_MIXED)
            if self._is_settled and isinstance(self._error,
                                               (asyncio.CancelledError, AioRpcError)):
                raise asyncio.InvalidStateError(_FINISHED)
            call = await self._settled_or_cancel()  # the writer cancelled: CancelledError
            if call is None:
                if isinstance(self._error, asyncio.CancelledError):
                    # cancel() ended it while this write waited for the opening: as
                    # grpc.aio's intercepted call's write, not a CancelledError in a
                    # writing task nobody cancelled
                    raise asyncio.InvalidStateError(_FINISHED)
                raise (self._reported(self._error) if self._error is not None
                       else asyncio.CancelledError())
        plan = self._details.codec
        if plan is not None and plan.serializes_stream:
            try:
                # not recorded as the call's codec_error here: _refused_write decides
                out = serialize_message(self._details.method, plan.request_serializer,
                                        request)
            except BaseException as exc:
                self._refused_write(call, exc)
                raise
            if plan.in_mesh:  # else grpc.aio serializes it (again) for attempt interceptors
                request = out
        elif type(request) is not bytes and plan is not None:  # no serializer: bytes only
            try:
                request = bytes_message(self._details.method, request)
            except RequestSerializationError as exc:
                self._refused_write(call, exc)
                raise
        try:
            # grpc.aio's write waits for the call's initial metadata to go out, and waits
            # for good for a call that ends first (cancelled a turn or two after it was
            # made): that wait, bounded by the call's end (a getattr per message after it)
            sent = getattr(call, "_metadata_sent", None)
            if sent is not None and not sent.is_set() and not call.done():
                await self._metadata_sent_or_end(call, sent)
            await call.write(request)
        except asyncio.CancelledError:
            self._raise_codec_error()
            self._raise_if_cancelled_by_mesh()
            raise
        except AioRpcError as exc:
            # the write was in flight as the server ended the call: its status, not the
            # INTERNAL grpc.aio replaced it with (grpc/grpc#36066), when it is an error;
            # an OK end, or one whose status has not come yet (grpc.aio's own INTERNAL
            # stands in for it until the responses are read), is the end of a call
            # already finished: its message was not sent, the status is the reads'
            if exc.code() is not _INTERNAL:
                raise
            kept = kept_status(self._details, call)
            if kept is None:
                if exc.details() != _CORE_INTERNAL:
                    raise  # an INTERNAL of its own
                raise asyncio.InvalidStateError(_FINISHED) from None
            if kept[0] is not _OK:
                raise _kept_error(self._details, kept) from None
            raise asyncio.InvalidStateError(_FINISHED) from None
        messages = self._details.messages
        if messages is not None:
            messages.msg_sent += 1

    async def _metadata_sent_or_end(self, call: Any, sent: asyncio.Event) -> None:
        """For :meth:`write`: wait until ``call`` (the attempt, a grpc.aio call) has sent
        its initial metadata (``sent``, its ``_metadata_sent``), as grpc.aio's ``_write``
        does, or has ended (:func:`_metadata_sent_or_end`). A call ended by then, as a
        write that waited for the opening (grpc.aio's ``_write`` raises the status after
        its wait): raises ``InvalidStateError`` "RPC already finished." for
        :meth:`cancel` (or an ``OK`` end), else ``CancelledError`` for the mesh's or a
        codec's cancel (:meth:`write` reports those), else the status (``AioRpcError``).
        Cancelling the wait cancels the call, as :meth:`_settled_or_cancel`."""
        try:
            await _metadata_sent_or_end(call, sent)
        except asyncio.CancelledError:
            self.cancel()
            raise
        if not call.done():  # (grpc.aio's _write looks again, after its wait)
            return
        if not self._cancelled:
            await _raise_for_end(call)
        raise asyncio.InvalidStateError(_FINISHED)

    def _refused_write(self, call: Any, exc: BaseException) -> None:
        """A message of :meth:`write` its serializer refused (``exc``; the error path
        only). grpc.aio's ``write`` checks the call's state before it serializes: a write
        the call refuses anyway raises that refusal (``UsageError`` for a call made with a
        request iterator, ``InvalidStateError`` once it has ended or after
        :meth:`done_writing`) and leaves the call and its outcome alone; otherwise the
        refusal is the call's ``codec_error`` and the call is cancelled (it ends
        ``INTERNAL``), and ``exc`` goes on."""
        if self._request is not None:
            raise grpc.aio.UsageError(_STYLES_MIXED) from None
        if call.done():
            raise asyncio.InvalidStateError(_FINISHED) from None
        # grpc.aio's own flag (its intercepted calls read it too); without it, as before
        if getattr(call, "_done_writing_flag", False) is True:
            raise asyncio.InvalidStateError(_HALF_CLOSED) from None
        if isinstance(exc, RequestSerializationError):
            self._details.codec_error = exc
        call.cancel()

    async def done_writing(self) -> None:
        """Half-close the request stream; nothing when the call ended before it opened
        (cancelled, or failed to open), as grpc.aio's on a finished call.

        Raises:
            grpc.aio.UsageError: the call was made with a request iterator (grpc.aio's,
                ended or not).
        """
        call = self._call if self._is_settled else await self._settled_or_cancel()
        if call is not None:
            await call.done_writing()
        elif self._request is not None:  # as write(): grpc.aio's style check first
            raise grpc.aio.UsageError(_STYLES_MIXED)


class _Written:
    """The request stream of a stream-unary call made without a request iterator: the
    messages :meth:`StreamUnaryCall.write` hands over, one at a time (a writer waits
    while the one before it has not been taken), ended by ``done_writing()``. Consumed
    once: the retry policy sees an iterator, which is not replayed.

    ``item`` is the message handed over and not taken yet (``_NO_ITEM``: none); ``taker``
    the future the stream's take waits on while there is none (set by :meth:`put`);
    ``waiting`` the writers that found ``item`` taken, in order, each as ``(future,
    message)``: a take puts the first one's message in and sets its future ``True``
    (:meth:`_next_writer`); the call's end sets them all ``False``
    (:meth:`StreamUnaryCall._settle`). A slot and a future per wait, not an
    ``asyncio.Queue`` (its Python methods, about 100 bytecodes a message), nor a task
    putting into it and an ``asyncio.wait`` on that and the call's end (a writer faster
    than the stream waits at every other message)."""

    __slots__ = ("item", "taker", "waiting")

    def __init__(self) -> None:
        self.item: Any = _NO_ITEM
        self.taker: asyncio.Future[None] | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[bool], Any]] = \
            collections.deque()

    def put(self, item: Any) -> None:
        """Hand ``item`` over (the slot is free, or is being emptied by the call's end),
        waking the take waiting for it."""
        self.item = item
        taker = self.taker
        if taker is not None:
            self.taker = None
            if not taker.done():
                taker.set_result(None)

    def __aiter__(self) -> _Written:
        return self

    async def __anext__(self) -> Any:
        item = self.item
        while item is _NO_ITEM:
            self.taker = taker = asyncio.get_running_loop().create_future()
            await taker
            item = self.item
        self.item = _NO_ITEM
        if self.waiting:
            self._next_writer()
        if item is _END_OF_WRITES:
            raise StopAsyncIteration
        return item

    def _next_writer(self) -> None:
        """The message taken made room: the first writer waiting (not cancelled) puts
        its message in, and is told so."""
        waiting = self.waiting
        while waiting:
            room, item = waiting.popleft()
            if not room.done():
                self.item = item  # (the take runs now: nobody waits in taker)
                room.set_result(True)
                return


_NO_ITEM: Any = object()
_END_OF_WRITES: Any = object()
_HALF_CLOSED = 'RPC is half closed after calling "done_writing".'  # grpc.aio's texts
_FINISHED = "RPC already finished."
_STYLES_MIXED = "The iterator and read/write APIs may not be mixed on a single RPC."


class UnaryUnaryCall(UnaryResponseCall):
    """A unary-unary call (a ``grpc.aio.UnaryUnaryCall``); see :class:`UnaryResponseCall`."""

    __slots__ = ()


class StreamUnaryCall(UnaryResponseCall):
    """A stream-unary call (a ``grpc.aio.StreamUnaryCall``); see
    :class:`UnaryResponseCall`. Made without a request iterator, its requests are sent
    with :meth:`write` and ended with :meth:`done_writing`, as grpc.aio's; such a call is
    not retried once it has sent (nothing replays what was written), and its ``await``
    waits for ``done_writing()``. A message its serializer refuses ends the call
    ``INTERNAL`` (:class:`~meshkit.errors.RequestSerializationError`), raised by the
    ``await`` (and by a ``write()`` waiting then), not by the ``write()`` that handed it
    over: the mesh serializes a request stream's messages as the attempt takes them. A
    ``write()`` to a call that has ended, however it ended, raises ``InvalidStateError``
    "RPC already finished.", as grpc.aio's."""

    __slots__ = ("_half_closed", "_writes")

    def __init__(self, details: ClientCallDetails, request: Any,
                 invoke: Callable[[ClientCallDetails, Any], Awaitable[Any]]) -> None:
        writes = None
        if request is None:
            request = writes = _Written()
        super().__init__(details, request, invoke)
        self._writes = writes
        self._half_closed = False

    def _settle(self, call: Any, error: BaseException | None) -> None:
        super()._settle(call, error)
        writes = self._writes
        if writes is not None:
            # the call ended (answered before done_writing(), failed, cancelled): end the
            # request stream, so the task grpc.aio runs to consume it ends too instead of
            # waiting for ever on a message nobody will write
            writes.put(_END_OF_WRITES)  # in place of a message not taken
            waiting = writes.waiting
            while waiting:  # the writers waiting for room: their messages not taken
                room, _item = waiting.popleft()
                if not room.done():
                    room.set_result(False)

    async def _launched(self) -> Any:
        """The attempt in flight (a grpc.aio call not done), starting the call if nothing
        has; ``None`` once the call has ended first. The chain says nothing when it
        launches an attempt (it waits for an endpoint, a retry's backoff), so this looks
        at ``details.last_call`` from 1 ms, doubling to 50 ms, or wakes as the call ends.
        Cancelling the wait leaves the call alone."""
        self._start()
        pause = 0.001
        while not self._is_settled:
            call = self._details.last_call
            if call is not None and not call.done():
                return call
            await asyncio.wait((self._waiter(),), timeout=pause)
            pause = min(pause * 2, 0.05)
        return None

    async def wait_for_connection(self) -> None:
        """Wait until an attempt's request stream is open (its grpc.aio call's
        ``wait_for_connection``: the call's metadata sent), starting the call if nothing
        has, as grpc.aio's stream-unary call: not for the response, which waits for the
        requests (``write()`` and ``done_writing()``, or the request iterator's end).
        Cancelling the wait leaves the call alone.

        Raises:
            grpc.aio.AioRpcError, asyncio.CancelledError, Exception: the call ended before
                an attempt was open, as :meth:`UnaryResponseCall.wait_for_connection`.
        """
        while (call := await self._launched()) is not None:
            if await asyncio.shield(_connected(call)):
                return
            # that attempt failed: the next one, or the call's end
        await super().wait_for_connection()

    async def initial_metadata(self) -> Metadata:
        """The server's initial metadata, as soon as an attempt in flight has it (as
        grpc.aio's stream-unary call: not at the call's end, which may wait for the
        requests); once the call has ended first, :meth:`MeshCall.initial_metadata`.
        Cancelling the wait leaves the call alone."""
        while (call := await self._launched()) is not None:
            md: Metadata = await asyncio.shield(call.initial_metadata())
            if not call.done():  # the headers, the attempt going on
                return md
            # that attempt ended (its headers with its status): the call's outcome
        return await super().initial_metadata()

    async def _put(self, writes: _Written, item: Any) -> None:
        """Hand ``item`` to the request stream ``writes`` (the call's, made without a
        request iterator: :meth:`write` and :meth:`done_writing` refuse any other first),
        starting the call: at once when the one before it was taken, else when it is, or
        raise once the call has ended."""
        if self._task is None:  # _start()'s own check: no frame per message once started
            self._start()
        if self._is_settled:
            self._raise_finished()
        if writes.item is _NO_ITEM:
            writes.put(item)
            return
        # put in at the next take, or woken by the call's end (see _Written)
        room: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        writes.waiting.append((room, item))
        try:
            put = await room
        except asyncio.CancelledError:
            # as grpc.aio's write(): cancelling the task awaiting it cancels the call
            # (a take skips its cancelled future)
            self.cancel()
            raise
        if not put:
            self._raise_finished()

    def _raise_finished(self) -> None:
        """A write that waited while the call ended (its message not taken): its error
        when it failed, ``CancelledError`` when cancelled, else grpc.aio's
        ``InvalidStateError`` (as grpc.aio's ``_write`` that waited for the call's
        start raises its status)."""
        err = self._error
        if isinstance(err, AioRpcError):
            raise self._reported(err)
        if isinstance(err, asyncio.CancelledError):
            raise asyncio.CancelledError()
        raise asyncio.InvalidStateError(_FINISHED)

    async def write(self, request: Any) -> None:
        """Send one request message (a call made without a request iterator).

        Raises:
            grpc.aio.UsageError: the call was made with a request iterator.
            asyncio.InvalidStateError: the call has ended ("RPC already finished.":
                answered, failed, or :meth:`cancel` returned ``True``, whatever the
                order with :meth:`done_writing`), or after :meth:`done_writing` ("RPC is
                half closed..."), as grpc.aio's ``_write``, which checks ``done()`` first.
            grpc.aio.AioRpcError, asyncio.CancelledError: the call failed or was
                cancelled while this write waited for its message to be taken.
        """
        writes = self._writes
        if writes is None:  # as grpc.aio's: the style first, ended or not
            raise grpc.aio.UsageError(_STYLES_MIXED)
        # done(), in line (no frame per message): a cancel() in flight too, not a message
        # accepted and dropped
        if self._is_settled or self._cancelled:
            raise asyncio.InvalidStateError(_FINISHED)
        if self._half_closed:
            raise asyncio.InvalidStateError(_HALF_CLOSED)
        await self._put(writes, request)

    async def done_writing(self) -> None:
        """End the request stream (half-close); nothing once the call has ended or after
        an earlier ``done_writing()``, as grpc.aio's.

        Raises:
            grpc.aio.UsageError: the call was made with a request iterator.
        """
        writes = self._writes
        if writes is None:
            raise grpc.aio.UsageError(_STYLES_MIXED)
        if self._half_closed or self.done():
            return
        self._half_closed = True
        with contextlib.suppress(AioRpcError, asyncio.InvalidStateError):
            await self._put(writes, _END_OF_WRITES)


class UnaryStreamCall(StreamResponseCall):
    """A unary-stream call (a ``grpc.aio.UnaryStreamCall``); see :class:`StreamResponseCall`."""

    __slots__ = ()


class StreamStreamCall(StreamResponseCall):
    """A stream-stream call (a ``grpc.aio.StreamStreamCall``); see
    :class:`StreamResponseCall`."""

    __slots__ = ()


# grpc.aio's call types, by registration (no base class: no cost per call)
grpc.aio.UnaryUnaryCall.register(UnaryUnaryCall)
grpc.aio.StreamUnaryCall.register(StreamUnaryCall)
grpc.aio.UnaryStreamCall.register(UnaryStreamCall)
grpc.aio.StreamStreamCall.register(StreamStreamCall)


_NOTHING: Any = object()
_READER: Any = "read"  # RetryingStreamCall._style
_ITERATOR: Any = "iterate"


class RetryingStreamCall(MeshCall):
    """A unary-stream call retried until committed (its first response or its end, or
    its headers once :meth:`initial_metadata` has returned them).

    A task started at once reads the first response of each attempt: a retryable failure
    before it opens another attempt (``delay_for`` decides how long to wait, or ``None`` to
    give up); the first response, the end of the stream or a final error commits the call
    to that attempt, and everything after is that attempt's grpc.aio call. Done callbacks
    wait for the commit, so telemetry sees one logical call, not each attempt;
    ``wait_for_connection`` waits for the connection of an attempt (the current one, or the
    next if it is retried), not for the commit.

    Args:
        details: the call's details.
        request: the request (replayed on each attempt).
        open_: opens one attempt: ``await open_(details, request) -> grpc.aio call``.
        call: the first attempt, already open.
        delay_for: ``delay_for(error, attempt) -> seconds | None`` (the retry policy).
        attempt: the number of the first attempt (1-based).
        pause: ``await pause(seconds)`` waits out a delay (default ``asyncio.sleep``; the
            retry interceptor's returns early when its channel closes).
        late: ``late(details) -> bool``, asked after each pause: ``True`` ends the call
            with the last attempt's error instead of opening another (the retry
            interceptor's says so when a loaded loop woke the pause past the deadline,
            where the next attempt could only fail ``DEADLINE_EXCEEDED`` and hide that
            error); default ``None``, never.
    """

    __slots__ = ("_delay_for", "_first", "_late", "_next", "_open", "_pause", "_request",
                 "_style")

    def __init__(self, details: ClientCallDetails, request: Any,
                 open_: Callable[[ClientCallDetails, Any], Awaitable[Any]], call: Any,
                 delay_for: Callable[[AioRpcError, int], float | None], attempt: int,
                 pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 late: Callable[[ClientCallDetails], bool] | None = None) -> None:
        super().__init__(details)
        self._request = request
        self._open = open_
        self._delay_for = delay_for
        self._pause = pause
        self._late = late
        self._first: Any = _NOTHING
        self._next: asyncio.Future[None] | None = None  # set at the next attempt's opening
        # the API its responses are taken with: None, _READER or _ITERATOR (as grpc.aio's
        # _update_response_style, the two may not be mixed)
        self._style: Any = None
        self._call = call
        self._task = asyncio.get_running_loop().create_task(self._commit(attempt))
        self._task.add_done_callback(self._settle_from_task)

    async def _commit(self, attempt: int) -> None:
        sent = 1  # attempts opened: the first one was, when this was made
        base_md = self._details.metadata
        while True:
            try:
                if self._call is None:
                    # gRFC A6: a retry says how many attempts went before it
                    self._details.metadata = with_previous_attempts(base_md, sent)
                    self._call = await self._open(self._details, self._request)
                    sent += 1
                    nxt = self._next
                    if nxt is not None:  # a wait_for_connection waits for this attempt
                        self._next = None
                        nxt.set_result(None)
                self._first = await self._call.read()
                self._settle(self._call, None)
                return
            except (AioRpcError, asyncio.CancelledError) as exc:
                # (only the except's own name holds exc, which Python unbinds as the block
                # ends: in another local, exc's traceback, holding this frame, would hold
                # the call in a reference cycle)
                if self._is_settled and not self._cancelled:
                    # committed at its headers (initial_metadata()): the attempt's outcome
                    # is the caller's, which its next read gets from the attempt itself
                    return
                if not isinstance(exc, AioRpcError):
                    if self._cancelled or self._task is None or self._task.cancelling():
                        raise  # the caller's cancel()
                    # nobody cancelled this task: the mesh ended the attempt (its endpoint
                    # left and drain_timeout_s ran out: UNAVAILABLE, retried as such; the
                    # channel closed: CANCELLED), as a unary attempt so cut
                    exc = _mesh_cut(self._details, self._call)
                # A cancelled call withdraws nothing from the budget and counts no retry.
                delay = None if self._cancelled else self._delay_for(exc, attempt)
                if delay is None:
                    self._settle(None, exc)
                    return
                # a copy without the traceback: exc's holds this frame, whose local it
                # would be (a reference cycle per retried call, see _fresh)
                last = _fresh(exc)
            # the failed attempt is let go before the pause, not after: an
            # initial_metadata() asked in the backoff then waits for the next attempt
            # instead of committing the call to this one (whose grpc.aio call an attempt
            # interceptor's failing response iterator can leave not done)
            failed, self._call = self._call, None
            if failed is not None and not failed.done():
                # that attempt's grpc.aio call goes on (its server still streaming to
                # nobody until its deadline): cancelled, as grpc's own retry ends one
                with contextlib.suppress(Exception):
                    failed.cancel()
            del failed
            await self._pause(delay)
            if self._late is not None and self._late(self._details):
                self._settle(None, last)
                return
            attempt += 1

    def _start(self) -> None:
        pass  # started when made

    def __aiter__(self) -> AsyncIterator[Any]:
        """Iterate over the responses (see :meth:`read`).

        Raises:
            grpc.aio.UsageError: :meth:`read` was used on this call (even if it has
                ended), as grpc.aio's streaming call.
        """
        if self._style is _READER:
            raise grpc.aio.UsageError(_STYLES_MIXED)
        self._style = _ITERATOR
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        eof = grpc.aio.EOF
        while True:
            call = self._call
            if self._first is _NOTHING and self._task is _NO_TASK and self._is_settled \
                    and self._error is None and call is not None:
                # _read's path of a message after the first (committed, the commit's
                # task ended), in this frame: no coroutine per message
                try:
                    response = await call.read()
                except AioRpcError as exc:
                    if exc.code() is _DEADLINE_EXCEEDED:
                        _mark_propagated_deadline(self._details, exc)
                    raise
            else:
                response = await self._read()
            if response is eof:
                return
            yield response

    async def read(self) -> Any:
        """The next response; ``grpc.aio.EOF`` at the end. Cancelling the read (its task,
        or an ``asyncio.wait_for`` timeout) cancels the call, as grpc.aio's: before the
        commit too, so no attempt is left open or opened for nobody.

        Raises:
            grpc.aio.AioRpcError: the call failed (after its retries, if before commit).
            asyncio.CancelledError: the call was cancelled.
            grpc.aio.UsageError: the call is being iterated (``async for``) and has not
                ended, as grpc.aio's streaming call.
        """
        if self._style is not _READER:
            if self._style is _ITERATOR and not self.done():
                raise grpc.aio.UsageError(_STYLES_MIXED)
            if not self.done():  # as grpc.aio's: a read of an ended call sets no style
                self._style = _READER
        return await self._read()

    async def _read(self) -> Any:
        if not self._is_settled:  # committed: no coroutine per message
            await self._settled_or_cancel()
        if self._error is not None:
            raise self._reported(self._error)  # a status: a new copy (see _fresh)
        # settled without an error: on an attempt (the commit's or the headers'), never
        # None (every settling without an attempt carries an error)
        call = self._call
        first = self._first
        task = self._task
        if first is _NOTHING and task is not _NO_TASK and task is not None and not task.done():
            # committed at its headers while the commit's read of the first message
            # runs on: that read's message is the next one (grpc.aio reads one at a time;
            # the commit's task, once ended, is _NO_TASK: one identity check per message)
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                self.cancel()  # as grpc.aio's read: a cancelled read cancels the call
                raise
            first = self._first
        if first is not _NOTHING:
            self._first = _NOTHING
            if self._cancelled or call.cancelled():
                # as grpc.aio's read of a cancelled call (done() first): the message read
                # ahead by the commit is not handed out (once per call: the first read)
                raise asyncio.CancelledError()
            return first
        try:
            return await call.read()
        except AioRpcError as exc:
            if exc.code() is _DEADLINE_EXCEEDED:
                _mark_propagated_deadline(self._details, exc)
            raise

    async def initial_metadata(self) -> Metadata:
        """The server's initial metadata: before the commit, the headers of the attempt
        in flight as soon as they arrive (an attempt that fails before sending any is
        retried as the stream is, and this waits for the next one), which commits the
        call to that attempt, as grpc-go's ``ClientStream.Header()`` (gRFC A6 commits a
        call at its response headers): a later failure of it is the caller's, not
        retried, and the caller never sees another attempt's headers or messages behind
        the ones it read. A stream whose server sends its headers and then waits (a
        subscription answering on events) answers at once, as grpc.aio's call. After
        the commit, or once the call has ended, the committed attempt's (or the error's:
        :meth:`MeshCall.initial_metadata`). Cancelling the wait leaves the call alone."""
        while not self._is_settled:
            call = self._call
            if call is not None and not call.done():
                md: Metadata = await asyncio.shield(call.initial_metadata())
                if self._is_settled or call is not self._call:
                    continue  # committed meanwhile (its first message), or retried
                if not call.done():
                    # the headers of the attempt going on: the call commits to it (the
                    # commit's read of the first message runs on, see _read)
                    self._settle(call, None)
                    return md
                # that attempt ended (its headers came with its status): retried, or the
                # call's final outcome
            nxt = self._next
            if nxt is None:
                self._next = nxt = asyncio.get_running_loop().create_future()
            # the futures are the call's: a cancelled wait() leaves them
            await asyncio.wait((nxt, self._waiter()), return_when=asyncio.FIRST_COMPLETED)
        return await super().initial_metadata()

    async def wait_for_connection(self) -> None:
        """Wait until an attempt is connected (its grpc.aio ``wait_for_connection``: for a
        server stream, its initial metadata received): the current attempt, or in a
        retry's backoff the next one; not the first message. Cancelling the wait leaves
        the call alone (as the accessors).

        Raises:
            grpc.aio.AioRpcError: the call failed (its final error, after its retries).
        """
        while not self._is_settled:
            call = self._call
            if call is not None and not call.done():
                if await asyncio.shield(_connected(call)):
                    return
                continue  # that attempt failed: the next one, or the final error
            nxt = self._next
            if nxt is None:
                self._next = nxt = asyncio.get_running_loop().create_future()
            # the futures are the call's: a cancelled wait() leaves them
            await asyncio.wait((nxt, self._waiter()), return_when=asyncio.FIRST_COMPLETED)
        await super().wait_for_connection()


async def _metadata_sent_or_end(call: Any, sent: asyncio.Event) -> None:
    """Wait until ``call`` (a grpc.aio call with a request stream) has sent its initial
    metadata (``sent``, its ``_metadata_sent``, which its ``write()`` and
    ``wait_for_connection()`` wait for) or has ended, whichever comes first: grpc.aio never
    sets ``sent`` for a call that ends before its metadata went out (cancelled a turn or
    two after it was made; with ``asyncio.eager_task_factory``, a call cancelled before
    the loop's next turns), and those waits of its own never returned. Cancelling the
    wait leaves the call alone."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def on_end(_call: Any) -> None:
        if not ended.done():
            ended.set_result(None)

    call.add_done_callback(on_end)  # (at once for a call ended meanwhile)
    opened = loop.create_task(sent.wait())
    try:
        await asyncio.wait((opened, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        opened.cancel()
        ended.cancel()


async def _raise_for_end(call: Any) -> None:
    """As grpc.aio's ``_raise_for_status`` of ``call``, an ended grpc.aio call:
    ``CancelledError`` when it was cancelled here, its status (``AioRpcError``) when it
    failed, nothing for ``OK``. The error path only."""
    core = getattr(call, "_cython_call", None)
    if core.is_locally_cancelled() if core is not None else call.cancelled():
        raise asyncio.CancelledError()
    code = await call.code()
    if code is not _OK:
        raise AioRpcError(code, await call.initial_metadata(),
                          await call.trailing_metadata(), await call.details(),
                          await call.debug_error_string())


async def _wait_for_connection(call: Any) -> None:
    """``call.wait_for_connection()`` of an attempt (a grpc.aio call), bounded by its end:
    a request stream's waits for its initial metadata to go out, and waited for good for
    a call ended first (:func:`_metadata_sent_or_end`); such a call's status is raised
    then, as grpc.aio's after that wait (``CancelledError`` for a cancelled call).
    Cancelling the wait leaves the call alone, as grpc.aio's. An attempt through attempt
    interceptors (grpc.aio's intercepted call) waits as its ``wait_for_connection``
    does, for its interceptors' call, then for that one's connection, so bounded; its
    interceptors' run shielded (grpc.aio's awaits it bare: a timed-out wait cancelled the
    attempt, an interceptor still at work, and the call ended ``CANCELLED``)."""
    task = getattr(call, "_interceptors_task", None)
    if isinstance(task, asyncio.Future):
        await _wait_for_connection(await asyncio.shield(task))
        return
    sent = getattr(call, "_metadata_sent", None)
    if sent is not None and not sent.is_set():
        if not call.done():
            await _metadata_sent_or_end(call, sent)
        if not sent.is_set():
            await _raise_for_end(call)
            return
    await call.wait_for_connection()


async def _connected(call: Any) -> bool:
    """Whether ``call`` (an attempt) connects: ``False`` if it fails or is cancelled first."""
    try:
        await _wait_for_connection(call)
    except (AioRpcError, asyncio.CancelledError):
        return False
    return True
