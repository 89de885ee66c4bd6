"""Unary-unary attempts run in the caller's task: grpc.aio's call, without its task per call.

grpc.aio's ``UnaryUnaryCall`` starts every call in a new ``asyncio.Task`` (its ``_invoke``),
which the caller then awaits: the request is sent from the event loop's next turn, and each
call pays a task's creation, scheduling and completion callbacks. A meshkit attempt is
always awaited at once by the coroutine that started it
(:meth:`meshkit.channel.MeshChannel._attempt_unary`), so the task buys nothing there.
:class:`InlineUnaryUnaryCall` is grpc.aio's own call object (its base class
``grpc.aio._call.Call``: cancel, done callbacks, metadata, code, details and the
``AioRpcError`` it raises are grpc's code) whose RPC runs when the attempt is first
awaited, in the awaiting task. Measured in one process (client and server, 32 callers, raw
grpc.aio against the same calls made this way): about 18 us less CPU per call (7 %); see
benchmarks/RESULTS.md.

This uses grpc.aio internals (``grpc.aio._call.Call``, ``cygrpc.AioChannel.call``, the
multicallable's private fields), checked at import; ``MESHKIT_INLINE_CALLS`` is read once,
at the first ``dial()`` (:func:`available`). Where the internals are missing or different,
and for a sub-channel with grpc.aio interceptors (e.g. the OpenTelemetry grpc
instrumentor's) or a call with compression, attempts take grpc.aio's public path
unchanged. ``MESHKIT_INLINE_CALLS=0`` (or ``false``, ``off``, ``no``) turns it
off (:func:`inline_calls_enabled`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Generator
from types import FunctionType
from typing import Any

import grpc

from meshkit.errors import ConfigError

__all__ = ["IDENTITY_REQUEST", "InlineUnaryUnary", "InlineUnaryUnaryCall",
           "UncompressedOnRequest", "available", "inline_calls_enabled", "inline_unary_unary"]

ENV_VAR = "MESHKIT_INLINE_CALLS"
#: the request header by which grpc core takes a call's compression over its channel's
#: default (``grpc.aio`` sends it for ``compression=Gzip``/``Deflate``): no compression
IDENTITY_REQUEST = ("grpc-internal-encoding-request", "identity")
# the words of Go's strconv.ParseBool plus yes/no, as meshkit.discovery's parse_bool
_ON = frozenset({"1", "t", "true", "y", "yes", "on"})
_OFF = frozenset({"0", "f", "false", "n", "no", "off"})


def inline_calls_enabled() -> bool:
    """Whether ``MESHKIT_INLINE_CALLS`` lets unary-unary attempts run inline: a boolean
    as Go's ``strconv.ParseBool`` reads one, plus yes/no (``1``/``0``, ``true``/``false``,
    ``on``/``off``, ``yes``/``no``, ``t``/``f``, ``y``/``n``), any case, surrounding
    blanks ignored; unset or empty: on (the default).

    Raises:
        ConfigError: a value that is none of those (the variable named, the value quoted).
    """
    raw = os.environ.get(ENV_VAR, "")
    value = raw.strip().lower()
    if not value or value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(f"{ENV_VAR} must be a boolean (1/0, true/false, on/off, yes/no), "
                      f"got {raw!r}")


#: what grpc.aio's ``Call.__init__`` sets, and all it does (its ``__code__.co_names``):
#: InlineUnaryUnary.__call__ writes it out (no frame per call)
_CALL_INIT_NAMES = ("_loop", "_cython_call", "tuple", "_metadata", "_request_serializer",
                    "_response_deserializer")


def _plain_init(base: Any) -> bool:
    """Whether grpc.aio's ``Call`` (``base``) is made as :meth:`InlineUnaryUnary.__call__`
    makes it without its ``__init__``: an ``__init__`` of (cython_call, metadata,
    request_serializer, response_deserializer, loop) that only stores them (the metadata
    as a tuple), and ``object.__new__``. The ``__init__`` must be a plain function: a
    proxy that wraps it (``wrapt.FunctionWrapper``, as instrumentation patches
    functions) forwards ``__code__`` from the function it wraps, and written out the
    wrapper would never run."""
    init = getattr(base, "__init__", None)
    code = getattr(init, "__code__", None)
    return (type(init) is FunctionType and code is not None
            and code.co_names == _CALL_INIT_NAMES
            and code.co_varnames[:6] == ("self", "cython_call", "metadata",
                                         "request_serializer", "response_deserializer",
                                         "loop")
            and base.__new__ is object.__new__)


def _internals() -> tuple[Any, Any, Any, Any] | None:
    """grpc.aio's ``Call`` base, ``UnaryUnaryMultiCallable``, ``serialize`` /
    ``deserialize`` and ``build_census_context``, when this grpcio has them as expected."""
    try:
        from grpc import _common
        from grpc._cython import cygrpc
        from grpc.aio import _call, _channel
    except ImportError:  # pragma: no cover - another grpcio layout
        return None
    base = getattr(_call, "Call", None)
    mc = getattr(_channel, "UnaryUnaryMultiCallable", None)
    census = getattr(cygrpc, "build_census_context", None)
    aio_call = getattr(cygrpc, "_AioCall", None)
    if (base is None or mc is None or census is None or aio_call is None
            or not hasattr(aio_call, "unary_unary") or not hasattr(base, "_raise_for_status")
            or not hasattr(_common, "serialize") or not hasattr(_common, "deserialize")
            or not _plain_init(base)):
        return None  # pragma: no cover - another grpcio layout
    return base, mc, (_common.serialize, _common.deserialize), census


_FOUND = _internals()
_AVAILABLE: list[bool] = []  # available(), once read


def available() -> bool:
    """Whether attempts of unary-unary methods run inline (see the module docstring):
    ``MESHKIT_INLINE_CALLS`` (:func:`inline_calls_enabled`) and grpc.aio's internals as
    expected; read once, at the first ``dial()`` (an import does not fail on it, so the
    ``meshkit`` command can report a bad value as the usage error it is).

    Raises:
        ConfigError: a bad ``MESHKIT_INLINE_CALLS`` (named, quoted), at every call until
            it is fixed.
    """
    if not _AVAILABLE:
        _AVAILABLE.append(inline_calls_enabled() and _FOUND is not None)
    return _AVAILABLE[0]

if _FOUND is not None:
    _Call: Any = _FOUND[0]
    _PublicMultiCallable: Any = _FOUND[1]
    _serialize, _deserialize = _FOUND[2]
    _census: Any = _FOUND[3]
else:  # pragma: no cover - another grpcio layout
    _Call = object
    _PublicMultiCallable = None


_new_call = object.__new__  # an InlineUnaryUnaryCall without its __init__ (see __call__)
_RUNNING = ("running",)
_STATUS = ("ended with a status other than OK, or cancelled",)
_REBUILT = (grpc.aio.AioRpcError, asyncio.CancelledError)  # what _again makes again


class InlineUnaryUnaryCall(_Call):  # type: ignore[misc]
    """A unary-unary call that runs when first awaited, in the awaiting task; later awaits
    (from any task) give the same response or raise the same error, as grpc.aio's own.

    Everything else is grpc.aio's ``Call``: ``cancel()``, ``done()``,
    ``add_done_callback()``, ``time_remaining()``, ``initial_metadata()``,
    ``trailing_metadata()``, ``code()``, ``details()``.

    Raises (when awaited):
        grpc.aio.AioRpcError: the call ended with a status other than ``OK``.
        asyncio.CancelledError: the call was cancelled (``cancel()``, or the awaiting task).
    """

    # None (not awaited yet), _RUNNING, _STATUS (failed with a status or cancelled), or
    # (response, error) once it has ended; class defaults, so that a call sets only what
    # it uses
    _outcome: tuple[Any, ...] | None = None
    _waiters: list[asyncio.Future[None]] | None = None  # later awaits, while it runs
    _active: set[Any] | None = None  # its multicallable's calls in flight, while it runs
    # made as grpc.aio's Call.__init__ (cython_call, metadata, ser, deser, loop) makes it,
    # written out in InlineUnaryUnary.__call__, which sets the request too
    _request: Any

    def __await__(self) -> Generator[Any, None, Any]:
        # the first await runs the call in this generator, in the awaiting task (no
        # coroutine of its own: a frame less per call); a later one waits for its
        # outcome (_again)
        if self._outcome is not None:
            return (yield from self._again().__await__())
        self._outcome = _RUNNING
        cython_call = self._cython_call
        try:
            try:
                ser = self._request_serializer  # None: the mesh sends bytes it serialized
                raw = yield from cython_call.unary_unary(
                    self._request if ser is None else _serialize(self._request, ser),
                    self._metadata, _census()).__await__()
            except asyncio.CancelledError:
                if not self.cancelled():
                    self.cancel()
                raise
            if not cython_call.is_ok():
                # CancelledError if cancelled, else the error
                yield from self._raise_for_status().__await__()
            deser = self._response_deserializer  # None: the mesh deserializes
            response = raw if deser is None else _deserialize(raw, deser)
        except BaseException as exc:
            # a status or a cancellation is not kept: a later await (_again) raises it
            # anew, as grpc.aio's call makes a new error at each await. Kept, it would be
            # held back by the frames of its own traceback that hold this call (this
            # one's self, grpc's _raise_for_status, the channel's attempt): a reference
            # cycle holding each failed call's state until the cyclic collector ran
            self._outcome = _STATUS if isinstance(exc, _REBUILT) else (None, exc)
            if self._active is not None:
                self._active.discard(self)
            if self._waiters is not None:
                self._wake()
            raise
        self._outcome = (response, None)
        if self._active is not None:
            self._active.discard(self)
        if self._waiters is not None:
            self._wake()
        return response

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters or [], None
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _again(self) -> Any:
        """A later await: wait for the first one's outcome, then give it. Cancelling the
        awaiting task cancels the call, as grpc.aio's ``__await__`` (and its
        ``wait_for_connection``, which awaits the call's task) does whichever task
        awaiting the call is cancelled."""
        while self._outcome is _RUNNING:
            fut: asyncio.Future[None] = self._loop.create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if not self.cancelled():
                    self.cancel()
                raise
        if self._outcome is _STATUS:
            await self._raise_for_status()  # CancelledError if cancelled, else the error
            raise asyncio.CancelledError()  # the awaiting task was cancelled as it ended
        assert self._outcome is not None
        response, error = self._outcome
        if error is not None:
            raise error
        return response

    async def wait_for_connection(self) -> None:
        """Wait until the call has ended (a unary call's connection is its whole life),
        starting it if nothing has awaited it yet (grpc.aio's call runs in its own task
        whether awaited or not; this one runs only when awaited).

        Raises:
            grpc.aio.AioRpcError: the call ended with a status other than ``OK``.
            asyncio.CancelledError: the call was cancelled.
        """
        await self


class InlineUnaryUnary:
    """A sub-channel's unary-unary multicallable whose calls run inline
    (:class:`InlineUnaryUnaryCall`); ``public`` is grpc.aio's own, for calls with
    compression. Same call signature as grpc.aio's multicallable.

    It keeps its calls in flight, as grpc.aio's channel does (``_register_call``), for
    :meth:`cancel_all`: grpc.aio's ``Channel.close()`` cannot see calls it did not make."""

    __slots__ = ("_active", "_channel", "_deser", "_handle", "_loop", "_method", "_public",
                 "_ser")

    def __init__(self, public: Any) -> None:
        self._public = public
        self._channel = public._channel
        self._method = public._method
        self._ser = public._request_serializer
        self._deser = public._response_deserializer
        self._loop = public._loop
        self._handle = getattr(public, "_registered_call_handle", 0)
        self._active: set[InlineUnaryUnaryCall] = set()

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        if compression is not None:
            if compression:  # grpc.aio adds the compression metadata: its own path
                return self._public(request, timeout=timeout, metadata=metadata,
                                    credentials=credentials, wait_for_ready=wait_for_ready,
                                    compression=compression)
            # NoCompression, which grpc.aio drops (a falsy IntEnum): said in the header
            # grpc core reads, over the channel's default (DialOptions.compression)
            metadata = (*(metadata or ()), IDENTITY_REQUEST)
        cython_call = self._channel.call(
            self._method, None if timeout is None else time.time() + timeout, credentials,
            wait_for_ready, self._handle)
        # grpc.aio's Call.__init__(cython_call, metadata or (), ser, deser, loop) written
        # out (no frame per call; checked at import, _plain_init): change both
        call = _new_call(InlineUnaryUnaryCall)
        call._loop = self._loop
        call._cython_call = cython_call
        call._metadata = tuple(metadata) if metadata else ()
        call._request_serializer = self._ser
        call._response_deserializer = self._deser
        call._request = request
        active = call._active = self._active
        active.add(call)
        return call

    def cancel_all(self) -> None:
        """Cancel every call of this multicallable still in flight (``CANCELLED`` for
        their callers): what closing its sub-channel does to grpc.aio's own calls."""
        for call in list(self._active):
            call.cancel()
        self._active.clear()


class UncompressedOnRequest:
    """A sub-channel multicallable of grpc.aio's public path (a stream's; a unary call's
    where :class:`InlineUnaryUnary` cannot run it) on a channel with a default
    compression (``DialOptions.compression``) whose calls' own
    ``compression=grpc.Compression.NoCompression`` sends them uncompressed: grpc.aio drops
    that value (a falsy ``IntEnum``), so the call would take the channel's default; this
    says it in the header grpc core reads (:data:`IDENTITY_REQUEST`). Calls with other
    arguments go through as they are. Called with keywords, as
    :meth:`meshkit.channel.MeshChannel._launch` calls it."""

    __slots__ = ("_public",)

    def __init__(self, public: Any) -> None:
        self._public = public

    def __call__(self, request: Any = None, *, compression: grpc.Compression | None = None,
                 metadata: Any = None, **kwargs: Any) -> Any:
        if compression is not None and not compression:
            metadata = (*(metadata or ()), IDENTITY_REQUEST)
            compression = None
        return self._public(request, compression=compression, metadata=metadata, **kwargs)


def inline_unary_unary(public: Any) -> Any:
    """``public`` (a sub-channel's unary-unary multicallable) as an
    :class:`InlineUnaryUnary` when :func:`available` and it is grpc.aio's own without
    interceptors; else ``public`` itself."""
    if (available() and type(public) is _PublicMultiCallable
            and not getattr(public, "_interceptors", True)):
        return InlineUnaryUnary(public)
    return public
