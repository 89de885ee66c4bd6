"""Per-call client interceptors: the seam for deadlines, retries, hedging and tracing.

A :class:`~meshkit.channel.MeshChannel` runs two layers of client interceptors:

* **per call** (this module): a :class:`ClientInterceptor` runs once per logical call,
  above the balancer. ``proceed`` picks an endpoint and makes one *attempt*; an interceptor
  may call it several times (that is how retries and hedging work), change the
  :class:`ClientCallDetails` (deadline, metadata) or observe the outcome.
* **per attempt**: ordinary ``grpc.aio.ClientInterceptor`` objects, installed on every
  endpoint's sub-channel (``DialOptions.attempt_interceptors``); they run once per attempt,
  after the endpoint is chosen (per-attempt auth, metrics by endpoint).

Order: ``DialOptions.interceptors[0]`` is outermost. Example::

    class Stamp(ClientInterceptor):
        async def intercept_unary(self, details, request, proceed):
            details.metadata.append(("x-caller", "orderd"))
            return await proceed(details, request)

    channel = dial("userd", options=DialOptions(interceptors=(Stamp(),)))
"""

from __future__ import annotations

import copy
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

__all__ = [
    "CallKind",
    "ClientCallDetails",
    "ClientInterceptor",
    "StreamProceed",
    "UnaryProceed",
]


class CallKind(enum.Enum):
    """The four gRPC call shapes."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    # members are singletons compared by identity: hash them so (Enum's own __hash__
    # hashes the name in Python code, a frame per lookup of a per-method cache key)
    __hash__ = object.__hash__


class ClientCallDetails:
    """What one logical call is about; interceptors may change it before ``proceed``.

    Attributes:
        service: the dialed mesh service name, e.g. ``"userd"``.
        method: full gRPC method, e.g. ``"/ecom.v1.UserService/GetUser"``.
        kind: :class:`CallKind`.
        deadline: absolute deadline on ``time.monotonic()`` seconds, or ``None``.
        metadata: outgoing metadata as a mutable list of ``(key, value)`` pairs.
        wait_for_ready: gRPC wait-for-ready; also makes the pick wait for an endpoint.
        credentials: the call's ``grpc.CallCredentials`` (its ``credentials=``), or
            ``None``; each attempt is sent with them.
        compression: the call's ``grpc.Compression`` (its ``compression=``), or
            ``None``; each attempt is sent with it.
        request_key: optional key for affinity balancers (e.g. a user id).
        attempts: endpoints tried so far by this call, in order (retries exclude them).
        attempt_started_ns: wall-clock start (``time.time_ns()``) of each attempt, in order.
        last_call: the grpc.aio call object of the latest attempt (for metadata/status).
        codec: the channel's per-method record (serializers); opaque to interceptors.
        messages: where the call object counts the stream messages it passes
            (``msg_received``/``msg_sent`` integers; set by telemetry), or ``None``.
        codec_error: set (only) when a message the method's codecs refused ended the
            call: the :class:`~meshkit.errors.RequestSerializationError` or
            :class:`~meshkit.errors.ResponseDeserializationError` (read it with
            ``getattr(details, "codec_error", None)``).

    ``copy.copy(details)`` (an interceptor proceeding with details of its own, as
    grpc.aio's are ``_replace``d) makes a copy whose ``codec_error`` is recorded on the
    details it was copied from too, where the call object reads it; ``copy.deepcopy``
    makes the same copy with a deep copy of the metadata (the call's runtime records
    shared).

    Made by the balanced channel for each call from the call's arguments (keyword-only):
    ``service``, ``method``, ``kind``, ``timeout_s`` (the call's timeout, seconds, or
    ``None``: ``deadline`` is ``time.monotonic()`` plus it), ``metadata`` (copied into a
    list), ``wait_for_ready``, ``credentials`` and ``compression``.
    """

    __slots__ = (
        "_codec_error",
        "_origin",
        "attempt_started_ns",
        "attempts",
        "codec",
        "compression",
        "credentials",
        "deadline",
        "kind",
        "last_call",
        "messages",
        "metadata",
        "method",
        "request_key",
        "service",
        "wait_for_ready",
    )
    _codec_error: Any  # (slots set only when there is a value: see codec_error)
    _origin: ClientCallDetails

    def __init__(
        self,
        *,
        service: str,
        method: str,
        kind: CallKind,
        timeout_s: float | None,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        wait_for_ready: bool | None = None,
        credentials: grpc.CallCredentials | None = None,
        compression: grpc.Compression | None = None,
    ) -> None:
        # the channel's calls are made without it (meshkit.channel, _MultiCallable._open
        # writes it out): change both
        self.service = service
        self.method = method
        self.kind = kind
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.metadata: list[tuple[str, str | bytes]] = list(metadata) if metadata else []
        self.wait_for_ready = wait_for_ready
        self.credentials = credentials
        self.compression = compression
        self.request_key: str | None = None
        self.attempts: list[Any] = []
        self.attempt_started_ns: list[int] = []
        self.last_call: Any = None
        self.codec: Any = None
        self.messages: Any = None

    @property
    def codec_error(self) -> Any:
        """The codec error that ended the call (see the class docstring), or ``None``."""
        return getattr(self, "_codec_error", None)

    @codec_error.setter
    def codec_error(self, error: Any) -> None:
        self._codec_error = error
        origin = getattr(self, "_origin", None)
        if origin is not None:  # a copy: the call object reads the original
            origin.codec_error = error

    def __copy__(self) -> ClientCallDetails:
        """A shallow copy (what ``copy.copy`` makes of the slots), recording its
        ``codec_error`` on this one too; of an application's subclass, with its own
        slots and ``__dict__`` (an interceptor after the one that made it reads them)."""
        cls = type(self)
        new = cls.__new__(cls)
        names = ClientCallDetails.__slots__ if cls is ClientCallDetails else _slots(cls)
        for name in names:
            try:
                value = getattr(self, name)
            except AttributeError:  # a slot never set (_codec_error, _origin)
                continue
            setattr(new, name, value)
        own = getattr(self, "__dict__", None)
        if own:
            new.__dict__.update(own)
        new._origin = self
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> ClientCallDetails:
        """What ``copy.deepcopy`` makes: the copy :meth:`__copy__` makes, with a deep copy
        of the metadata (the interceptor's own to change; the caller's list untouched).
        The call's runtime records (``codec``, ``messages``, ``last_call``,
        ``credentials``, ``attempts``...) are shared as in a shallow copy: they hold
        locks and grpc's call objects, which cannot be copied (``TypeError: cannot
        pickle '_thread.lock' object``), and what the attempt records must reach the
        call object."""
        new = self.__copy__()
        new.metadata = copy.deepcopy(self.metadata, memo)
        return new

    def time_remaining_s(self) -> float | None:
        """Seconds left before the deadline (may be negative), or ``None`` without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()


def _slots(cls: type) -> tuple[str, ...]:
    """Every slot of ``cls`` and its bases but ``__dict__``/``__weakref__`` (a subclass of
    :class:`ClientCallDetails` adds its own), by the attribute name Python stores it under:
    a private ``__name`` declared in class ``_Cls`` is ``_Cls__name`` (name mangling, the
    class name's leading underscores stripped; read as written, the slot seemed never set
    and its value was dropped from the copy)."""
    names: list[str] = []
    for klass in cls.__mro__:
        declared = vars(klass).get("__slots__", ())
        owner = klass.__name__.lstrip("_")
        for name in (declared,) if isinstance(declared, str) else declared:
            if name.startswith("__") and not name.endswith("__") and owner:
                name = f"_{owner}{name}"
            names.append(name)
    return tuple(n for n in names if n not in ("__dict__", "__weakref__"))


UnaryProceed = Callable[[ClientCallDetails, Any], Awaitable[Any]]
"""``await proceed(details, request) -> response``: one attempt of a unary-response call."""

StreamProceed = Callable[[ClientCallDetails, Any], Awaitable[Any]]
"""``await proceed(details, request) -> call``: opens one attempt of a streaming-response
call and returns the grpc.aio call (async-iterable over responses)."""


class ClientInterceptor:
    """Base class of per-call client interceptors; override what you need.

    ``intercept_unary`` runs for unary-response calls (unary-unary and stream-unary; for
    stream-unary ``request`` is the request iterator). ``intercept_stream`` runs when a
    streaming-response call is opened (unary-stream and stream-stream) and returns the call
    object to iterate: the one ``proceed`` returned, another ``grpc.aio.Call``, or an
    async iterator over its responses (an async generator transforming them), as a
    grpc.aio response-streaming interceptor may: the caller then reads the iterator's
    messages (``async for`` and ``read()``) while status, metadata, ``cancel()`` and
    ``write()`` are those of the call ``proceed`` last returned. Anything else (``None``:
    a forgotten ``return``) fails the call with ``TypeError`` and cancels that call;
    an exception ``intercept_stream`` raises fails the call with it and cancels every
    call its ``proceed`` opened. Both default to passing the call straight through.
    Raise a ``grpc.aio.AioRpcError`` (e.g. :class:`meshkit.errors.MeshRpcError`) to fail
    a call with a given status.
    """

    async def intercept_unary(
        self, details: ClientCallDetails, request: Any, proceed: UnaryProceed
    ) -> Any:
        """Run one unary-response call; return the response or raise an RPC error."""
        return await proceed(details, request)

    async def intercept_stream(
        self, details: ClientCallDetails, request: Any, proceed: StreamProceed
    ) -> Any:
        """Open one streaming-response call; return the call object to iterate."""
        return await proceed(details, request)


def chain_unary(interceptors: Sequence[ClientInterceptor], inner: UnaryProceed) -> UnaryProceed:
    """Fold ``interceptors`` (first = outermost) around ``inner`` once, at dial time.

    An interceptor of the application's own that overrides ``intercept_unary`` may pass
    ``proceed`` other details than it was given (:func:`_bind_copying_unary`); meshkit's
    own, and one that does not override it, run as they are: one of meshkit's with a
    ``unary_runner(proceed)`` (its ``intercept_unary`` with ``proceed`` bound) is that
    runner, called by the step before it without a frame between them, unless its
    instance overrides ``intercept_unary`` (a wrapper set on it before the dial:
    ``mock.patch.object``, an application's instrumentation), which then runs."""
    fn = inner
    for icpt in reversed(interceptors):
        cls = type(icpt)
        if cls.__module__.startswith("meshkit."):
            runner = getattr(icpt, "unary_runner", None)
            if runner is not None and "intercept_unary" not in getattr(icpt, "__dict__", ()):
                fn = runner(fn)
            else:
                fn = _bind_unary(icpt, fn)
        elif cls.intercept_unary is ClientInterceptor.intercept_unary:
            fn = _bind_unary(icpt, fn)
        else:
            fn = _bind_copying_unary(icpt, fn)
    return fn


def chain_stream(interceptors: Sequence[ClientInterceptor], inner: StreamProceed) -> StreamProceed:
    """Fold ``interceptors`` (first = outermost) around ``inner`` once, at dial time.

    An interceptor of the application's own that overrides ``intercept_stream`` has its
    result checked (:func:`_bind_checked_stream`); meshkit's own, and one that does not
    override it, run as they are."""
    fn = inner
    for icpt in reversed(interceptors):
        cls = type(icpt)
        own = cls.__module__.startswith("meshkit.")
        if own or cls.intercept_stream is ClientInterceptor.intercept_stream:
            fn = _bind_stream(icpt, fn)
        else:
            fn = _bind_checked_stream(icpt, fn)
    return fn


def _bind_unary(icpt: ClientInterceptor, nxt: UnaryProceed) -> UnaryProceed:
    method = icpt.intercept_unary

    def run(details: ClientCallDetails, request: Any) -> Awaitable[Any]:
        return method(details, request, nxt)

    return run


def _bind_copying_unary(icpt: ClientInterceptor, nxt: UnaryProceed) -> UnaryProceed:
    """:func:`_bind_unary` for an application's interceptor, which may hand ``proceed`` a
    copy of the details (``copy.copy(details)``, as grpc.aio's are ``_replace``d): what
    the attempt under it records there (``last_call``: its status and metadata;
    ``codec_error``) is put back on the details it was given, which the call object
    reads. Costs a closure per call; a call proceeded with its own details nothing more."""
    method = icpt.intercept_unary

    def run(details: ClientCallDetails, request: Any) -> Awaitable[Any]:
        def proceed(given: ClientCallDetails, request: Any) -> Awaitable[Any]:
            if given is details:
                return nxt(given, request)
            return _through(details, given, request, nxt)

        return method(details, request, proceed)

    return run


async def _through(details: ClientCallDetails, given: ClientCallDetails, request: Any,
                   nxt: UnaryProceed) -> Any:
    """``nxt(given, request)``, its attempt's outcome copied back to ``details``."""
    try:
        return await nxt(given, request)
    finally:
        details.last_call = given.last_call
        error = given.codec_error
        if error is not None:
            details.codec_error = error


def _bind_stream(icpt: ClientInterceptor, nxt: StreamProceed) -> StreamProceed:
    method = icpt.intercept_stream

    def run(details: ClientCallDetails, request: Any) -> Awaitable[Any]:
        return method(details, request, nxt)

    return run


def _bind_checked_stream(icpt: ClientInterceptor, nxt: StreamProceed) -> StreamProceed:
    """:func:`_bind_stream` for an application's interceptor: an async iterator it returns
    in place of a call is wrapped (:class:`_IteratedCall`) over the call its ``proceed``
    last returned, as grpc.aio's ``InterceptedUnaryStreamCall`` does; another result is a
    ``TypeError``, the opened call cancelled. When the interceptor raises (it looked at the
    call and refused it, or was cancelled with its caller), every call its ``proceed``
    opened is cancelled and the exception goes on: the caller gets no call object to end
    them, and each ran on until its deadline (for ever without one), its server's handler
    with it and its endpoint's ``in_flight`` counted. Costs a coroutine for ``proceed``
    per streaming call through such an interceptor (none for other interceptors)."""
    method = icpt.intercept_stream

    async def run(details: ClientCallDetails, request: Any) -> Any:
        opened: list[Any] = []

        async def proceed(details: ClientCallDetails, request: Any) -> Any:
            call = await nxt(details, request)
            opened.append(call)
            return call

        try:
            result = await method(details, request, proceed)
        except BaseException:  # the caller gets no call: nothing else would end them
            for call in opened:
                call.cancel()
            raise
        if opened and result is opened[-1]:
            return result
        if hasattr(result, "add_done_callback"):  # another call (grpc.aio's, meshkit's)
            return result
        if opened and hasattr(result, "__aiter__"):
            return _IteratedCall(opened[-1], result)
        for call in opened:
            call.cancel()
        raise TypeError(
            f"{type(icpt).__qualname__}.intercept_stream returned {result!r:.100}: it must "
            "return the call proceed() returned, another grpc.aio call, or an async "
            "iterator over the call's responses")

    return run


class _IteratedCall:
    """A streaming call whose messages come from ``responses`` (an async iterator an
    interceptor returned) and whose everything else (status, metadata, ``cancel()``,
    ``write()``, done callbacks) is ``call``'s: grpc.aio's
    ``UnaryStreamCallResponseIterator``/``StreamStreamCallResponseIterator``. ``read()``
    takes the next message of the same iterator ``async for`` uses (``grpc.aio.EOF`` at
    its end), as grpc.aio's intercepted call reads through its response iterator."""

    __slots__ = ("_call", "_iterator", "_responses")

    def __init__(self, call: Any, responses: Any) -> None:
        self._call = call
        self._responses = responses
        self._iterator: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __aiter__(self) -> Any:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = self._responses.__aiter__()
        return iterator

    async def read(self) -> Any:
        """The next response, or ``grpc.aio.EOF`` once the iterator has ended."""
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF
