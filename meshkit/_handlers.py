"""Wrapping grpc.aio method handlers: one place for the four call kinds.

grpc.aio hands a server interceptor only the method name and metadata; the peer, its
certificate and the deadline live on the call's ``ServicerContext``. Interceptors that
need them return the method's handler *wrapped*: a ``before(context)`` coroutine runs in
the call's own task right before the handler (so context variables it sets are the
handler's, and vanish with the task), and aborts the call through ``context`` to refuse it.
:class:`WrappingInterceptor` wraps each method once and caches the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import queue
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Sequence,
)
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeGuard

import grpc
import structlog

from meshkit._metadata import check_metadata
from meshkit._threads import NoHandlerThread
from meshkit.errors import InvalidMetadataError, RequestStreamCutError

__all__ = [
    "GATE_MARK",
    "GUARD_MARK",
    "HANDLER_EXECUTOR",
    "NOT_FOUND_DETAILS",
    "STREAM_GUARD_MARK",
    "THREAD_MARK",
    "UNDECODABLE_MARK",
    "Before",
    "Continuation",
    "EscapedCancelledError",
    "EscapedGeneratorExit",
    "EscapedKeyboardInterrupt",
    "EscapedStopIteration",
    "EscapedSystemExit",
    "FusedInterceptor",
    "Gate",
    "Handler",
    "NoResponse",
    "Reporter",
    "Resolver",
    "Unhandled",
    "WrappingInterceptor",
    "after_handler_thread",
    "answers_unknown",
    "async_behaviour",
    "fold_outermost",
    "fuse_interceptors",
    "handler_resolver",
    "in_a_thread",
    "off_loop_handler",
    "off_loop_outermost",
    "other_responses",
    "refuse_no_thread",
    "responses",
    "runs_in_a_thread",
    "status_code_of",
    "unknown_method_answer",
    "unknown_methods_handler",
    "wrap_handler",
]

Before = Callable[[Any], Awaitable[None] | None]
"""``before(context)``: check the call; ``None`` when it passes at once, else an awaitable
that the wrap awaits (the rest of an async check, or ``context.abort(...)``, which refuses
the call). An ``async def`` check (always an awaitable) is a ``Before`` too; a synchronous
one saves the call a coroutine."""

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
Unhandled = Callable[[Exception, Any], Awaitable[bool]]
"""``unhandled(exc, context)``: answer a call whose handler (or anything inside the wrap)
raised ``exc``, an exception that is no gRPC status (not ``context.abort``'s, nor any
other ``grpc.aio.BaseError``): by setting the status on ``context`` (``set_code``,
``set_details``) and returning ``True``; not by aborting, whose ``AbortError``, raised in
the wrap's ``except`` block, would chain ``exc`` and hold it, its frames, the request and
the context in reference cycles (grpc keeps the ``AbortError``), on every failed call.
The wrap then sends that status: a unary-response one aborts with it after its ``except``
block (:func:`_abort_with_status_set`: the status alone, Trailers-Only, as grpc.aio
answers an exception; returning would send an empty message before it, which commits
the call for retrying clients, gRFC A6), a stream-response one after the messages sent
(none: Trailers-Only), as grpc.aio ends a stream. A wrap with a :class:`Reporter`
calls it before the reporter's ``finish``, which reads the status set as the call's
code. When it returns ``False``, ``exc`` goes on to grpc.aio, which answers ``UNKNOWN``
with its text. Also called, with a
:class:`NoResponse`, when a unary-response handler returned ``None`` (nothing raised:
aborts, or returns leaving the answer to grpc.aio) and when a streaming handler yielded
``None`` (returning drops that ``None`` and the stream goes on); unless it has an attribute
``answers_none`` that is ``False``: then a missing response is grpc.aio's to answer, as
without an ``Unhandled`` (the wrap also leaves the unary response's serializing to it)."""

Gate = tuple[Callable[[Any], Awaitable[tuple[Any, int]]],
             Callable[[int], None], Callable[[Any, int], None]]
"""The request gate's steps for a unary-unary call, which a wrap with a reporter may run in
its own frame (:data:`GATE_MARK`): ``first(context)`` takes a call slot and reads the
request (the request and its size in bytes, or aborts the call, a call shed for want of a
slot included); ``release(size)`` gives slot and bytes back once the call returned;
``abandon(context, size)``, called in the ``except`` block of a call that raised
(``size``: -1 when it was never admitted), gives them back then."""


class NoResponse(Exception):
    """What :data:`Unhandled` gets when a unary-response handler returned ``None``
    (``streaming`` false) or a streaming handler yielded ``None`` (``streaming`` true);
    never raised."""

    def __init__(self, streaming: bool = False) -> None:
        super().__init__("yielded None" if streaming else "returned None")
        self.streaming = streaming

Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
MAX_CACHED_METHODS = 4096

HANDLER_EXECUTOR: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "meshkit_handler_executor", default=None)
"""Where the calls of a server run their plain-function handlers (see
:func:`async_behaviour`): the server's own thread pool, set by :class:`meshkit.MeshServer`
in the context its grpc.aio server starts in (grpc.aio runs each call in a copy of it);
``None`` (a grpc.aio server of your own): the event loop's default executor. Read once
per call of a plain-function handler."""


async def other_responses(result: Any) -> AsyncIterator[Any]:
    """Responses of a streaming behaviour's result that is *not* an async iterator: a
    coroutine that answered with ``context.write`` (awaited, yields nothing) or a plain
    iterable of messages. Callers keep ``async for`` over an async iterator inline (the
    common case) and use this for the rest."""
    if inspect.isawaitable(result):
        await result
    elif result is not None:
        for item in result:
            yield item


class Reporter(Protocol):
    """Observes every call of one method, as go-grpc-middleware v2's
    ``interceptors.Reporter``: telemetry is a reporter on the same wrap as the checks.

    ``start(context)`` runs first in the call's task (before any check) and returns the
    call's state; ``finish(state, context, exc)`` runs once when the call ends, with the
    exception it ended with (``None``: returned normally), also when a check refused it;
    for an exception the wrap's :data:`Unhandled` answers, after that answer set its
    status on ``context`` (``context.code()`` is then the code sent).
    Both must not raise. A cancelled call ends with ``asyncio.CancelledError``, or, for a
    response stream cancelled while grpc.aio sends one of its messages, with the
    ``GeneratorExit`` that closes the handler's generator afterwards (possibly in another
    task, when the generator is finalized).

    A reporter may also have a ``messages`` attribute: an object with integer
    ``msg_received`` and ``msg_sent`` attributes (or ``None``), which the wrap increments
    per request message of a request-streaming method and per response message of a
    response-streaming one, where grpc.aio decodes and encodes them (the request
    iterator's and ``context.read()``'s, the yielded ones and ``context.write()``'s):
    the wrapped handler's request deserializer and response serializer count them.
    """

    def start(self, context: Any) -> Any:
        """Begin observing a call; returns what :meth:`finish` gets back."""
        ...

    def finish(self, state: Any, context: Any, exc: BaseException | None) -> None:
        """The call ended (``exc`` is what it raised, or ``None``)."""
        ...


def _is_async(behaviour: Any) -> bool:
    """Whether grpc.aio runs ``behaviour`` on the event loop: a coroutine function or an
    async generator function (``_is_async_handler`` and
    ``_finish_handler_with_stream_responses`` in grpc's
    ``_cython/_cygrpc/aio/server.pyx.pxi`` use ``inspect.iscoroutinefunction`` /
    ``inspect.isasyncgenfunction``). An object whose ``__call__`` is one counts as async
    too (grpc.aio would run it in a thread and get a coroutine back; meshkit's wraps have
    always awaited it): where a behaviour is handed to grpc.aio as it is, ask
    :func:`_grpc_awaits` (see :func:`off_loop_handler`)."""
    call = getattr(behaviour, "__call__", None)  # noqa: B004 - the method, not callable()
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
               for f in (behaviour, call))


def async_behaviour(behaviour: Any, request_streaming: bool,
                    response_streaming: bool) -> Any:
    """``behaviour`` itself when it is async (see :func:`_is_async`: also an object whose
    ``__call__`` is, whose result the callers await or iterate), else an async behaviour
    that runs it as grpc.aio runs a synchronous (plain function) handler, off the loop,
    so that one blocking handler does not stall every call of the server:

    * in the call's :data:`HANDLER_EXECUTOR`: a :class:`meshkit.MeshServer`'s own thread
      pool (``ServeOptions.handler_threads``, also its grpc.aio
      ``migration_thread_pool``), so that blocked handlers do not hold the threads of the
      loop's default executor, which ``asyncio.to_thread``, aiohttp's name lookups (a
      registry's heartbeat) and the application use; on a grpc.aio server of your own,
      the loop's default executor, as grpc.aio without a ``migration_thread_pool``. A
      unary response is one job there; a response stream is one job for its whole life,
      on one thread, as grpc.aio and a synchronous ``grpc.server`` run it (a generator
      may use a thread-bound resource: a ``sqlite3`` cursor, a ``threading.local``
      session), advanced one message at a time as the call asks for them (the thread
      waits in between, holding its thread until the stream ends, as there);
    * with the caller's context variables (``contextvars.copy_context().run``: the
      call's trace context and whatever the checks set; grpc.aio's
      ``run_in_executor`` copies none);
    * with a synchronous servicer context (:class:`_SyncContext`: ``abort`` and
      ``send_initial_metadata`` block until the loop has done them, as grpc.aio's
      ``_SyncServicerContext``; ``peer()``, ``auth_context()``, ``peer_identities()``
      and ``peer_identity_key()`` asked after the call ended, its caller gone while the
      handler ran, answer what the call answered as it ended, where grpc.aio's read the
      call it released and crash the process; asked of a context used after its handler
      returned they raise ``RuntimeError``) and, for a request stream, a blocking
      iterator of the requests (grpc.aio's ``async_generator_to_generator``).

    A call whose caller left while its handler ran ends at once (its task, the answer
    to the caller), while the handler runs on in its thread until it returns, as on
    grpc.aio; what the call holds until its handler is done with it waits for that
    thread (:func:`after_handler_thread`: the server's call slot, as a synchronous
    ``grpc.server`` holds it until its handler returns).

    A ``StopIteration`` escaping the behaviour (``next()`` on an empty iterator) is
    raised as :class:`EscapedStopIteration`, a ``RuntimeError`` (an asyncio future cannot
    carry ``StopIteration``; :pep:`479` does the same for a generator): the call is
    answered as for any unhandled exception (``UNKNOWN`` naming the type).

    A response-streaming generator function is called on the loop, as grpc.aio does (it
    returns at once; its body runs in the stream's thread, one ``next`` at a time); any
    other response-streaming behaviour (a plain function returning a list or an
    iterator) is called in the stream's thread, as it may abort, send metadata or read
    its requests before returning. What it returns is consumed on the loop when it is an
    async iterator or an awaitable (a plain decorator around an ``async def`` handler),
    which then awaits the synchronous context's ``abort``, ``abort_with_status`` and
    ``send_initial_metadata`` as an async handler awaits its context's; ``None`` (no
    stream returned) fails iterated, ``TypeError``, answered ``UNKNOWN`` as grpc.aio
    answers it (not an empty stream, ``OK``). A response
    generator that ends early (the call cancelled) is closed on its own thread with the
    call's context variables, once its ``next`` under way has returned. Decided once per
    method (the behaviour returned is marked :data:`THREAD_MARK`): an async behaviour's
    calls cost nothing more.
    """
    if _is_async(behaviour):
        return behaviour
    if response_streaming:
        return _off_loop_stream(behaviour, request_streaming)
    return _off_loop_unary(behaviour, request_streaming)


def _behaviour_of(handler: Handler) -> tuple[Any, Callable[..., Handler]]:
    """``(behaviour, factory)`` of the method handler ``handler``: the behaviour of its
    call kind (``None`` when it has none) and the ``grpc.*_rpc_method_handler`` that
    makes a handler of that kind."""
    if handler.request_streaming:
        if handler.response_streaming:
            return handler.stream_stream, grpc.stream_stream_rpc_method_handler
        return handler.stream_unary, grpc.stream_unary_rpc_method_handler
    if handler.response_streaming:
        return handler.unary_stream, grpc.unary_stream_rpc_method_handler
    return handler.unary_unary, grpc.unary_unary_rpc_method_handler


def _grpc_awaits(behaviour: Any) -> bool:
    """Whether grpc.aio runs ``behaviour`` on the event loop itself: a coroutine function
    or an async generator function (its own test, ``inspect.iscoroutinefunction`` /
    ``inspect.isasyncgenfunction`` of the behaviour; an object whose ``__call__`` is one
    is not, see :func:`_is_async`)."""
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


def _awaiting(behaviour: Any, response_streaming: bool) -> Any:
    """An async behaviour, one grpc.aio runs on the loop, calling ``behaviour``, an object
    whose ``__call__`` is a coroutine function or an async generator function (see
    :func:`_is_async`), and awaiting (iterating) what it returns, as meshkit's wraps do:
    a coroutine function for a unary response, or for a response stream when ``__call__``
    is one (it answers with ``context.write``); else an async generator function of the
    stream's messages."""
    if not response_streaming or inspect.iscoroutinefunction(
            getattr(behaviour, "__call__", None)):  # noqa: B004 - the method
        async def awaited(request: Any, context: Any) -> Any:
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result

        return awaited

    async def iterated(request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in responses(behaviour(request, context)):
            yield item

    return iterated


def off_loop_handler(handler: Handler, *, threads: bool = True) -> Handler:
    """``handler`` itself when grpc.aio would run its behaviour on the event loop (a
    coroutine function or an async generator function: grpc.aio's test, see
    :func:`_grpc_awaits`), else a handler of the same kind and serializers whose
    behaviour grpc.aio runs on the loop:

    * for a plain function (``threads`` true, the default), one that runs it as
      :func:`async_behaviour` does: in the server's handler threads
      (:data:`HANDLER_EXECUTOR`), with the call's context variables and meshkit's
      synchronous context. grpc.aio's own synchronous servicer context, which a plain
      function handed to grpc.aio gets, reads the call grpc.aio released when asked
      ``peer()`` or ``auth_context()`` after the call ended, and the process crashes
      (SIGSEGV; see :data:`_CALL_READS`). With ``threads`` false the plain function's
      handler is returned as it is (grpc.aio runs it in its ``migration_thread_pool``:
      see :func:`wrap_handler`);
    * for an object whose ``__call__`` is a coroutine function or an async generator
      function (:func:`_is_async`; grpc.aio would call it in a thread and fail
      ``UNKNOWN`` "Expected bytes, got coroutine"), one that awaits (iterates) what it
      returns on the loop (:func:`_awaiting`), whatever ``threads``.

    Asked once per method; a handler without a behaviour of its kind is returned as it
    is (grpc answers its calls)."""
    behaviour, factory = _behaviour_of(handler)
    if behaviour is None or _grpc_awaits(behaviour):
        return handler
    req_s, resp_s = handler.request_streaming, handler.response_streaming
    if _is_async(behaviour):
        run = _awaiting(behaviour, resp_s)
    elif threads:
        run = async_behaviour(behaviour, req_s, resp_s)
    else:
        return handler
    off_loop: Handler = factory(run, request_deserializer=handler.request_deserializer,
                                response_serializer=handler.response_serializer)
    return off_loop


_log = structlog.get_logger("meshkit.server")

_ON_LOOP_THREAD = ("{} waits for the event loop: used on the loop's own thread it would "
                   "deadlock the loop (use it in the handler's thread, or make the handler "
                   "async)")


class EscapedStopIteration(RuntimeError):
    """A ``StopIteration`` that escaped a synchronous handler, raised in its place (see
    :func:`async_behaviour`); the original is its ``__cause__``."""


class EscapedCancelledError(RuntimeError):
    """An ``asyncio.CancelledError`` that escaped a handler while its call was not being
    cancelled (see :func:`_stray_cancel`), raised (answered) in its place; the original is
    its ``__cause__``."""


def _stray_cancel(exc: asyncio.CancelledError) -> EscapedCancelledError | None:
    """``exc`` as an :class:`EscapedCancelledError` when it is not the call's own
    cancellation, else ``None`` (the wraps re-raise it, as before).

    grpc.aio cancels a call's task when its caller leaves or the server stops
    (``Task.cancelling()`` is then above 0, until someone ``uncancel()`` s it), and takes
    any ``CancelledError`` out of a handler for that: it sends nothing. One the handler's
    own code raised with its task not being cancelled (it awaited a future or a task
    another task cancelled: a shared one given up on, a connection its library closed)
    left the call open until the caller's deadline, for ever without one, counted
    ``CANCELLED``; the wraps answer it as any unhandled exception (``UNKNOWN``). Asked on
    the failure path only."""
    task = asyncio.current_task()
    if task is None or task.cancelling():
        return None
    stray = EscapedCancelledError("asyncio.CancelledError escaped the handler while its "
                                  "call was not cancelled (it awaited something another "
                                  "task cancelled)")
    stray.__cause__ = exc
    return stray


class EscapedGeneratorExit(RuntimeError):
    """A ``GeneratorExit`` that escaped a step of a synchronous response stream (a
    generator raising it, an iterator's ``__next__``), raised in its place: thrown into
    the asynchronous generators that serve the stream on the loop, it left them "already
    running" for good, so the call never ended and the request gate's call slot was
    never given back. The call ends ``UNKNOWN``, as for any exception; the original is
    its ``__cause__``."""


class EscapedSystemExit(RuntimeError):
    """A ``SystemExit`` that escaped a plain-function handler run in a thread (its
    ``sys.exit()``, ``argparse`` refusing arguments taken from a request), raised in its
    place: in a thread it ends only that thread, but carried back to the event loop it
    was raised in the call's task, where asyncio lets it stop the loop, ending the
    server's process. The call ends ``UNKNOWN``, as for any exception; the original is
    its ``__cause__``."""


class EscapedKeyboardInterrupt(RuntimeError):
    """A ``KeyboardInterrupt`` that escaped a plain-function handler run in a thread,
    raised in its place: Ctrl-C never reaches such a thread (Python delivers signals to
    the main thread), so it is the handler's own code's (a library re-raising a child
    process's SIGINT); carried back to the event loop it was raised in the call's task,
    where asyncio lets it stop the loop, draining the server and ending its process. The
    call ends ``UNKNOWN``, as for any exception; the original is its ``__cause__``."""


def _escaped_exit(exc: GeneratorExit) -> EscapedGeneratorExit | None:
    """``exc`` as an :class:`EscapedGeneratorExit` when the handler's own code raised it
    (it came up from a frame below the wrap's: an ``async def`` handler, an async response
    stream, a plain function's thread job), else ``None``: thrown into the wrap itself
    (grpc.aio closing a response stream's generator, a coroutine closed) it goes on as it
    is. grpc.aio answers only ``Exception`` s: the handler's own ``GeneratorExit`` ended
    the call's task with nothing sent, the call left open until its deadline, for ever
    without one. Asked on the failure path only."""
    tb = exc.__traceback__
    if tb is None or tb.tb_next is None:
        return None
    escaped = EscapedGeneratorExit(f"GeneratorExit escaped the handler: {exc!r}")
    escaped.__cause__ = exc
    return escaped


def _escaped(exc: asyncio.CancelledError | GeneratorExit) -> RuntimeError | None:
    """What the wraps answer in place of ``exc`` (:func:`_stray_cancel` of a
    ``CancelledError``, :func:`_escaped_exit` of a ``GeneratorExit``), or ``None`` when
    ``exc`` goes on as it is. Asked on the failure path only."""
    if isinstance(exc, asyncio.CancelledError):
        return _stray_cancel(exc)
    return _escaped_exit(exc)


def _call_sync(behaviour: Any, request: Any, context: Any) -> Any:
    """``behaviour(request, context)`` for the executor: a ``StopIteration`` it lets
    escape is raised as :class:`EscapedStopIteration` (set on an asyncio future it
    raises ``TypeError`` in a loop callback instead, and the call never ends)."""
    try:
        return behaviour(request, context)
    except StopIteration as e:
        raise EscapedStopIteration(
            f"StopIteration escaped the handler {getattr(behaviour, '__qualname__', behaviour)!s}"
        ) from e
    except GeneratorExit as e:  # grpc.aio answers Exceptions only: see _escaped_exit
        raise EscapedGeneratorExit(f"GeneratorExit escaped the handler: {e!r}") from e
    except SystemExit as e:  # a thread's own end, not the server's: see EscapedSystemExit
        raise EscapedSystemExit(f"SystemExit escaped the handler: {e!r}") from e
    except KeyboardInterrupt as e:  # never Ctrl-C's in a thread: see EscapedKeyboardInterrupt
        raise EscapedKeyboardInterrupt(f"KeyboardInterrupt escaped the handler: {e!r}") from e


_CALL_READS = ("peer", "peer_identities", "peer_identity_key", "auth_context")
"""The methods of grpc.aio's servicer context that read grpc's core call
(``grpc_call_get_peer``, the call's auth context). grpc.aio releases the core call once
the call's task ends (``_schedule_rpc_coro``: ``grpc_call_unref``, ``call = NULL``): read
after that, from a handler's thread that outlived the task, they crash the process.
(The others read grpc.aio's own record of the call, which lives on: ``time_remaining``,
``invocation_metadata``, ``code``...; ``abort`` and ``send_initial_metadata`` on an
ended call raise ``ExecuteBatchError``.)"""

_LOCK = threading.Lock()
"""Held while a synchronous context reads its call from a handler's thread and while the
loop marks it ended (:meth:`_SyncContext.end`), so that no read overlaps the call's
release; and while a thread job that outlived its call ends (:class:`_Outliving`).
Held for a C call or a few assignments at a time."""

_CALL_ENDED = ("the call has ended: {}() cannot be asked once a synchronous handler "
               "returned (ask it while the handler runs)")


class _SyncContext:
    """A grpc.aio ``ServicerContext`` as a synchronous handler running in a thread uses
    it (grpc.aio's ``_SyncServicerContext``): ``abort``, ``abort_with_status`` and
    ``send_initial_metadata`` run on the event loop and block until done; callbacks added
    with ``add_callback`` run after a unary-response handler returns; ``peer``,
    ``peer_identities``, ``peer_identity_key`` and ``auth_context``, which read grpc's
    core call, never read it once the call has ended (see :meth:`end`); anything else is
    the call's context's own. Blocking on the loop from the loop's own thread would
    deadlock it: ``abort``, ``abort_with_status`` and ``send_initial_metadata`` called
    there raise ``RuntimeError`` instead, except once the handler returned an awaitable
    or an async iterator (a plain decorator around an ``async def`` handler), which is
    consumed on the loop with this context (see :meth:`awaited_on_loop`): there they
    return the call's context's own coroutine, for the handler to await. ``read`` and
    ``write`` exist only there: elsewhere asking for them raises ``AttributeError``, as
    grpc.aio's synchronous context has neither."""

    __slots__ = ("_awaited", "_callbacks", "_context", "_ended", "_loop")

    def __init__(self, context: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop
        # add_callback's, until they run (None: the call ended, see run_callbacks)
        self._callbacks: list[Callable[[], Any]] | None = []
        self._awaited = False
        # False while the call lives; once it ended, True, or what end() kept of it
        self._ended: bool | dict[str, Any] = False

    def awaited_on_loop(self) -> None:
        """The handler returned an awaitable or an async iterator, about to be consumed
        on the loop: from now on, on the loop's thread, the blocking methods return the
        call's context's coroutine (``await context.abort(...)`` there answers the call
        as on any async handler's context)."""
        self._awaited = True

    def end(self, keep: bool = False) -> None:
        """The call is ending: called on the loop while grpc.aio still holds the call (in
        the call's task, or a done callback of its context). From then on ``peer()``,
        ``peer_identities()``, ``peer_identity_key()`` and ``auth_context()`` answer what
        the call answered here when ``keep`` (the handler's thread still runs: a slow
        handler logging its caller after the caller left, a response generator's
        ``finally``), else raise ``RuntimeError`` (a context handed to a thread that
        outlives its handler). Idempotent."""
        with _LOCK:
            if self._ended is not False:
                return
            if not keep:
                self._ended = True
                return
            kept: dict[str, Any] = {}
            for name in _CALL_READS:
                with contextlib.suppress(Exception):  # (a stand-in context's)
                    kept[name] = getattr(self._context, name)()
            self._ended = kept

    def _read_call(self, name: str) -> Any:
        """The call's context's ``name()`` while the call lives, else what :meth:`end`
        kept (a copy); ``RuntimeError`` when it kept nothing."""
        with _LOCK:
            ended = self._ended
            if ended is False:
                return getattr(self._context, name)()
        if ended is True or name not in ended:
            raise RuntimeError(_CALL_ENDED.format(name))
        value = ended[name]
        return value.copy() if isinstance(value, (dict, list)) else value

    def peer(self) -> str:
        """The caller's address (``"ipv4:127.0.0.1:53211"``), as the call's context
        answers it; after the call ended, see :meth:`end`."""
        return self._read_call("peer")  # type: ignore[no-any-return]

    def peer_identities(self) -> Any:
        """The caller's identities from its TLS certificate (a list of bytes, ``None``
        without one); after the call ended, see :meth:`end`."""
        return self._read_call("peer_identities")

    def peer_identity_key(self) -> Any:
        """The name of the auth-context property holding the caller's identities (a
        ``str``, ``None`` without TLS); after the call ended, see :meth:`end`."""
        return self._read_call("peer_identity_key")

    def auth_context(self) -> Any:
        """The call's auth context (a dict of property name to a list of bytes); after
        the call ended, see :meth:`end`."""
        return self._read_call("auth_context")

    def _on_loop(self, coro: Any, ended: type[Exception] | None = None,
                 details: str = "") -> Any:
        """``coro`` (a coroutine of the call's context) run on the loop, waited for; on the
        loop's thread (an async result of the handler) returned for it to await. With
        ``ended``: a send, refused with ``ended(details)`` once the call has ended
        (:meth:`_live_only`)."""
        if asyncio._get_running_loop() is self._loop:
            if self._awaited:  # an async result of the handler: it awaits this
                return coro if ended is None else self._live_only(coro, ended, details)
            coro.close()
            raise RuntimeError(_ON_LOOP_THREAD.format("a synchronous servicer context"))
        if ended is not None:
            coro = self._live_only(coro, ended, details)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _live_only(self, coro: Any, ended: type[Exception], details: str) -> Any:
        """On the loop: await ``coro`` (a send of the call's context) while the call
        lives; once it has ended, close ``coro`` unstarted and raise ``ended(details)``.
        grpc core refuses a batch on an ended call (its caller left), and grpc.aio then
        raised its internal ``ExecuteBatchError`` and kept the batch's future and callback
        wrapper for good: a handler that aborted or sent its metadata after its caller
        left leaked them at every such call."""
        if not self.is_active():
            coro.close()
            raise ended(details)
        return await coro

    def _abort(self, coro: Any) -> Any:
        """:meth:`_on_loop` of ``coro``, an abort of the call's context: ``AbortError``
        without sending anything once the call has ended (see :meth:`_live_only`)."""
        return self._on_loop(coro, grpc.aio.AbortError, "Locally aborted.")

    def abort(self, code: grpc.StatusCode, details: str = "",
              trailing_metadata: Any = ()) -> Any:
        """End the call with ``code``; raises grpc.aio's ``AbortError`` (on the loop's
        thread, in an async result of the handler: returns the coroutine that does).

        Trailing metadata gRPC cannot send (``trailing_metadata``, or with none given
        those set before with ``set_trailing_metadata``, which grpc.aio's ``abort`` sends
        then) ends the call ``INTERNAL`` naming the key instead, the metadata dropped:
        grpc.aio's ``abort`` marks the call answered before it encodes them, and a
        ``str`` value under a ``-bin`` key made the encoding raise, nothing sent, the
        call left open until its deadline (see :func:`_unsendable_abort`).

        ``code`` ``OK`` (or ``0``) ends the call ``UNKNOWN`` with ``details``, as gRPC's
        synchronous server answers it (logged, ``sync handler aborted with OK``):
        grpc.aio's ``abort`` marked the call answered and sent nothing, the call left
        open until its deadline.

        Once the call has ended (its caller left while the handler ran) nothing is sent:
        ``AbortError`` all the same (see :meth:`_live_only`)."""
        bad = _unsendable_abort(self._context, trailing_metadata)
        if bad is not None:
            code, details, trailing_metadata = grpc.StatusCode.INTERNAL, bad, ()
        elif _is_ok(code):
            code = _aborted_ok()
        return self._abort(self._context.abort(code, details, trailing_metadata))

    def abort_with_status(self, status: Any) -> Any:
        """End the call with ``status`` (a ``grpc.Status``); as :meth:`abort`."""
        bad = _unsendable_abort(self._context, getattr(status, "trailing_metadata", ()))
        if bad is not None:
            return self._abort(self._context.abort(grpc.StatusCode.INTERNAL, bad, ()))
        if _is_ok(getattr(status, "code", None)):
            return self._abort(self._context.abort(
                _aborted_ok(), getattr(status, "details", ""),
                getattr(status, "trailing_metadata", None) or ()))
        return self._abort(self._context.abort_with_status(status))

    def send_initial_metadata(self, metadata: Any) -> Any:
        """Send the call's initial metadata now (on the loop's thread, in an async result
        of the handler: returns the coroutine that does). Metadata gRPC cannot send ends
        the call ``INTERNAL`` naming the key instead (raises ``AbortError``, as
        :meth:`abort`): grpc core aborts the process sending ``grpc-timeout``, and ends
        the call ``INTERNAL`` "Invalid metadata" for a value that is not printable ASCII
        (see :func:`_unsendable_pairs`). Once the call has ended (its caller left while
        the handler ran): grpc.aio's ``UsageError`` "RPC already finished.", nothing sent
        (see :meth:`_live_only`)."""
        if metadata and type(metadata) is not tuple:  # (grpc.aio takes tuple(metadata))
            with contextlib.suppress(TypeError):  # none: grpc.aio's own TypeError
                metadata = tuple(metadata)  # a grpc.aio.Metadata, a generator: read once
        bad = _unsendable_pairs(metadata, "initial") if metadata else None
        if bad is not None:
            return self._abort(self._context.abort(grpc.StatusCode.INTERNAL, bad, ()))
        return self._on_loop(self._context.send_initial_metadata(metadata),
                             grpc.aio.UsageError, "RPC already finished.")

    def is_active(self) -> bool:
        """Whether the call is still running (gRPC's synchronous API, which grpc.aio's
        synchronous context lacks): ``False`` once it has ended, answered or not (its
        caller left, its deadline passed), so a stream may loop ``while
        context.is_active()``."""
        if self._ended is not False:
            return False
        done = getattr(self._context, "done", None)  # (a stand-in context may have none)
        return not (callable(done) and done() is True)

    def cancel(self) -> None:
        """End the call ``CANCELLED`` now (gRPC's synchronous API, which grpc.aio's
        synchronous context lacks): the caller gets ``CANCELLED``; the handler goes on
        until it returns, nothing more sent (:meth:`is_active` is ``False``). Idempotent;
        nothing once the call has ended. Blocks until done, but on the loop's own thread
        (an async result of the handler), where it is scheduled."""
        if not self.is_active():
            return
        cancelling = self._cancel_quietly()
        if asyncio._get_running_loop() is self._loop:
            task = self._loop.create_task(cancelling)
            _CANCELLING.add(task)
            task.add_done_callback(_CANCELLING.discard)
            return
        asyncio.run_coroutine_threadsafe(cancelling, self._loop).result()

    async def _cancel_quietly(self) -> None:
        if not self.is_active():  # ended meanwhile: a send would be refused (_live_only)
            return
        # a cancel sends no trailers (a synchronous grpc.server's resets the stream), and
        # grpc.aio's abort sends those set before: one gRPC cannot send left the call
        # open (see _unsendable_abort), grpc-timeout aborted the process
        with contextlib.suppress(Exception):  # (a stand-in context's)
            self._context.set_trailing_metadata(())
        # AbortError: sent; UsageError: aborted before; anything else: the call is over
        with contextlib.suppress(Exception):
            await self._context.abort(grpc.StatusCode.CANCELLED, "Cancelled")

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        """Call ``callback`` (no arguments) once, when the call ends, whatever ends it:
        gRPC's synchronous API ("called on RPC termination"), which a handler uses to
        learn that its caller left (a server stream blocked on a queue woken by a
        sentinel the callback puts). A unary-response handler's run on the loop once it
        returned, before its response is sent (as on grpc.aio; one that raises fails the
        call); otherwise (the handler raised, its caller left while it ran, a response
        stream ended however) on the loop as the call ends, while the handler's thread
        may still run, an exception logged (``sync handler callback failed``).

        Returns:
            ``True``; ``False`` (not registered, never called) once the call has ended.
        """
        with _LOCK:
            callbacks = self._callbacks
            if callbacks is None:
                return False
            callbacks.append(callback)
        return True

    def run_callbacks(self, raising: bool = False) -> None:
        """On the loop: run the callbacks added so far (once: later ones are refused,
        see :meth:`add_callback`); an exception of one is raised with ``raising`` (a
        unary handler returned: it fails the call, the callbacks after it not run), else
        logged and the next one run."""
        with _LOCK:
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            if raising:
                callback()
                continue
            try:
                callback()
            except Exception as exc:
                _log.warning("sync handler callback failed", error_type=type(exc).__name__,
                             exc_info=exc)

    def __getattr__(self, name: str) -> Any:
        if name in _ASYNC_ONLY and not (
                self._awaited and asyncio._get_running_loop() is self._loop):
            # grpc.aio's synchronous context has neither: the call's context's coroutine,
            # never awaited in a thread, dropped the message (or the request) silently
            raise AttributeError(_NO_ASYNC_ONLY.format(name))
        return getattr(self._context, name)


def _is_ok(code: object) -> bool:
    """Whether an ``abort`` code is ``OK`` (``grpc.StatusCode.OK``, or the int ``0``
    grpc.aio also takes). Asked on ``abort`` only (a failure path)."""
    return code is grpc.StatusCode.OK or (type(code) is int and code == 0)


def _aborted_ok() -> grpc.StatusCode:
    """``UNKNOWN``, the code a synchronous handler's ``abort`` with ``OK`` answers (see
    :meth:`_SyncContext.abort`), the handler's mistake logged. A failure path only."""
    _log.warning("sync handler aborted with OK: answered UNKNOWN")
    return grpc.StatusCode.UNKNOWN


_CANCELLING: set[asyncio.Task[None]] = set()
"""The cancels :meth:`_SyncContext.cancel` scheduled on the loop, held until done."""

_ASYNC_ONLY = frozenset({"read", "write"})
"""The coroutine methods of grpc.aio's servicer context that its synchronous context
(``_SyncServicerContext``) does not have: a plain handler iterates its requests and yields
(or returns) its responses; :class:`_SyncContext` has them only for an async result of
the handler consumed on the loop (see :meth:`_SyncContext.awaited_on_loop`)."""

_NO_ASYNC_ONLY = ("a synchronous handler's servicer context has no {}() (as grpc.aio's "
                  "has none): iterate the request iterator and yield or return the "
                  "responses, or make the handler async")


class _Outliving:
    """The thread job of a plain-function handler's call that may outlive the call's
    task: a unary-response handler still running when its call ended (its caller left),
    a response stream's generator (from its start: its call may end while it runs). What
    ends with a call's task but should wait for its thread (the call slot it holds: see
    :func:`after_handler_thread`) waits for :meth:`finished`."""

    __slots__ = ("_callbacks", "_done", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._done = False
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def then(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on the loop once the job has ended: now (called on the loop)
        when it has."""
        with _LOCK:
            if not self._done:
                self._callbacks.append((fn, args))
                return
        fn(*args)

    def finished(self, context: Any) -> None:
        """The job has ended (in its thread, or on the loop): no longer the call's
        (``context``'s) outliving job; the functions waiting for it are scheduled on the
        loop (dropped when the loop is closed: its server is gone). Never raises."""
        with _LOCK:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
            if _OUTLIVING.get(context) is self:
                del _OUTLIVING[context]
        for fn, args in callbacks:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(fn, *args)


_OUTLIVING: dict[Any, _Outliving] = {}
"""The calls (by their servicer context) whose plain-function handler's thread job may
still run after the call's task ended (see :class:`_Outliving`); an entry goes when its
job ends."""


def after_handler_thread(context: Any, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` now; or, when a plain-function handler of the call ``context`` (its
    servicer context) still runs in its thread after the call ended (its caller left
    while it ran; a response generator still being closed), on the loop once that
    thread job has returned. For what a call holds until its handler is done with it:
    the request gate's and :class:`meshkit._limits.CallSlots`' call slots, which a
    synchronous ``grpc.server`` also holds until its handler returns (with a thread per
    call slot, a call admitted while a handler whose caller left still held its thread
    would wait for a thread, and miss its deadline, instead of being refused at once).
    Asked where a call ends early (an exception, a done callback of a method known to
    run in a thread): one dict lookup."""
    outliving = _OUTLIVING.get(context)
    if outliving is None:
        fn(*args)
    else:
        outliving.then(fn, *args)


THREAD_MARK = "_meshkit_in_a_thread"
"""The attribute by which a behaviour that runs a plain-function handler in a thread
(:func:`async_behaviour`'s, and the wraps and guards around one) is marked ``True``: see
:func:`runs_in_a_thread`."""


def in_a_thread(behaviour: Any) -> bool:
    """Whether the method behaviour ``behaviour`` runs a plain-function handler in a
    thread: a plain function itself (grpc.aio's test, see :func:`_is_async`), or a
    behaviour marked with :data:`THREAD_MARK` or guarding one (:data:`GUARD_MARK`).
    Asked once per method."""
    if getattr(behaviour, THREAD_MARK, False):
        return True
    guard = getattr(behaviour, GUARD_MARK, None)
    if guard is not None:
        return in_a_thread(guard[0])
    return not _is_async(behaviour)


def runs_in_a_thread(handler: Handler) -> bool:
    """Whether the method handler ``handler`` runs a plain-function handler in a thread
    (see :func:`in_a_thread`): the calls of such a method may end while their thread
    still runs (see :func:`after_handler_thread`). Asked once per method."""
    behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                 or handler.stream_stream)
    return behaviour is not None and in_a_thread(behaviour)


def _marked(behaviour: Any) -> Any:
    """``behaviour`` marked with :data:`THREAD_MARK`."""
    setattr(behaviour, THREAD_MARK, True)
    return behaviour


def _off_loop_unary(behaviour: Any, request_streaming: bool) -> Any:
    async def off_loop(request: Any, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        sync = _SyncContext(context, loop)
        if request_streaming:
            request = _blocking_requests(request, loop, sync)
        executor = HANDLER_EXECUTOR.get()
        run = contextvars.copy_context().run
        if executor is None:  # a grpc.aio server of your own: the default executor
            job = None
            once = _Abandonable()
            try:
                running = loop.run_in_executor(None, once, run, _call_sync, behaviour,
                                               request, sync)
            except RuntimeError as exc:  # the job may be queued: it must never run
                if once.claim():
                    sync.end()
                    refused = _no_default_thread(exc)
                    await refuse_no_thread(context)
                    raise refused from exc  # (a context whose abort did not)
                # a worker took the job before the start failed: its handler runs
                running = once.outcome_on(loop)
        else:  # run_in_executor's own steps, the job kept
            try:
                job = executor.submit(run, _call_sync, behaviour, request, sync)
            except NoHandlerThread:  # nothing queued: none of the handler ran
                sync.end()
                await refuse_no_thread(context)
                raise  # (abort raised; this only for a context whose abort did not)
            running = asyncio.wrap_future(job, loop=loop)
        try:
            result = await running
        except BaseException:  # cancelled (the caller left), or the handler raised
            _ended_early(context, sync, job, running, loop)
            sync.run_callbacks()  # the call ends: its add_callback()s (see there)
            raise
        try:
            sync.run_callbacks(raising=True)
            if inspect.isawaitable(result):
                sync.awaited_on_loop()
                result = await result
        finally:
            with _LOCK:  # sync.end(), inline: the handler returned, nothing to keep
                sync._ended = True
        return result

    return _marked(off_loop)


async def refuse_no_thread(context: Any) -> None:
    """Refuse a call whose plain-function handler could not be given a thread: the
    server's pool had none and none could start (``can't start new thread``: a
    container's ``pids.max``, ``RLIMIT_NPROC``;
    :class:`~meshkit._threads.NoHandlerThread`, nothing queued; or the loop's default
    executor could not take the job, which then does nothing if it runs), so none of the
    handler's code ran. Answered as the request gate sheds a call none of whose code
    ran: ``RESOURCE_EXHAUSTED`` "server busy" with the nack trailer (``meshkit-nack:
    1``), which a meshkit client retries on another endpoint as its retry rules say for
    a nack (:mod:`meshkit.resilience`): a unary call whatever the method, a
    stream-unary one whose request can be sent again (a list, not a generator), a
    unary-stream one when its method is safe to repeat, a bidi stream not (an
    ``UNAVAILABLE`` is believed a nack only with a draining server's details, which
    would also tell the balancer this endpoint is leaving); not ``UNKNOWN``, which says
    the handler failed. Raises the abort (``grpc.aio.AbortError``)."""
    # (the failure path only; meshkit.resilience is not among this module's imports)
    from meshkit.resilience._retry import NACK_METADATA

    context.set_trailing_metadata((NACK_METADATA,))
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy")


_NO_DEFAULT_THREAD_WARN_S = 60.0
"""The least seconds between two warnings that the loop's default executor could not
take a plain-function handler's job (see :func:`_no_default_thread`)."""
_NO_DEFAULT_THREAD_WARNED_AT: float | None = None  # time.monotonic() of the last one


def _no_default_thread(exc: RuntimeError) -> NoHandlerThread:
    """The :class:`~meshkit._threads.NoHandlerThread` for a call the loop's default
    executor could not take (``exc``: ``run_in_executor``'s ``RuntimeError``, ``can't
    start new thread`` or the executor shut down; the call is refused "server busy",
    see :func:`refuse_no_thread`), after a warning of the ``meshkit.server`` logger with
    ``exc``'s text, at most once every :data:`_NO_DEFAULT_THREAD_WARN_S` seconds (a
    ``ThreadPoolExecutor`` does not say when a start works again): else every such call
    was refused without a line in the server's log. Failure path only."""
    global _NO_DEFAULT_THREAD_WARNED_AT
    now = time.monotonic()
    last = _NO_DEFAULT_THREAD_WARNED_AT
    if last is None or now - last >= _NO_DEFAULT_THREAD_WARN_S:
        _NO_DEFAULT_THREAD_WARNED_AT = now
        _log.warning("could not start a thread of the loop's default executor for a "
                     "plain-function handler: calls are refused 'server busy'",
                     error=str(exc) or repr(exc))
    return NoHandlerThread(*exc.args)


class _Abandonable:
    """A unary call's job on the loop's default executor: ``fn(*args)`` unless the call
    was refused first. ``ThreadPoolExecutor`` queues a job before it starts the thread
    to run it: one whose ``submit`` raised (``can't start new thread``) still runs on
    the next thread started, its call answered long before (the handler of a call its
    caller was told had failed ran anyway); and a worker freed up while the start was
    under way may already have taken it (the start releases the GIL) when ``submit``
    raises. So the job and the refusal each :meth:`claim` the call, and one of them
    wins: a job that started first is the call's answer (:meth:`outcome_on`), a refused
    call's job does nothing. Per call: a small list and a tuple."""

    __slots__ = ("_claim", "_loop", "_outcome", "_report", "_waiter")

    def __init__(self) -> None:
        self._claim: list[None] = [None]  # popped by the first to claim (atomic)
        self._report: list[None] = [None]  # popped by the first of: outcome, a waiter

    def claim(self) -> bool:
        """Whether the caller claimed the call first (the job to run it; the loop to
        refuse it)."""
        try:
            self._claim.pop()
        except IndexError:
            return False
        return True

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.claim():  # refused first: never run
            return None
        try:
            result = fn(*args)
        except BaseException as exc:
            self._hand((False, exc))
            raise
        self._outcome = (True, result)  # _hand's, inline (every call)
        try:
            self._report.pop()
        except IndexError:
            self._hand(self._outcome)
        return result

    def _hand(self, outcome: tuple[bool, Any]) -> None:
        self._outcome = outcome
        try:
            self._report.pop()
        except IndexError:  # a waiter was set first (outcome_on): answer it
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._answer)

    def _answer(self) -> None:
        ok, value = self._outcome
        if not self._waiter.done():
            if ok:
                self._waiter.set_result(value)
            else:
                self._waiter.set_exception(value)

    def outcome_on(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """On ``loop``, after :meth:`claim` said the job started first (its executor's
        ``submit`` raised, its future lost): a future of the job's outcome (failure path
        only)."""
        self._loop = loop
        self._waiter: asyncio.Future[Any] = loop.create_future()
        try:
            self._report.pop()
        except IndexError:  # the job has its outcome already
            self._answer()
        return self._waiter


def _ended_early(context: Any, sync: _SyncContext, job: Future[Any] | None,
                 running: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
    """A unary-response call stopped waiting for its handler's thread job (``job``, on
    the server's executor; ``None``: ``running`` on the loop's default executor) with an
    exception. When the job still runs (the call was cancelled: its caller left), its
    context keeps what the handler may still ask of the call (:meth:`_SyncContext.end`,
    read now, the call still alive) and, on the server's executor, the call is
    registered as outliving its task until the job returns (see
    :func:`after_handler_thread`)."""
    still = running.cancelled() if job is None else not job.done()
    sync.end(keep=still)
    if still and job is not None:
        outliving = _Outliving(loop)
        _OUTLIVING[context] = outliving
        job.add_done_callback(lambda _job: outliving.finished(context))


_DONE: Any = object()  # a response stream's end, handed back from its thread
_STOP: Any = object()  # the loop's word to a response stream's thread: the stream ended
_ASK_POLL_S = 1.0  # how often a stream's idle thread looks whether its loop closed


class _OnLoop:
    """What a plain function called for a response stream returned when it is to be
    consumed on the loop: an async iterator, an awaitable, or ``None``."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


def _give(fut: asyncio.Future[Any], item: Any) -> None:
    if not fut.done():  # else the stream stopped waiting for it (cancelled)
        fut.set_result(item)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class _Pump:
    """A synchronous response stream run on one thread of the executor for its whole
    life, as grpc.aio (one ``run_in_executor`` iterating the generator) and a
    synchronous ``grpc.server`` (a worker per call) run it, so that a generator using a
    thread-bound resource (a ``sqlite3`` cursor, a ``threading.local`` session) works:
    the loop asks for each message (:meth:`ask`: a future the thread answers) and the
    thread advances the iterator once per ask, waiting in between (as the stream was
    advanced one message at a time before: nothing is computed ahead of the call's
    pace). When the stream ends early (cancelled, closed), the loop says so
    (:meth:`stop`; also the call's done callback, :meth:`call_ended`, for a stream
    grpc.aio leaves unclosed) and the thread closes the generator itself once its
    ``next`` under way has returned: one thread per stream, never a second one to
    close it. A stream that ends while its job still waits for a thread never runs (its
    job is cancelled, as a unary call's; on the loop's default executor, whose jobs
    meshkit does not hold, the job ends as it starts)."""

    __slots__ = ("_asks", "_claim", "_context", "_job", "_loop", "finished", "outliving")

    def __init__(self, loop: asyncio.AbstractEventLoop, context: Any) -> None:
        self._loop = loop
        self._context = context
        self._asks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # popped by the first of: the job starting, the loop refusing the call (a job on
        # the loop's default executor whose submit raised may have been taken already)
        self._claim: list[None] = [None]
        self._job: Future[None] | None = None
        self.finished = False
        self.outliving = _Outliving(loop)

    def start(self, executor: Executor | None, run: Callable[..., Any],
              sync: _SyncContext, first: asyncio.Future[Any], it: Iterator[Any] | None,
              make: Callable[[], Any] | None) -> None:
        """Run the stream on a thread of ``executor`` (``None``: the loop's default
        executor) in the call's context copy (``run``: its ``Context.run``), answering
        ``first``; ``it``: the response iterator, or ``make``: the call that returns the
        stream (run in the thread first). The call (its servicer context) is registered
        as outliving its task until the thread is done (see
        :func:`after_handler_thread`).

        Raises:
            NoHandlerThread: ``executor`` has no thread and none can start (nothing
                queued), or the loop's default executor could not take the job (no
                thread could start: ``ThreadPoolExecutor`` queued it first, and it does
                nothing if it runs; or it was shut down): the call is refused, see
                :func:`refuse_no_thread`; not when a worker freed up during the start
                took the job first (the stream then runs as any other).
            RuntimeError: ``executor`` was shut down (the call then fails ``UNKNOWN``).
        """
        context = self._context
        _OUTLIVING[context] = self.outliving
        try:
            if executor is None:
                try:
                    self._loop.run_in_executor(None, run, self._run, first, it, make)
                except RuntimeError as exc:
                    # ThreadPoolExecutor queued the job before the thread it could not
                    # start (or was shut down): the job, if it runs, finds the call
                    # claimed and does nothing; unless a worker freed up during the start
                    # took it first: then the stream runs
                    if self._claimed():
                        self._asks.put(_STOP)
                        raise _no_default_thread(exc) from exc
            else:
                self._job = executor.submit(run, self._run, first, it, make)
        except BaseException:
            self._ended()
            raise
        add_done_callback = getattr(context, "add_done_callback", None)
        if add_done_callback is not None:  # (a stand-in context may have none)
            add_done_callback(functools.partial(self.call_ended, sync))

    def ask(self) -> asyncio.Future[Any]:
        """On the loop: a future for the stream's next message (:data:`_DONE` at its end;
        raising what the iterator raised)."""
        fut = self._loop.create_future()
        self._asks.put(fut)
        return fut

    def stop(self) -> None:
        """On the loop: the stream ended early; its thread closes the generator, or its
        job, still waiting for a thread, is cancelled. Safe to call more than once, or
        after the thread is done."""
        self._asks.put(_STOP)
        job = self._job
        if job is not None and job.cancel():  # never started: it never runs
            self._ended()

    def call_ended(self, sync: _SyncContext, context: Any) -> None:
        """The call's done callback (on the loop, grpc.aio still holding the call): stop
        the stream if it still runs, and end ``sync`` (keeping what the generator's
        ``finally`` may still ask of the call while its thread runs)."""
        self.stop()
        sync.end(keep=not self.finished)
        sync.run_callbacks()  # the call ended: its add_callback()s (see there)

    def _claimed(self) -> bool:
        """Whether the caller (the job starting; the loop refusing) came first."""
        try:
            self._claim.pop()
        except IndexError:
            return False
        return True

    def _ended(self) -> None:
        """The stream's thread is done with it (or its job never ran)."""
        self.finished = True
        self.outliving.finished(self._context)

    def _run(self, fut: Any, it: Iterator[Any] | None,
             make: Callable[[], Any] | None) -> None:
        """The thread's job: the whole stream (see the class). Never raises."""
        try:
            if not self._claimed() or not self._asks.empty():
                # refused, or stopped while it waited for a thread: never run
                fut = _STOP
            elif it is None:
                assert make is not None
                try:
                    result = make()
                    if hasattr(result, "__aiter__") or inspect.isawaitable(result):
                        self._hand(_give, fut, _OnLoop(result))  # consumed on the loop
                        return
                    it = iter(result)  # None (no stream returned): TypeError, as grpc.aio
                except BaseException as e:
                    self._hand(_fail, fut, e)
                    return
            while fut is not _STOP:
                assert it is not None
                try:
                    item = next(it, _DONE)
                except BaseException as e:  # the generator is finished
                    self._hand(_fail, fut, e)
                    return
                if not self._hand(_give, fut, item):
                    break  # the loop is closed
                if item is _DONE:
                    return
                fut = self._next_ask()
            close = getattr(it, "close", None)
            if close is not None:
                # ValueError: the generator is executing (handed to a thread of its own);
                # and whatever its finally raises
                with contextlib.suppress(Exception):
                    close()
        finally:
            self._ended()

    def _hand(self, to: Callable[[asyncio.Future[Any], Any], None], fut: asyncio.Future[Any],
              what: Any) -> bool:
        """``to(fut, what)`` on the loop; ``False`` when the loop is closed."""
        if isinstance(what, StopIteration | GeneratorExit | SystemExit | KeyboardInterrupt):
            # an asyncio future cannot carry a StopIteration; a GeneratorExit would wedge
            # the loop's async generators serving the stream; a SystemExit or a
            # KeyboardInterrupt would stop the loop (see EscapedSystemExit)
            escaped = (EscapedStopIteration if isinstance(what, StopIteration)
                       else EscapedGeneratorExit if isinstance(what, GeneratorExit)
                       else EscapedSystemExit if isinstance(what, SystemExit)
                       else EscapedKeyboardInterrupt)(
                f"{type(what).__name__} escaped a response stream: {what!r}")
            escaped.__cause__ = what
            what = escaped
        try:
            self._loop.call_soon_threadsafe(to, fut, what)
        except RuntimeError:
            return False
        return True

    def _next_ask(self) -> Any:
        """The loop's next ask (a future), or :data:`_STOP`, also once the loop closed
        without saying (checked every :data:`_ASK_POLL_S`: the interpreter's exit waits
        for the executor's threads)."""
        while True:
            try:
                return self._asks.get(timeout=_ASK_POLL_S)
            except queue.Empty:
                if self._loop.is_closed():
                    return _STOP


def _off_loop_stream(behaviour: Any, request_streaming: bool) -> Any:
    on_loop = inspect.isgeneratorfunction(behaviour)  # returns at once: call it here

    async def off_loop(request: Any, context: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        run = contextvars.copy_context().run
        sync = _SyncContext(context, loop)
        if request_streaming:
            request = _blocking_requests(request, loop, sync)
        it: Iterator[Any] | None = None
        make: Callable[[], Any] | None = None
        if on_loop:
            it = run(behaviour, request, sync)  # its body runs in the stream's thread
        else:  # called in the stream's thread: it may abort or read its requests
            make = functools.partial(_call_sync, behaviour, request, sync)
        pump = _Pump(loop, context)
        first: asyncio.Future[Any] = loop.create_future()
        try:
            pump.start(HANDLER_EXECUTOR.get(), run, sync, first, it, make)
        except NoHandlerThread:  # nothing queued: none of the handler ran
            sync.end()
            await refuse_no_thread(context)
            raise  # (abort raised; this only for a context whose abort did not)
        finished = False
        try:
            item = await first
            if type(item) is _OnLoop:  # not a plain iterable: consumed on the loop
                finished = True  # (the thread is done)
                sync.awaited_on_loop()
                async for each in responses(item.result):
                    yield each
                return
            while item is not _DONE:
                yield item
                item = await pump.ask()
            finished = True
        finally:
            if not finished:  # ended early (cancelled, closed, failed)
                pump.stop()

    return _marked(off_loop)


async def _anext(it: Any, sync: _SyncContext | None) -> Any:
    """On the loop: the next message of the request stream ``it``; ``StopAsyncIteration``
    without reading once the call (``sync``, its context; ``None``: not asked) has ended.
    grpc core refuses a read batch on an ended call, and grpc.aio reads that refusal as
    the stream's end but keeps the batch's future and callback wrapper for good: a
    handler still iterating when its caller left leaked them at every cut call."""
    if sync is not None and not sync.is_active():
        raise StopAsyncIteration
    return await it.__anext__()


def _blocking_requests(requests: Any, loop: asyncio.AbstractEventLoop,
                       sync: _SyncContext | None = None) -> Iterator[Any]:
    """The request stream ``requests`` (an async iterator) as a blocking iterator for a
    handler running in a thread: each message is read on the loop (grpc.aio's
    ``async_generator_to_generator``). Iterated on the loop's own thread it raises
    ``RuntimeError`` (waiting there for the loop would deadlock it).

    grpc.aio ends the stream alike when its client half-closed it and when grpc core
    failed a read (the call's deadline passed, its caller cancelled, a message over the
    server's receive limit): at its end, the iterator raises
    :class:`~meshkit.errors.RequestStreamCutError` when the call (``sync``, its context;
    ``None``: not asked) has ended, or ends within :data:`_CUT_WAIT_S`
    (:func:`_cut_with_call`), as a synchronous ``grpc.server``'s iterator raises
    ``grpc.RpcError``."""
    it = requests.__aiter__()
    while True:
        if asyncio._get_running_loop() is loop:
            raise RuntimeError(_ON_LOOP_THREAD.format("a synchronous handler's request iterator"))
        read = _anext(it, sync)
        try:
            future = asyncio.run_coroutine_threadsafe(read, loop)
        except RuntimeError:  # the loop closed (the server stopped): never to be awaited
            read.close()
            raise
        try:
            item = future.result()
        except StopAsyncIteration:
            if sync is None:
                return
            asked = _cut_with_call(sync)
            try:
                cut = asyncio.run_coroutine_threadsafe(asked, loop).result()
            except RuntimeError:  # the loop closed (the server stopped): the call is over
                asked.close()
                cut = True
            if cut:
                raise RequestStreamCutError() from None
            return
        yield item


_CUT_TURNS = 4
_CUT_WAIT_S = 0.002
_CUT_POLL_S = 0.0005
"""How long a plain-function handler's request stream end waits for its call to end
with it (see :func:`_cut_with_call`): :data:`_CUT_TURNS` loop turns, then polls every
:data:`_CUT_POLL_S` until :data:`_CUT_WAIT_S` has passed. grpc core fails the read and
closes the call together, but grpc.aio learns of each by a completion of its own,
delivered by its poller thread: the call's task is cancelled (its end) a turn after
the read's end arrives, or a few milliseconds later on a loaded host."""


async def _cut_with_call(sync: _SyncContext) -> bool:
    """On the loop, at the end of a plain-function handler's request stream: whether
    its call (``sync``) ended, or ends within :data:`_CUT_WAIT_S` (grpc.aio reads a
    read grpc core failed as the stream's end, then cancels the call's task), i.e. the
    stream was cut, not half-closed by its client; or its deadline has passed (nothing
    the handler answers reaches its caller). A stream's end only: a clean end waits
    the whole :data:`_CUT_WAIT_S` (about 2 ms), a cut one as long as grpc.aio takes."""
    with contextlib.suppress(Exception):  # (a stand-in context may have none)
        remaining = sync.time_remaining()
        if remaining is not None and remaining <= 0:
            return True
    loop = asyncio.get_running_loop()
    until = loop.time() + _CUT_WAIT_S
    turns = 0
    while sync.is_active():
        if turns < _CUT_TURNS:
            await asyncio.sleep(0)
        elif loop.time() < until:
            await asyncio.sleep(_CUT_POLL_S)
        else:
            return False
        turns += 1
    return True


def responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour's ``result``: ``result`` itself when it is an
    async iterator (the common case, no extra layer), else :func:`other_responses`."""
    return result if hasattr(result, "__aiter__") else other_responses(result)


def wrap_handler(handler: Handler, before: Before | None = None,
                 reporter: Reporter | None = None,
                 unhandled: Unhandled | None = None, *,
                 max_send_bytes: int | None = None) -> Handler:
    """A handler like ``handler`` observed by ``reporter``, checked by ``before``, and whose
    unhandled exceptions ``unhandled`` answers.

    Per call, in the call's own task: ``reporter.start(context)``, then
    ``await before(context)`` (which may abort the call), then the behaviour, then
    ``reporter.finish(...)`` whatever happened; when the call raised an exception that is
    no gRPC status (see :data:`Unhandled`), ``await unhandled(exc, context)`` first, so
    the reporter reads the status it answers with on ``context`` (the code sent).
    Works for all four call kinds and keeps the behaviour's shape: an async generator
    stays one, a coroutine (also one that answers with ``context.write``) stays a
    coroutine, and a plain function runs off the event loop as grpc.aio runs it
    (:func:`async_behaviour`; its result is awaited if it is awaitable). With none of
    the three, ``handler`` as :func:`off_loop_handler` makes it, once per method: itself
    when grpc.aio runs its behaviour on the loop; an object with an async ``__call__``
    awaited on the loop; and a plain function taken off the loop alone when the call
    that resolves the handler has a :data:`HANDLER_EXECUTOR` (in a
    :class:`meshkit.MeshServer`, whose grpc.aio ``migration_thread_pool`` that executor
    is: a handler a user's interceptor returned under a check with nothing to check for
    its method is never left to grpc.aio's synchronous context), else left as it is (on
    a grpc.aio server of your own, which runs it in its own ``migration_thread_pool``,
    where meshkit would use the loop's default executor). With ``unhandled``, a unary
    response of ``None`` and a ``None`` a streaming handler yields are answered too (a
    :class:`NoResponse`; messages written with ``context.write`` are not seen), and a
    unary response is serialized in the wrap (a ``str`` the serializer refuses is
    UTF-8 encoded, as grpc.aio hands it: :func:`_serialize_encoded`): the handler
    returned has no response serializer. A unary response of a method without a
    response serializer is checked in the wrap (also without ``unhandled``: one call per
    response, :func:`_bytes_only`): grpc.aio sends only ``bytes`` (or a ``str``). With
    ``max_send_bytes``
    (the server's ``grpc.max_send_message_length``), a unary response (also without
    ``unhandled``) and every message a streaming handler yields are serialized there
    too, and one over it is answered ``RESOURCE_EXHAUSTED`` "SERVER: Sent message larger
    than max (<size> vs. <limit>)", as grpc core answers it, in the wrap, where the
    reporter sees that code (messages written with ``context.write`` are serialized by
    grpc.aio with the method's serializer, and left to grpc core). Trailing metadata the
    handler set that gRPC cannot send (:func:`~meshkit._metadata.check_metadata`'s
    rules) is answered ``INTERNAL`` naming the key when it returns, and dropped when it
    raises (see :func:`_unsendable_trailers`); checked only when it set some.
    """
    if before is None and reporter is None and unhandled is None:
        # per method, in the context of the call that resolves it (grpc.aio runs the
        # interceptors in the call's task; a MeshServer's calls see its executor)
        return off_loop_handler(handler, threads=HANDLER_EXECUTOR.get() is not None)
    req_s, resp_s = handler.request_streaming, handler.response_streaming
    inner, factory = _behaviour_of(handler)
    assert inner is not None
    inner = async_behaviour(inner, req_s, resp_s)  # a plain function: off the loop
    # asked of the handler's own behaviour, before the wrap's layers (the request count's
    # plain function, which returns its async behaviour's result, runs in no thread)
    threaded = in_a_thread(inner)
    check: Before = before if before is not None else _no_check
    streams = resp_s and not inspect.iscoroutinefunction(inner)
    behavior: Any
    # a unary response of None is no answer (a streaming coroutine's None is: it wrote);
    # and a unary response is serialized inside the wrap, where a serializer's exception
    # is answered and reported as the call's (grpc.aio serializes after the handler
    # returned: the caller got the exception's text, telemetry had counted the call OK)
    # (an Unhandled may leave a missing response to grpc.aio: see Unhandled)
    none_to = unhandled if getattr(unhandled, "answers_none", True) is not False else None
    empty = None if resp_s else none_to
    base = handler.response_serializer
    ser = base if empty is not None else None
    sends = base if ser is None else None  # the serializer grpc.aio is given
    if max_send_bytes is not None and (not resp_s or streams):
        # the server's grpc.max_send_message_length, checked where the wrap serializes
        # (a unary response also without unhandled): grpc core would refuse the response
        # after the wrap reported the call OK, and a stream's message after the wrap
        # yielded it (grpc.aio then cancels the call's task: the stream looked
        # CANCELLED); a stream's messages are serialized in the wrap only with a limit,
        # normal streams pay nothing for it
        if base is None:
            ser = _limited(_as_is, max_send_bytes)
        elif streams:  # messages written with context.write still need the serializer
            ser, sends = _limited(base, max_send_bytes, marked=True), _passing(base)
        else:
            ser = _limited(base, max_send_bytes)
    elif base is None and not resp_s:
        # no serializer: grpc.aio sends only bytes (a str encoded), and answered anything
        # else UNKNOWN after the wrap had counted the call OK (one call per response)
        ser, sends = _bytes_only, None
    des = handler.request_deserializer
    # a stream's messages grpc.aio serializes (yielded ones too, without a send limit):
    # its answer to a serializer's exception quotes the text, which a hiding server keeps
    # to its log (in _counting_sent's frame under telemetry: nothing more per message)
    hide = resp_s and none_to is not None and sends is not None
    messages = None if reporter is None else getattr(reporter, "messages", None)
    if hide and messages is None:
        sends = _hiding(sends)  # type: ignore[arg-type]
    # the request guard's check, when a user's interceptor sits between it and this wrap
    guard = None if req_s else getattr(des, UNDECODABLE_MARK, None)
    if reporter is None:
        behavior = (_checked_stream(inner, check, unhandled, guard, ser, none_to) if streams
                    else _checked(inner, check, unhandled, empty, ser, guard))
    else:
        if messages is not None:
            # a streaming direction's messages are counted where grpc.aio (de)serializes
            # them: those of the request iterator and the yielded ones, and those the
            # handler reads and writes itself with context.read() / context.write()
            if req_s:
                des = _counting_received(des, messages)
            if resp_s:
                sends = _counting_sent(sends, messages, max_send_bytes, hide)
        behavior = (_reported_stream(inner, check, reporter, unhandled, guard, ser, none_to)
                    if streams else _reported(inner, check, reporter, unhandled, empty, ser,
                                              guard))
    if threaded:  # see runs_in_a_thread
        _marked(behavior)
    wrapped: Handler = factory(
        behavior,
        request_deserializer=des,
        response_serializer=sends,
    )
    return wrapped


def _no_check(context: Any) -> None:
    return None


class ResponseTooLarge(Exception):
    """A serialized response (a unary one, or a message of a stream) over the server's
    ``grpc.max_send_message_length``: the handler wrap answers it ``RESOURCE_EXHAUSTED``
    with grpc core's own message, "SERVER: Sent message larger than max (<size> vs.
    <limit>)" (sizes in bytes; the channel's refusal of a request says "CLIENT: ..."),
    and telemetry counts that, where grpc core would refuse it after the call was
    counted ``OK`` (a stream's: ``CANCELLED``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"SERVER: Sent message larger than max ({size} vs. {limit})")


def _as_is(message: Any) -> Any:
    """A method without a response serializer sends its (bytes) responses as they are."""
    return message


def _limited(ser: Callable[[Any], bytes], limit: int,
             marked: bool = False) -> Callable[[Any], Any]:
    """``ser``, raising :class:`ResponseTooLarge` for a message over ``limit`` bytes;
    ``marked``: its bytes handed on as a :class:`_Serialized` (for :func:`_passing`). A
    ``str`` message is UTF-8 encoded before ``ser`` sees it, as grpc.aio's own
    serialization does (its size is then its bytes', not its characters'): one
    ``isinstance`` per message, on servers with a send limit only. What ``ser`` returns
    that is no exact ``bytes`` raises grpc.aio's ``TypeError`` (see :func:`_not_bytes`)."""
    if marked:
        def serialize_marked(message: Any) -> _Serialized:
            if isinstance(message, str):
                message = message.encode()
            data = ser(message)
            if type(data) is not bytes:
                _not_bytes(data)  # raises, unless None (grpc.aio's answer)
            elif len(data) > limit:
                raise ResponseTooLarge(len(data), limit)
            return _Serialized(data)

        return serialize_marked

    def serialize(message: Any) -> bytes:
        if isinstance(message, str):
            message = message.encode()
        data = ser(message)
        if type(data) is not bytes:
            _not_bytes(data)  # a unary None is left to grpc.aio (no unhandled): its answer
            return data
        if len(data) > limit:
            raise ResponseTooLarge(len(data), limit)
        return data

    return serialize


def _not_bytes(data: Any) -> None:
    """Raise grpc.aio's ``TypeError`` ("Expected bytes, got <type>") for a serialized
    message that is no exact ``bytes`` (a ``bytearray``, a subclass, a ``dict`` handed on
    by a method without a serializer), which grpc.aio refuses to send (``UNKNOWN``), so
    the wrap answers it and telemetry counts it so, where its ``len()`` passed the size
    check and the call was counted ``OK``; ``None`` passes (grpc.aio's own answer)."""
    if data is not None:
        raise TypeError(f"Expected bytes, got {type(data).__name__}")


def _bytes_only(message: Any) -> Any:
    """A unary response of a method without a response serializer, as grpc.aio sends it:
    ``bytes`` as they are, a ``str`` UTF-8 encoded, ``None`` left to grpc.aio (its own
    answer); anything else (a ``bytearray``, a ``memoryview``, a ``bytes`` subclass, a
    ``dict``) raises grpc.aio's ``TypeError`` "Expected bytes, got <type>" in the wrap,
    answered and counted as the handler's (grpc.aio answered it ``UNKNOWN`` with that
    text after the call was counted ``OK``)."""
    if type(message) is bytes:
        return message
    if isinstance(message, str):
        return message.encode()
    _not_bytes(message)
    return message


class _Serialized:
    """A response stream's message the wrap serialized (``data``, its bytes) on its way to
    grpc.aio, whose serializer for the method is :func:`_passing`: the method keeps its
    serializer for the messages the handler writes with ``context.write``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _passing(ser: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``ser`` for grpc.aio: a :class:`_Serialized` message's bytes pass as they are (the
    wrap serialized and checked it), anything else (written with ``context.write``) is
    serialized by ``ser``. Costs a yielded message of a method with a serializer one
    small object and one call more than handing grpc.aio its bytes (only with a send
    limit: without one, grpc.aio calls the method's serializer itself)."""
    def serialize(message: Any) -> bytes:
        return message.data if type(message) is _Serialized else ser(message)

    return serialize


def _serializing(inner: Any, ser: Callable[[Any], bytes]) -> Any:
    """``inner`` (a response-streaming behaviour) whose messages are serialized by ``ser``
    (a :func:`_limited` serializer) as it yields them: a message over the limit closes
    the handler's generator (its ``finally`` runs in the call's task) and aborts the call
    ``RESOURCE_EXHAUSTED`` with grpc core's message. A ``None`` goes through unserialized
    (the wrap answers it)."""

    async def serialized(result: Any, context: Any) -> AsyncIterator[Any]:
        it = responses(result)
        async for item in it:
            if item is None:
                yield item
                continue
            try:
                data = ser(item)
            except ResponseTooLarge as too_large:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await aclose()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(too_large))
            yield data

    def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        return serialized(inner(request, context), context)

    return behavior


_UNMARKED: Any = object()  # no request is this: what an unguarded behaviour "refuses"

GATE_MARK = "_meshkit_gate"
"""The attribute by which a unary-response handler wrap with a reporter (telemetry) marks its
behaviour with ``fused(gate=...)``: the same wrap made again as the stream-unary behaviour
of the request gate (:class:`meshkit._limits.RequestGate`) given its :data:`Gate` steps,
which takes the call's slot and reads its request in the wrap's frame, then runs the
wrap, and gives slot and bytes back: one coroutine frame fewer per unary-unary call than
the gate's wrap around this one. Asked once per method."""


def _ungated(*args: Any) -> Any:
    raise AssertionError("no request gate")  # never called: a wrap checks ``gated`` first


class _GrpcAsync(functools.partial[Any]):
    """A coroutine function (the partial of one, without arguments) that grpc.aio's
    server tells from a plain function in one step: the unary-response wraps
    (:func:`_reported`, :func:`_checked`, the request gate's fused wrap of
    :data:`GATE_MARK`, and the gate's own wraps of
    :class:`meshkit._limits.RequestGate` when no wrap here is fused into it: its
    ``unary_out`` and ``_admitted_coroutine``'s) are made as one.

    grpc.aio asks of a unary-response behaviour, per call, ``inspect.isawaitable(b) or
    inspect.iscoroutinefunction(b) or inspect.isasyncgenfunction(b)`` (its
    ``_is_async_handler`` in ``_cython/_cygrpc/aio/server.pyx.pxi``): twice on the
    request-streaming path the gate hands it unary calls on (``_handle_stream_unary_rpc``
    and ``_finish_handler_with_unary_response``), once on the unary-unary one (no gate:
    ``ServerLimits(read_requests=False)``). For a function ``isawaitable`` says no
    and ``iscoroutinefunction`` walks four more Python frames: 53 bytecodes a check on
    Python 3.11, 47 on 3.12, 98 on 3.13. This class has ``__await__``, so
    ``isawaitable`` (``collections.abc.Awaitable``) says yes at once; the call itself is
    ``functools.partial``'s, in C (no frame). ``inspect.iscoroutinefunction`` still says
    yes (it unwraps a partial), as grpc.aio's other checks and meshkit's
    (:func:`_grpc_awaits`, :func:`_is_async`) ask. Never awaited: awaited, it raises
    the ``TypeError`` awaiting a function raises. (The gate's coroutine behaviour of a
    stream-stream method answering with ``context.write`` is one too: grpc.aio checks
    it once per call as above, in ``_handle_stream_stream_rpc``, then asks
    ``inspect.iscoroutinefunction`` of it, which costs a partial 9 bytecodes more: 44
    fewer a call in all.) The gate's response-streaming wraps, async generator
    functions (``stream_out``, ``admitted_stream``, the health ``Watch``'s ``watch``),
    are made one too: grpc.aio checks a request-streaming behaviour as above, once per
    call in ``_handle_stream_stream_rpc`` (an async generator function walked on
    through ``iscoroutinefunction`` and ``isasyncgenfunction``), then asks both of it
    in ``_finish_handler_with_stream_responses``, 9 bytecodes more each for a partial:
    88 fewer a call (a partial of an async generator function is one to ``inspect``).
    Not where grpc.aio makes no such first check (a response stream of a unary request
    handed to grpc.aio as it is: it would cost 18 more).

    What an interceptor before meshkit's (a ``grpc.aio`` server's, see
    :func:`meshkit.observability.server_interceptors`) may ask of the behaviour it is
    handed answers as for the function: its ``__name__`` and ``__qualname__``, and
    ``copy.copy`` / ``copy.deepcopy`` return it as it is (a partial would be copied
    through its ``__dict__``: :data:`GATE_MARK`'s partial and the reporter in it, whose
    locks do not copy)."""

    __slots__ = ()
    __name__: str
    __qualname__: str

    def __new__(cls, behavior: Callable[..., Any]) -> _GrpcAsync:
        self = super().__new__(cls, behavior)
        self.__name__ = behavior.__name__  # (in its __dict__: a partial has none)
        self.__qualname__ = behavior.__qualname__
        return self

    def __await__(self) -> Iterator[Any]:
        raise TypeError("a handler's behaviour is called, not awaited")

    def __copy__(self) -> _GrpcAsync:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _GrpcAsync:
        return self


_NO_GATE: Gate = (_ungated, _ungated, _ungated)


GUARD_MARK = "_meshkit_guard"
"""The attribute by which the request guard of a unary-request method
(:func:`meshkit._limits.guard_method_handler`) marks its behaviour with ``(inner,
undecodable, message)``: the behaviour it guards, the request value that did not decode, and
the ``INVALID_ARGUMENT`` message to abort such a call with. A wrap here then runs the guard's
check itself and calls ``inner`` directly: one coroutine frame fewer per unary-unary call,
one async-generator layer fewer per response message of a unary-stream call."""


UNDECODABLE_MARK = "_meshkit_undecodable"
"""The attribute by which the request guard's deserializer of a unary-request method marks
itself with ``(undecodable, message)``: what it returns for a request that does not decode,
and the ``INVALID_ARGUMENT`` message to abort such a call with. A wrap whose behaviour is not
the guard itself (a user's server interceptor wraps it) runs the guard's check from this
mark, before the user's code: an interceptor is never handed the undecodable value."""


STREAM_GUARD_MARK = "_meshkit_stream_guard"
"""The attribute by which the request guard of a stream-stream method
(:func:`meshkit._limits.guard_method_handler`) marks its behaviour with ``(inner, refused,
message)``: the behaviour it guards, the exception a request message that does not decode
raises in it (:class:`meshkit._limits.UndecodableRequest`), and the ``INVALID_ARGUMENT``
message to abort a call that exception escapes with. A streaming wrap here then catches it
itself and calls ``inner`` directly: one async-generator layer fewer per response
message."""


class _NeverRaised(Exception):
    """Raised by nothing: what a streaming wrap with no request guard to run catches."""


def _own_mark(behaviour: Any, name: str) -> Any:
    """The mark ``name`` of ``behaviour`` (the request guard's :data:`GUARD_MARK` or
    :data:`STREAM_GUARD_MARK`, a wrap's :data:`GATE_MARK`) when ``behaviour`` is the
    marked guard or wrap itself, else ``None``. A wrapper of it (a user's server
    interceptor decorating it with ``functools.wraps``, which copies its ``__dict__``,
    marks and all; a ``wrapt`` proxy, which reads them through) carries the mark too but
    must run: both set ``__wrapped__``, which the guard and the wraps have not. Asked
    once per method."""
    if getattr(behaviour, "__wrapped__", None) is not None:
        return None
    return getattr(behaviour, name, None)


def _stream_unguarded(inner: Any) -> tuple[Any, type[BaseException], str]:
    """``(behaviour, refused, message)`` of a marked stream-stream guard (see
    :data:`STREAM_GUARD_MARK`), else ``(inner, _NeverRaised, "")``."""
    mark = _own_mark(inner, STREAM_GUARD_MARK)
    if mark is not None:
        return mark  # type: ignore[no-any-return]
    return inner, _NeverRaised, ""


def _unguarded(inner: Any, guard: tuple[Any, str] | None) -> tuple[Any, Any, str]:
    """``(behaviour, undecodable, message)`` of a marked guard (see :data:`GUARD_MARK`);
    else ``inner`` with the check of ``guard`` (the deserializer's
    :data:`UNDECODABLE_MARK`), or with none: ``(inner, _UNMARKED, "")``."""
    mark = _own_mark(inner, GUARD_MARK)
    if mark is not None:
        return mark  # type: ignore[no-any-return]
    if guard is not None:
        return inner, guard[0], guard[1]
    return inner, _UNMARKED, ""


# What grpc.aio raises for a call's status (AbortError from context.abort, UsageError...):
# the call's answer is already decided, no handler's unhandled exception
_GRPC_ERRORS = grpc.aio.BaseError


def _answerable(exc: BaseException) -> TypeGuard[Exception]:
    """Whether ``exc``, ending a call, is one an :data:`Unhandled` answers: an
    ``Exception`` that is no gRPC status (not a cancellation, ``GeneratorExit``, nor
    ``context.abort``'s). Asked on the failure path only."""
    return isinstance(exc, Exception) and not isinstance(exc, _GRPC_ERRORS)


_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code_of(code: object) -> grpc.StatusCode | None:
    """``code`` (what a grpc.aio ``ServicerContext.code()`` returns) as a
    :class:`grpc.StatusCode`: itself, or the code an integer names (grpc.aio takes and
    sends ``set_code(5)`` and ``abort(5, ...)``, ``NOT_FOUND``, as grpc-go's codes are
    integers); ``None`` when no code is set or it is no gRPC status code."""
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int) and not isinstance(code, bool):
        return _CODES_BY_NUMBER.get(code)
    return None


def _set_not_ok(context: Any) -> bool:
    """Whether the handler set a code other than ``OK`` (``context.set_code``): then a
    unary response its serializer refuses, or one over the send limit, is no error,
    grpc.aio discards the response of such a call unserialized ("Discards the response
    message if the status code is non-OK") and the code set is the answer. Only asked
    when the serializer raised (or the response was too large)."""
    code = status_code_of(context.code())
    return code is not None and code is not grpc.StatusCode.OK


def _unsendable_trailers(context: Any) -> str | None:
    """The status details for a call whose handler set trailing metadata
    (``context.set_trailing_metadata``) that gRPC cannot send, naming the key (never the
    value), the metadata then cleared; ``None`` when it can be sent. Only asked when the
    handler set some: grpc.aio sends it with the status after the handler returned, when
    a ``str`` value under a ``-bin`` key makes the send raise (the call is left open
    until its deadline) and a value that is not printable ASCII makes grpc core refuse it
    (the caller gets ``INTERNAL``, while the handler's call looked ``OK``)."""
    try:
        check_metadata(context.trailing_metadata())
    except InvalidMetadataError as e:
        context.set_trailing_metadata(())
        return f"the handler's trailing {e.details()}"
    return None


def _unsendable_abort(context: Any, trailing_metadata: Any) -> str | None:
    """The status details for a synchronous handler's ``abort`` whose trailing metadata
    gRPC cannot send (``trailing_metadata``, else those set on ``context`` before, which
    grpc.aio's ``abort`` sends when given none), naming the key (never the value), the
    metadata set on ``context`` then cleared; ``None`` when it can be sent, or when it is
    no tuple of ``(str, str | bytes)`` pairs (grpc.aio's ``abort`` refuses that itself,
    ``TypeError``, before it marks the call answered: see :class:`AnswerNotSent`).
    Asked on ``abort`` only (a failure path)."""
    if not trailing_metadata:
        if not getattr(context, "trailing_metadata", _none_set)():
            return None
        return _unsendable_trailers(context)
    bad = _unsendable_pairs(trailing_metadata, "trailing")
    if bad is not None:
        with contextlib.suppress(Exception):  # (a stand-in context's)
            context.set_trailing_metadata(())
    return bad


def _unsendable_pairs(metadata: Any, which: str) -> str | None:
    """The status details for a synchronous handler's ``which`` (``"trailing"``,
    ``"initial"``) metadata that gRPC cannot send (see
    :func:`~meshkit._metadata.check_metadata`: ``grpc-timeout`` aborts the process),
    naming the key (never the value); ``None`` when it can be sent, or when it is no tuple
    (or list) of ``(str, str | bytes)`` tuples (grpc.aio refuses that itself,
    ``TypeError``, before sending anything: see :class:`AnswerNotSent`)."""
    if type(metadata) is not tuple and type(metadata) is not list:
        return None
    try:
        for pair in metadata:  # grpc.aio's own shape check, which it raises for
            if (not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str)
                    or not isinstance(pair[1], str | bytes)):
                return None
        check_metadata(metadata)
    except InvalidMetadataError as e:
        return f"the handler's {which} {e.details()}"
    except Exception:
        return None
    return None


def _none_set() -> tuple[()]:
    """The trailing metadata of a context that has none to show (a stand-in for grpc.aio's
    in tests and benchmarks): none set."""
    return ()


def _drop_unsendable_trailers(context: Any) -> None:
    """Clear trailing metadata gRPC cannot send (see :func:`_unsendable_trailers`) that a
    handler set before it raised: the answer to its exception, meshkit's or grpc.aio's,
    goes out with it, and could not be sent either (the call would be left open)."""
    if getattr(context, "trailing_metadata", _none_set)():
        _unsendable_trailers(context)


class AnswerNotSent(Exception):
    """Raised by a handler wrap in place of an exception it answered (its status set on
    the context) when the answer cannot be sent because the handler's own
    ``context.abort()`` marked the call aborted but sent nothing: grpc.aio's ``abort``
    does so when it then refuses its arguments (trailing metadata that is no tuple of
    ``(str, str | bytes)`` pairs: ``TypeError``), and a second ``abort`` is refused
    (``UsageError``), as is a normal end (the call was left open until its deadline).
    grpc.aio answers it as any exception: the code set (``UNKNOWN``) and the details
    ``"Unexpected <class 'meshkit._handlers.AnswerNotSent'>: <the details set>"``,
    which name the handler's exception type only."""


class MessageNotSent(Exception):
    """What a handler wrap reports (to its :class:`Reporter`) in place of the
    ``GeneratorExit`` that closes its response stream after grpc.aio answered the call
    itself: grpc.aio could not send a message the wrap yielded (the method's response
    serializer raised, or the message was no ``bytes``: "Expected bytes, got int") and
    sent ``UNKNOWN`` (the code the handler set, if not ``OK``) with that exception's
    text, outside the wrap. Without it telemetry counted such a call ``CANCELLED``."""


_MESSAGE_NOT_SENT = ("grpc.aio could not send a message of the stream (its serializer "
                     "raised, or it was no bytes) and answered the call itself")


class ResponseSerializerError(Exception):
    """What a response stream's serializer raises to grpc.aio in place of its own
    exception (the ``__cause__``), on a server that hides exception texts (the default
    :class:`~meshkit._unhandled.UnhandledErrorInterceptor`): grpc.aio serializes a
    yielded message as it sends it and answers the serializer's exception ``UNKNOWN``
    "Unexpected <class 'X'>: <its text>", a text that may quote the field refused (a
    password); this one names the type only ("ValueError in the response serializer
    (logged by the server)"), the exception logged by meshkit. A message written
    with ``context.write`` raises it into the handler, answered as the handler's
    exception (as the serializer's own, :func:`meshkit._unhandled.unhandled_details`)."""


def _serializer_error(exc: Exception) -> ResponseSerializerError:
    """The :class:`ResponseSerializerError` of a serializer's exception ``exc``, which is
    logged here at ``error`` (``response serializer failed``, its type and traceback,
    under the call's span): grpc.aio logs its answer on ``grpc._cython.cygrpc``, to
    which grpc adds a ``NullHandler``, so without a handler of the application's it went
    nowhere."""
    _log.error("response serializer failed", error_type=type(exc).__name__, exc_info=exc)
    error = ResponseSerializerError(
        f"{type(exc).__name__} in the response serializer (logged by the server)")
    error.__cause__ = exc
    return error


def _hiding(ser: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``ser`` raising :class:`ResponseSerializerError` for its exception: for a response
    stream's serializer when no :func:`_counting_sent` wraps it (that one catches in its
    own frame). One call more per message (a server without telemetry only)."""
    def serialize(message: Any) -> bytes:
        try:
            return ser(message)
        except Exception as exc:
            raise _serializer_error(exc) from exc

    return serialize


def _reported_as(exc: BaseException, context: Any) -> BaseException:
    """``exc`` as the wrap of a response stream reports it: a :class:`MessageNotSent`
    for a ``GeneratorExit`` closing the stream once grpc.aio has sent a status
    (``context.done()``: a cancelled call's is never sent), else ``exc``. Asked on the
    failure path only."""
    if type(exc) is GeneratorExit:
        with contextlib.suppress(Exception):  # (a stand-in context's)
            if context.done() is True:
                return MessageNotSent(_MESSAGE_NOT_SENT)
    return exc


async def _abort_with_status_set(context: Any) -> None:
    """End a call whose exception :data:`Unhandled` answered (its status set on
    ``context``) by aborting with that status: grpc.aio sends it alone
    (Trailers-Only) on a unary-response call, as it answers an exception, where a handler
    that returns gets an empty message sent before its status; after the messages sent
    on a stream. Called after the wrap's ``except`` block, so the ``AbortError`` (kept by
    grpc) chains no exception. When the call was aborted already (the handler aborted,
    then raised something else) or is over, grpc.aio ends it as it stands: the wrap
    returns; when the handler's abort sent nothing (it raised), :class:`AnswerNotSent`."""
    try:
        await context.abort(context.code(), context.details())
    except grpc.aio.AbortError:
        raise
    except grpc.aio.UsageError:  # aborted before: its status sent, unless that abort raised
        if context.done():
            return
    except Exception:  # the call is over
        return
    raise AnswerNotSent(context.details())


def _serialize_encoded(ser: Callable[[Any], bytes], message: str) -> bytes:
    """``ser(message)`` for a ``str`` unary response that ``ser`` (the method's response
    serializer, called in the wrap) refused as it was: grpc.aio UTF-8 encodes a ``str``
    before calling the serializer, so one of bytes answers it there (``b"<" + data``,
    ``zlib.compress``). Asked only once the serializer raised, so that a call whose
    response serializes pays no check; an exception of this second try is the one
    raised (grpc.aio's own), without the first's chained to it. A serializer taking a
    ``str`` as it is still gets it (grpc.aio would hand it the bytes)."""
    try:
        return ser(message.encode())
    except Exception as exc:
        raise exc from None


async def _answered(exc: BaseException, context: Any, unhandled: Unhandled | None) -> bool:
    """Whether ``unhandled`` answered ``exc``, which the handler or a check raised in a
    wrap without a reporter (:func:`_checked`, :func:`_checked_stream`), its status set
    on ``context`` (the trailers grpc.aio could not send dropped first); the wrap then
    sends that status. ``False`` (the wrap raises ``exc`` on as it is) without an
    ``unhandled``, for grpc.aio's own errors, a cancellation or ``GeneratorExit`` that
    is not the handler's own (:func:`_escaped`) and any other ``BaseException`` that is
    no ``Exception``; a cancellation or ``GeneratorExit`` of the handler's own that is
    not answered raises its :func:`_escaped` stand-in from it. The failure path only."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the call's, or escaped
        escaped = _escaped(exc)
        if escaped is None:
            return False
        _drop_unsendable_trailers(context)
        if unhandled is None or not await unhandled(escaped, context):
            raise escaped from exc
        return True
    if not isinstance(exc, Exception) or isinstance(exc, _GRPC_ERRORS):
        return False
    _drop_unsendable_trailers(context)
    return unhandled is not None and await unhandled(exc, context)


def _checked(inner: Any, before: Before, unhandled: Unhandled | None,
             empty: Unhandled | None, ser: Callable[[Any], bytes] | None,
             guard: tuple[Any, str] | None = None) -> Any:
    inner, undecodable, message = _unguarded(inner, guard)
    awaits = inspect.iscoroutinefunction(inner)  # known per method: no check per call

    # (a try costs nothing until something raises; see _reported for the except clause)
    async def behavior(request: Any, context: Any) -> Any:
        try:
            pending = before(context)
            if pending is not None:
                await pending
            if request is undecodable:  # the request guard's check, after the others
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            result = inner(request, context)
            if awaits or inspect.isawaitable(result):
                result = await result
            if getattr(context, "trailing_metadata", _none_set)():  # rare: some set
                bad = _unsendable_trailers(context)
                if bad is not None:
                    await context.abort(grpc.StatusCode.INTERNAL, bad)
            if result is None and empty is not None:
                await empty(NoResponse(), context)  # aborts, unless a status was set
                return None
            if ser is None:
                return result
            try:
                return ser(result)
            except ResponseTooLarge as too_large:  # grpc core's answer, here
                if _set_not_ok(context):  # discarded unserialized, as below
                    return b""
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(too_large))
            except Exception:
                if _set_not_ok(context):  # grpc.aio discards such a response unserialized
                    return b""
                if type(result) is not str:
                    raise
                return _serialize_encoded(ser, result)  # see there
        except BaseException as e:  # answered, else raised on: see _answered
            if not await _answered(e, context, unhandled):
                raise
        # answered, its status set: sent alone, out of the except block (see Unhandled);
        # grpc keeps the AbortError, whose traceback holds this frame: not the request
        request = result = None
        await _abort_with_status_set(context)
        return None

    return _GrpcAsync(behavior)  # grpc.aio's "is it async?" per call, cheaper (see there)


def _checked_stream(inner: Any, before: Before, unhandled: Unhandled | None,
                    guard: tuple[Any, str] | None = None,
                    ser: Callable[[Any], bytes] | None = None,
                    empty: Unhandled | None = None) -> Any:
    inner, undecodable, message = _unguarded(inner, guard)  # a unary-stream guard, run here
    inner, refused, refused_message = _stream_unguarded(inner)  # a stream-stream one
    if ser is not None:  # a send limit: see wrap_handler
        inner = _serializing(inner, ser)

    async def behavior(request: Any, context: Any) -> Any:
        try:
            pending = before(context)
            if pending is not None:
                await pending
            if request is undecodable:  # the request guard's check (see _checked)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            try:
                result = inner(request, context)
                async for item in responses(result):
                    if item is None and empty is not None:  # no message: answered
                        await empty(NoResponse(streaming=True), context)
                        continue  # a status was set: nothing to send
                    yield item
            except refused:  # the stream-stream request guard's answer, run here
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused_message)
            if getattr(context, "trailing_metadata", _none_set)():  # see _checked
                bad = _unsendable_trailers(context)
                if bad is not None:
                    await context.abort(grpc.StatusCode.INTERNAL, bad)
        except BaseException as e:  # (see _checked)
            if not await _answered(e, context, unhandled):
                raise
        else:
            return
        # answered, its status set: sent out of the except block (see _checked)
        request = result = item = None
        await _abort_with_status_set(context)

    return behavior


def _reported(inner: Any, before: Before, reporter: Reporter,
              unhandled: Unhandled | None, empty: Unhandled | None,
              ser: Callable[[Any], bytes] | None,
              guard: tuple[Any, str] | None = None, gate: Gate | None = None) -> Any:
    start, finish = reporter.start, reporter.finish
    the_inner = inner
    inner, undecodable, message = _unguarded(inner, guard)
    awaits = inspect.iscoroutinefunction(inner)
    gated = gate is not None
    first, release, abandon = gate if gate is not None else _NO_GATE

    # finish() gets the exception in the except clause, whose name Python unbinds on leaving
    # it: a local holding it would make a cycle exception -> traceback -> this frame ->
    # exception that the GC frees late, keeping the request alive (issue 12 item 6). The
    # same frame serves _reported_stream (an async generator, so not shareable without a
    # call per RPC). An exception unhandled answers is answered first, finish() after:
    # the code it decides (UNKNOWN, the code set, DEADLINE_EXCEEDED for the call's own
    # deadline...) is on the context when the reporter reads it, and its log line is
    # written under the call's span (the reporter's finish detaches it).
    # With a ``gate`` (see GATE_MARK) this frame is the request gate's wrap too: grpc.aio
    # calls it as a stream-unary behaviour (``request`` is its request iterator until
    # the gate's read replaces it), one coroutine frame fewer per call; without one
    # (``gated`` is fixed per method) a call pays three checks of it.
    async def behavior(request: Any, context: Any) -> Any:
        size = -1  # the gate's: the request's bytes in flight once it admitted it
        try:
            if gated:  # (shed, or refused, before anything ran: nothing reported)
                request, size = await first(context)
            state = start(context)
            try:
                pending = before(context)
                if pending is not None:
                    await pending
                if request is undecodable:  # the request guard's check (see _checked)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                result = inner(request, context)
                if awaits or inspect.isawaitable(result):
                    result = await result
                if getattr(context, "trailing_metadata", _none_set)():  # see _checked
                    bad = _unsendable_trailers(context)
                    if bad is not None:
                        await context.abort(grpc.StatusCode.INTERNAL, bad)
                if result is None and empty is not None:
                    await empty(NoResponse(), context)  # aborts, unless a status was set
                elif ser is not None:
                    try:
                        result = ser(result)
                    except ResponseTooLarge as too_large:  # grpc core's answer, counted so
                        if not _set_not_ok(context):  # else discarded unserialized (_checked)
                            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                str(too_large))
                        result = b""
                    except Exception:
                        if _set_not_ok(context):  # discarded unserialized (see _checked)
                            result = b""
                        elif type(result) is str:
                            result = _serialize_encoded(ser, result)
                        else:
                            raise
            except (asyncio.CancelledError, GeneratorExit) as c:  # the call's, or escaped: _escaped
                escaped = _escaped(c)
                if escaped is None:
                    finish(state, context, c)
                    raise
                try:  # answered (or left to grpc.aio) as any exception: see below
                    _drop_unsendable_trailers(context)
                    answered = unhandled is not None and await unhandled(escaped, context)
                finally:
                    finish(state, context, escaped)
                if not answered:
                    raise escaped from c
                escaped = None
            except BaseException as e:
                if unhandled is None or not _answerable(e):
                    finish(state, context, e)
                    if _answerable(e):  # grpc.aio's answer goes out with the trailers
                        _drop_unsendable_trailers(context)
                    raise
                try:  # answered before it is reported: the code sent is the code reported
                    _drop_unsendable_trailers(context)
                    answered = await unhandled(e, context)
                finally:
                    finish(state, context, e)
                if not answered:
                    raise
            else:
                finish(state, context, None)
                if gated:
                    request = None
                    release(size)
                return result
            # answered, its status set: sent alone, out of the except block (see
            # Unhandled); grpc keeps the AbortError, whose traceback holds this frame: not
            # the request
            request = result = state = None
            await _abort_with_status_set(context)
        except BaseException:
            if not gated:
                raise
            request = result = None  # (see the gate's own wrap, RequestGate._convert)
            abandon(context, size)
            raise
        if gated:
            release(size)
        return None

    wrap = _GrpcAsync(behavior)  # grpc.aio's "is it async?" per call, cheaper (see there)
    if not gated:  # the request gate may fuse its wrap into this one's frame
        setattr(wrap, GATE_MARK, functools.partial(
            _reported, the_inner, before, reporter, unhandled, empty, ser, guard))
    return wrap


def _counting_received(des: Callable[[bytes], Any] | None, messages: Any) -> Any:
    """The request deserializer of a request-streaming method: ``des`` (``None``: the
    bytes as they are) counting in ``messages.msg_received`` each message it decodes,
    the request iterator's and ``context.read()``'s alike (grpc.aio decodes a message
    when the handler takes it). A message that does not decode is not counted."""
    if des is None:
        def received(data: bytes) -> bytes:
            messages.msg_received += 1
            return data

        return received

    def decode(data: bytes) -> Any:
        message = des(data)
        messages.msg_received += 1
        return message

    return decode


def _counting_sent(ser: Callable[[Any], bytes] | None, messages: Any,
                   limit: int | None = None, hide: bool = False) -> Any:
    """The response serializer grpc.aio gets for a response-streaming method: ``ser``
    (``None``: bytes as they are) counting in ``messages.msg_sent`` each message it
    serializes, yielded or written with ``context.write()`` (grpc.aio serializes a
    message as it sends it). A message that does not serialize is not counted, nor,
    with ``limit`` (the server's ``grpc.max_send_message_length`` in bytes), one over
    it: grpc core refuses it (the call ends ``RESOURCE_EXHAUSTED``), so it was not sent
    (a yielded one the wrap refuses before; one written with ``context.write`` gets
    here: the length is checked only with a limit). With ``hide``, an exception of
    ``ser`` is raised as :class:`ResponseSerializerError` (in this frame: nothing more
    per message)."""
    if limit is not None:
        def encode_limited(message: Any) -> Any:
            try:
                data = message if ser is None else ser(message)
            except Exception as exc:
                if not hide:
                    raise
                raise _serializer_error(exc) from exc
            try:
                over = len(data) > limit
            except TypeError:  # not bytes (a None): left to grpc.aio, counted as before
                over = False
            if not over:
                messages.msg_sent += 1
            return data

        return encode_limited

    if ser is None:
        def sent(message: Any) -> Any:
            messages.msg_sent += 1
            return message

        return sent

    def encode(message: Any) -> bytes:
        try:
            data = ser(message)
        except Exception as exc:
            if not hide:
                raise
            raise _serializer_error(exc) from exc
        messages.msg_sent += 1
        return data

    return encode


def _reported_stream(inner: Any, before: Before, reporter: Reporter,
                     unhandled: Unhandled | None,
                     guard: tuple[Any, str] | None = None,
                     ser: Callable[[Any], bytes] | None = None,
                     empty: Unhandled | None = None) -> Any:
    start, finish = reporter.start, reporter.finish
    inner, undecodable, message = _unguarded(inner, guard)  # a unary-stream guard, run here
    inner, refused, refused_message = _stream_unguarded(inner)  # a stream-stream one
    if ser is not None:  # a send limit: see wrap_handler
        inner = _serializing(inner, ser)

    # the frame of _reported's behaviour (see there)
    async def behavior(request: Any, context: Any) -> Any:
        state = start(context)
        try:
            pending = before(context)
            if pending is not None:
                await pending
            if request is undecodable:  # the request guard's check (see _checked)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            try:
                result = inner(request, context)
                async for item in responses(result):
                    if item is None and empty is not None:  # see _checked_stream
                        await empty(NoResponse(streaming=True), context)
                        continue
                    yield item
            except refused:  # see _checked_stream
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused_message)
            if getattr(context, "trailing_metadata", _none_set)():  # see _checked
                bad = _unsendable_trailers(context)
                if bad is not None:
                    await context.abort(grpc.StatusCode.INTERNAL, bad)
        except (asyncio.CancelledError, GeneratorExit) as c:  # (see _reported)
            escaped = _escaped(c)
            if escaped is None:
                finish(state, context, _reported_as(c, context))
                raise
            try:
                _drop_unsendable_trailers(context)
                answered = unhandled is not None and await unhandled(escaped, context)
            finally:
                finish(state, context, escaped)
            if not answered:
                raise escaped from c
            escaped = None
        except BaseException as e:
            if unhandled is None or not _answerable(e):
                finish(state, context, _reported_as(e, context))
                if _answerable(e):  # grpc.aio's answer goes out with the trailers
                    _drop_unsendable_trailers(context)
                raise
            try:  # answered before it is reported (see _reported)
                _drop_unsendable_trailers(context)
                answered = await unhandled(e, context)
            finally:
                finish(state, context, e)
            if not answered:
                raise
        else:
            finish(state, context, None)
            return
        # answered, its status set: sent out of the except block (see _checked)
        request = result = item = state = None
        await _abort_with_status_set(context)

    return behavior


def _answering(exc: Exception, unhandled: Unhandled | None) -> Handler:
    """A handler that answers ``exc`` (raised where the method's handler was being looked
    up) through ``unhandled``, or as grpc.aio answers it (``UNKNOWN`` with its text, what
    grpc.aio also answers when an interceptor raises) without one: stream-stream, which
    starts without reading a request, so it answers calls of every kind."""

    async def behavior(requests: Any, context: Any) -> None:
        if unhandled is not None and await unhandled(exc, context):
            return  # answered: its status set (see Unhandled)
        raise exc  # grpc.aio's answer

    handler: Handler = grpc.stream_stream_rpc_method_handler(behavior)
    return handler


NOT_FOUND_DETAILS = "Method not found!"
"""The details grpc.aio sends with ``UNIMPLEMENTED`` for a call of a method no handler
serves (``_handle_rpc`` in grpc's ``_cython/_cygrpc/aio/server.pyx.pxi``; grpc core's and
grpc's synchronous server send the same): meshkit's answer to such a call says the same,
and echoes nothing of the caller's."""

_UNKNOWN_MARK = "_meshkit_unknown_method"


async def _not_found(requests: Any, context: Any) -> None:
    """grpc.aio's answer to a call of a method no handler serves: ``UNIMPLEMENTED``
    :data:`NOT_FOUND_DETAILS`, the status alone (no message read or sent: Trailers-Only)."""
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details(NOT_FOUND_DETAILS)


_NOT_FOUND: Handler = grpc.stream_stream_rpc_method_handler(_not_found)


def unknown_method_answer(reporter: Reporter | None) -> Handler | None:
    """A handler answering a call of a method no handler serves as grpc.aio answers it
    (``UNIMPLEMENTED`` :data:`NOT_FOUND_DETAILS`, reading none of its messages:
    stream-stream, so it answers calls of every kind) observed by ``reporter``, so that
    telemetry records such a call (gRFC A66: ``grpc.method="other"``); ``None`` without a
    reporter (grpc.aio answers the call itself, as it does). Made per call: nothing is
    kept per method name, which is the caller's choice."""
    if reporter is None:
        return None
    wrapped = wrap_handler(_NOT_FOUND, None, reporter, None)
    setattr(wrapped.stream_stream, _UNKNOWN_MARK, True)
    return wrapped


def answers_unknown(handler: Handler) -> bool:
    """Whether ``handler`` is an :func:`unknown_method_answer` (an inner interceptor's)."""
    return getattr(handler.stream_stream, _UNKNOWN_MARK, False) is True


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Base of interceptors that wrap each method's handler with a check
    (``self._before_for(method)``) and/or an observer (``self._reporter_for(method)``);
    with neither, the method is left alone. The wrapped handler is cached per method."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, Handler]] = {}
        # a conversion applied outside the wrap (the request gate, folded in: see
        # fold_outermost), or None
        self._convert: Callable[[str, Handler], Handler] | None = None
        # the server's grpc.max_send_message_length (serve() sets it), checked where a
        # unary response is serialized in the wrap; None: no limit
        self.max_send_bytes: int | None = None

    def method_patterns(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The method patterns (:mod:`meshkit._methods`) this interceptor's settings use,
        as ``(setting, patterns)`` pairs (default none): what
        :class:`meshkit.MeshServer` checks against the methods it serves when it
        starts (:func:`meshkit._methods.check_served`)."""
        return ()

    def check_methods(self, methods: Collection[str]) -> None:
        """Check this interceptor's settings against ``methods``, the full names of the
        methods a :class:`meshkit.MeshServer` serves, when it starts (default: nothing).

        Raises:
            ConfigError: a setting that is wrong for one of them (the subclass says)."""

    def _before_for(self, method: str) -> Before | None:
        """The check of ``method`` (``None``: nothing to check)."""
        return None

    def _before_for_handler(self, method: str, handler: Handler) -> Before | None:
        """The check of ``method`` whose handler is ``handler``, what :meth:`resolve`
        wraps it with: :meth:`_before_for` unless a subclass needs the handler (per
        method: :class:`meshkit._limits.CallSlots`' check of a method whose handler runs
        in a thread, see :func:`runs_in_a_thread`)."""
        return self._before_for(method)

    def _reporter_for(self, method: str, handler: Handler) -> Reporter | None:
        """The observer of ``method``'s calls, whose ``handler`` is given (``None``: none)."""
        return None

    def _unhandled_for(self, method: str) -> Unhandled | None:
        """What answers ``method``'s unhandled exceptions (``None``: grpc.aio, as it does)."""
        return None

    def _unknown_reporter(self, method: str) -> Reporter | None:
        """The observer of a call of ``method`` that no handler serves (``None``: none);
        asked per such call."""
        return None

    def unknown(self, method: str) -> Handler | None:
        """The handler of a call of full method name ``method`` that no handler serves:
        :func:`unknown_method_answer` observed by this interceptor's reporter for unknown
        methods, or ``None`` when it has none (grpc.aio then answers ``UNIMPLEMENTED``
        itself). No check runs for such a call (authentication, rate limit, call slots):
        it is answered ``UNIMPLEMENTED`` whoever calls, as grpc.aio answers it and as
        grpc-go answers a method it cannot route before its interceptors run."""
        return unknown_method_answer(self._unknown_reporter(method))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """Return the next handler wrapped with this interceptor's check. When the
        interceptors after this one raise instead (grpc.aio runs them per call), a handler
        that answers the exception as this interceptor answers a handler's
        (:meth:`_unhandled_for`; without one, ``UNKNOWN`` with its text, as grpc.aio
        answers an interceptor's exception), observed by this interceptor's reporter
        (telemetry counts, traces and logs the call like a handler's failure). With
        neither, or for a gRPC status (``grpc.aio.BaseError``), the exception goes on to
        grpc.aio. When no handler serves the method, :meth:`unknown`'s handler (``None``,
        as before, when nothing observes it)."""
        try:
            handler = await continuation(handler_call_details)
        except Exception as e:
            if isinstance(e, _GRPC_ERRORS):
                raise
            return self._answer(handler_call_details.method, e)
        if handler is None:
            return self.unknown(handler_call_details.method)
        return self.resolve(handler_call_details.method, handler)

    def _answer(self, method: str, exc: Exception) -> Handler:
        """The handler answering ``exc`` for ``method`` (see :meth:`intercept_service`),
        wrapped with the method's reporter: labelled with the method's kind when a call of
        it was resolved before, else with the answering handler's (a bidirectional
        stream: the kind is on the handler that could not be looked up).

        Raises:
            Exception: ``exc``, when there is neither an answer nor a reporter.
        """
        unhandled = self._unhandled_for(method)
        answering = _answering(exc, unhandled)
        cached = self._handlers.get(method)
        reporter = self._reporter_for(method, answering if cached is None else cached[0])
        if unhandled is None and reporter is None:
            raise exc
        return wrap_handler(answering, None, reporter, None)

    def resolve(self, method: str, handler: Handler | None) -> Handler | None:
        """``handler`` of full method name ``method`` wrapped with this interceptor's check
        and reporter (and its conversion, if one was folded in); cached per method, so a
        call whose handler was seen before costs one dict lookup. ``None`` stays ``None``
        (an unknown method: grpc answers ``UNIMPLEMENTED``, or :meth:`unknown`'s handler
        does, see :meth:`intercept_service`). An inner interceptor's answer to an unknown
        method (:func:`unknown_method_answer`) gets this interceptor's reporter for
        unknown methods only, and is not cached (the method name is the caller's)."""
        if handler is None:
            return None
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if answers_unknown(handler):
            reporter = self._unknown_reporter(method)
            if reporter is None:
                return handler
            wrapped = wrap_handler(handler, None, reporter, None)
            setattr(wrapped.stream_stream, _UNKNOWN_MARK, True)
            return wrapped
        wrapped = wrap_handler(handler, self._before_for_handler(method, handler),
                               self._reporter_for(method, handler),
                               self._unhandled_for(method),
                               max_send_bytes=self.max_send_bytes)
        if self._convert is not None:
            wrapped = self._convert(method, wrapped)
        if len(self._handlers) < MAX_CACHED_METHODS:
            self._handlers[method] = (handler, wrapped)
        return wrapped


class FusedInterceptor(WrappingInterceptor):
    """Several :class:`WrappingInterceptor` s run as one: one ``intercept_service`` and one
    handler wrap per call instead of one each, with the parts' ``before`` checks awaited in
    order (the first part's first, as when they were chained; the first one to abort ends
    the call) and their reporters (telemetry) observing the whole call, refusals included.

    grpc.aio awaits every server interceptor's ``intercept_service`` on every call, even
    when it returns a cached handler, and each wrap adds a coroutine frame around the
    handler; a mesh server's deadline, identity, JWT, authorization and rate-limit checks
    fused here cost one of each.

    Args:
        parts: the interceptors, outermost first (at least one).
    """

    def __init__(self, parts: Sequence[WrappingInterceptor], *,
                 convert: Callable[[str, Handler], Handler] | None = None) -> None:
        super().__init__()
        if not parts:
            raise ValueError("FusedInterceptor needs at least one part")
        self.parts = tuple(parts)
        self._convert = convert

    def _before_for(self, method: str) -> Before | None:
        return _in_order([p._before_for(method) for p in self.parts])

    def _before_for_handler(self, method: str, handler: Handler) -> Before | None:
        return _in_order([p._before_for_handler(method, handler) for p in self.parts])

    def _reporter_for(self, method: str, handler: Handler) -> Reporter | None:
        reporters = [r for r in (p._reporter_for(method, handler) for p in self.parts)
                     if r is not None]
        if not reporters:
            return None
        return reporters[0] if len(reporters) == 1 else _Reporters(tuple(reporters))

    def _unhandled_for(self, method: str) -> Unhandled | None:
        return next((u for u in (p._unhandled_for(method) for p in self.parts)
                     if u is not None), None)

    def _unknown_reporter(self, method: str) -> Reporter | None:
        return _joined([p._unknown_reporter(method) for p in self.parts])


def _joined(parts: list[Reporter | None]) -> Reporter | None:
    """The reporters among ``parts`` (outermost first) as one, or ``None``."""
    reporters = [r for r in parts if r is not None]
    if not reporters:
        return None
    return reporters[0] if len(reporters) == 1 else _Reporters(tuple(reporters))


class _UnknownMethods(grpc.GenericRpcHandler):
    """The last generic handler of a server whose chain is resolved where handlers are
    looked up: answers every call no earlier handler served with
    :func:`unknown_method_answer` observed by the chain's reporters for unknown methods."""

    __slots__ = ("_parts",)

    def __init__(self, parts: tuple[WrappingInterceptor, ...]) -> None:
        self._parts = parts

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The answer to a call of a method no other handler serves (``None``: nothing
        observes it, grpc answers ``UNIMPLEMENTED`` itself)."""
        method = handler_call_details.method
        return unknown_method_answer(_joined([p._unknown_reporter(method)
                                              for p in self._parts]))


def unknown_methods_handler(
    chain: Sequence[grpc.aio.ServerInterceptor],
) -> grpc.GenericRpcHandler | None:
    """For a server that applies ``chain`` (outermost first) where its handlers are looked
    up (:func:`handler_resolver`) and gives grpc.aio no interceptor: a generic handler to
    add after all the others, which answers a call of a method none serves as grpc.aio
    does (``UNIMPLEMENTED`` :data:`NOT_FOUND_DETAILS`) and lets the chain's telemetry
    record it (gRFC A66, see :meth:`WrappingInterceptor.unknown`); ``None`` when no
    interceptor of ``chain`` observes such calls (nothing to add). Costs the calls of
    the methods served nothing: grpc asks it only when every other handler said
    ``None``."""
    parts: list[WrappingInterceptor] = []
    for icpt in chain:
        for part in (icpt.parts if isinstance(icpt, FusedInterceptor) else (icpt,)):
            if (isinstance(part, WrappingInterceptor)
                    and type(part)._unknown_reporter
                    is not WrappingInterceptor._unknown_reporter):
                parts.append(part)
    return _UnknownMethods(tuple(parts)) if parts else None


def _in_order(parts: list[Before | None]) -> Before | None:
    """The checks ``parts`` (``None``: a part without one) as one check, awaited in order
    (see :class:`FusedInterceptor`); ``None`` when there is none."""
    befores = [b for b in parts if b is not None]
    if not befores:
        return None
    if len(befores) == 1:
        return befores[0]
    checks = tuple(befores)
    # two or three checks (the common stacks) without a loop per call
    if len(checks) == 2:  # e.g. authentication and rate limiting
        first, second = checks
        after_first = (second,)

        def before_two(context: Any) -> Awaitable[None] | None:
            pending = first(context)
            if pending is not None:
                return _then(pending, after_first, context)
            return second(context)

        return before_two
    if len(checks) == 3:  # e.g. the deadline's admission, authentication, rate limiting
        first, second, third = checks
        after_1st: tuple[Before, ...] = (second, third)
        after_2nd: tuple[Before, ...] = (third,)

        def before_three(context: Any) -> Awaitable[None] | None:
            pending = first(context)
            if pending is not None:
                return _then(pending, after_1st, context)
            pending = second(context)
            if pending is not None:
                return _then(pending, after_2nd, context)
            return third(context)

        return before_three
    # the checks after each one, for when it needs awaiting (the rest then run in order)
    rests = tuple(checks[i + 1:] for i in range(len(checks)))

    def before(context: Any) -> Awaitable[None] | None:
        for i, check in enumerate(checks):
            pending = check(context)
            if pending is not None:
                rest = rests[i]
                return _then(pending, rest, context) if rest else pending
        return None

    return before


async def _then(pending: Awaitable[None], checks: tuple[Before, ...], context: Any) -> None:
    """Await ``pending`` (a check's awaitable), then run the remaining ``checks`` in order."""
    await pending
    for check in checks:
        more = check(context)
        if more is not None:
            await more


class _Reporters:
    """Several reporters as one: started in order, finished in reverse order; messages are
    counted by the first part that counts them."""

    __slots__ = ("_parts", "messages")

    def __init__(self, parts: tuple[Reporter, ...]) -> None:
        self._parts = parts
        self.messages = next((m for m in (getattr(r, "messages", None) for r in parts)
                              if m is not None), None)

    def start(self, context: Any) -> Any:
        return [r.start(context) for r in self._parts]

    def finish(self, state: Any, context: Any, exc: BaseException | None) -> None:
        for r, st in zip(reversed(self._parts), reversed(state), strict=True):
            r.finish(st, context, exc)


def _fusable(interceptor: object) -> bool:
    return (isinstance(interceptor, WrappingInterceptor)
            and type(interceptor).intercept_service is WrappingInterceptor.intercept_service)


def fuse_interceptors(
    interceptors: Sequence[grpc.aio.ServerInterceptor],
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """``interceptors`` with every run of two or more adjacent :class:`WrappingInterceptor` s
    replaced by one :class:`FusedInterceptor` (order kept; others left as they are)."""
    out: list[grpc.aio.ServerInterceptor] = []
    run: list[WrappingInterceptor] = []

    def close_run() -> None:
        if len(run) > 1:
            out.append(FusedInterceptor(run))
        else:
            out.extend(run)
        run.clear()

    for icpt in interceptors:
        if _fusable(icpt):
            assert isinstance(icpt, WrappingInterceptor)
            run.append(icpt)
        else:
            close_run()
            out.append(icpt)
    close_run()
    return tuple(out)


def fold_outermost(
    chain: Sequence[grpc.aio.ServerInterceptor], outer: grpc.aio.ServerInterceptor,
    convert: Callable[[str, Handler], Handler],
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """``outer`` put in front of ``chain`` (a :func:`fuse_interceptors` result), where
    ``outer`` only converts the handler the rest of the chain returns, as
    ``convert(method, handler)`` does (the request gate:
    :meth:`meshkit._limits.RequestGate.convert_for`). When ``chain`` starts
    with wrapping interceptors the conversion is folded into them, applied to the wrapped
    handler and cached with it: grpc.aio then awaits one ``intercept_service`` per call
    instead of two, and the conversion still runs outermost (a call it ends is not seen by
    the wrap's reporters, as with ``outer`` in front)."""
    first = chain[0] if chain else None
    if first is None or not _fusable(first):
        return (outer, *chain)
    assert isinstance(first, WrappingInterceptor)
    parts = first.parts if isinstance(first, FusedInterceptor) else (first,)
    if first._convert is not None:  # already folded once: keep outer in front
        return (outer, *chain)
    return (FusedInterceptor(parts, convert=convert), *chain[1:])


class _OffLoopOutermost(grpc.aio.ServerInterceptor):
    """``outer``, the outermost interceptor of a chain grpc.aio runs per call, whose
    handler is passed through :func:`off_loop_handler` (cached per method: a call whose
    handler was seen before costs a dict lookup). See :func:`off_loop_outermost`."""

    __slots__ = ("_handlers", "_outer")

    def __init__(self, outer: grpc.aio.ServerInterceptor) -> None:
        self._outer = outer
        self._handlers: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        """``outer``'s handler for the call, a plain function in it run off the loop by
        meshkit (``None`` stays ``None``; what ``outer`` raises goes on to grpc.aio)."""
        handler = await self._outer.intercept_service(continuation, handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if answers_unknown(handler):  # made per call, async: nothing to cache
            return handler
        off_loop = off_loop_handler(handler)
        if len(self._handlers) < MAX_CACHED_METHODS:
            self._handlers[method] = (handler, off_loop)
        return off_loop

    def __repr__(self) -> str:
        return f"<off the loop: {self._outer!r}>"


def off_loop_outermost(
    chain: Sequence[grpc.aio.ServerInterceptor],
) -> tuple[grpc.aio.ServerInterceptor, ...]:
    """``chain``, interceptors grpc.aio runs per call (outermost first; a server's chain
    that :func:`handler_resolver` cannot resolve once per method), made to hand grpc.aio
    no plain-function handler: when its outermost interceptor is not one that resolves
    the handler it returns (a :class:`WrappingInterceptor` with the base
    ``intercept_service``, whose wrap runs a plain function off the loop, or the request
    gate), that one is wrapped so that its handler goes through
    :func:`off_loop_handler`. A handler the server looked up was made safe already
    (:func:`meshkit._limits.guard_method_handler`); a plain one that a user's
    interceptor returns of its own (a canned answer, a stand-in) reached grpc.aio,
    which ran it with its own synchronous context: asked ``peer()`` or
    ``auth_context()`` after the call ended, the server process crashed. Costs the
    calls of such a chain one coroutine and a dict lookup; a chain led by meshkit's
    wrap or gate, and one grpc.aio does not run per call, nothing. (The request gate
    gives the health service's ``Watch``, which it does not convert, no call slot, but
    passes it through :func:`off_loop_handler` too.)"""
    if not chain:
        return ()
    first = chain[0]
    if _fusable(first) or getattr(first, "resolves_per_method", False):
        return tuple(chain)
    return (_OffLoopOutermost(first), *chain[1:])


Resolver = Callable[[str, Handler], Handler]
"""``resolve(method, handler) -> handler``: what a server's interceptor chain makes of one
method's handler, applied once per method where the handler is looked up."""


def handler_resolver(chain: Sequence[grpc.aio.ServerInterceptor]) -> Resolver | None:
    """The whole of ``chain`` (outermost first) as one per-method :data:`Resolver`, when
    every interceptor in it only transforms the method's handler: a
    :class:`WrappingInterceptor` that keeps the base ``intercept_service`` (a
    :class:`FusedInterceptor` included) or anything else with a ``resolve(method, handler)``
    method that its ``intercept_service`` is defined by (the request gate). ``None`` when
    some interceptor does more (looks at metadata, picks another handler...): grpc.aio must
    then run the chain per call.

    A server whose chain resolves this way applies it where its handlers are looked up
    (:func:`meshkit._limits.guard_generic_handler`, registered methods at registration) and
    gives grpc.aio no interceptor: grpc.aio runs any server interceptor through a coroutine
    per interceptor per call even when it returns a cached handler (measured: a pass-through
    interceptor on each side of a call costs 13 % of raw grpc.aio's instructions per call,
    ``python -m benchmarks.instructions --variants raw,noop``). The order is what grpc.aio's
    would be: the first interceptor's wrap is the outermost."""
    steps: list[Callable[[str, Handler | None], Handler | None]] = []
    for icpt in chain:
        if isinstance(icpt, WrappingInterceptor):
            if not _fusable(icpt):
                return None
            steps.append(icpt.resolve)
        elif getattr(icpt, "resolves_per_method", False):
            steps.append(getattr(icpt, "resolve"))  # noqa: B009 - not on the base class
        else:
            return None
    if not steps:
        return None
    inner_first = tuple(reversed(steps))

    def resolve(method: str, handler: Handler) -> Handler:
        out: Handler | None = handler
        for step in inner_first:
            out = step(method, out)
        assert out is not None
        return out

    return resolve
