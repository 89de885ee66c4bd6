"""Server limits and request guards: what :func:`meshkit.serve` bounds by default.

* :class:`ServerLimits` (``ServeOptions.limits``): concurrent calls per server, concurrent
  HTTP/2 streams per connection, request size, keepalive and idle connections, and how
  long a unary call may wait for its request message. Calls over a limit are shed with
  ``RESOURCE_EXHAUSTED`` before their handler runs.
* :func:`guard_generic_handler` / :func:`guard_method_handler`: a request that does not
  decode answers ``INVALID_ARGUMENT`` "request is not a valid <Type>" (grpcio's default is
  ``UNKNOWN`` naming the ``DecodeError`` class, and such a call never reaches a server
  interceptor, so metrics and access logs missed it). The guarded deserializer returns a
  sentinel (unary requests) or raises :class:`UndecodableRequest` (streaming requests, from
  the request iterator or ``context.read()``), and the guarded behaviour aborts; server
  interceptors wrap the guarded behaviour, so they count the call like any other.
* :class:`FirstMessageSweeper`: grpc.aio reads a unary request before any Python handler
  runs, so a call that sends its headers and never its message holds a stream (and a
  server slot) until the client leaves. The handler lookup runs in the call's own task; the
  sweeper notes the task there, forgets it when the request decodes, and cancels calls
  whose request has not arrived within ``first_message_timeout_s`` (the caller sees
  ``CANCELLED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from meshkit._handlers import Handler, other_responses
from meshkit.errors import ConfigError

__all__ = [
    "FirstMessageSweeper",
    "ServerLimits",
    "UndecodableRequest",
    "guard_generic_handler",
    "guard_method_handler",
]

_log = structlog.get_logger("meshkit.server")
_MIB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Bounds on a server's in-flight work (``ServeOptions(limits=ServerLimits(...))``).

    The defaults keep a server within a few hundred MiB under a flood of large requests
    (measured: 200 concurrent 3.9 MB requests, see ``tests/faults/README.md``); raise a
    limit by passing a larger value, e.g. ``ServerLimits(max_concurrent_rpcs=512)``.

    Args:
        max_concurrent_rpcs: calls one server handles at once (default 32); further calls
            are answered ``RESOURCE_EXHAUSTED`` at once (grpc.aio's
            ``maximum_concurrent_rpcs``). ``None``: no cap. grpc core buffers each accepted
            call's whole request before Python sees it, so memory grows with this times
            ``max_receive_message_bytes``.
        max_concurrent_streams: HTTP/2 streams one connection may have open (default 64;
            channel arg ``grpc.max_concurrent_streams``, sent in SETTINGS). A client with
            more calls queues them itself instead of sending their data; raise it for
            clients multiplexing many long streams over one connection.
        max_receive_message_bytes: largest request message (default 4 MiB, grpc's
            default); larger ones are refused ``RESOURCE_EXHAUSTED`` by grpc core.
        bdp_probe: let HTTP/2 flow-control windows grow with the measured bandwidth-delay
            product (default ``False``: windows stay at their initial size, so data a
            server has not asked for is not buffered; bulk transfers over long links are
            slower). ``True`` is grpc's default.
        first_message_timeout_s: seconds a unary-request call may wait for its request
            message after its headers (default 10.0); then it is cancelled (the caller
            sees ``CANCELLED``). ``None``: wait as long as the client does.
        keepalive_time_s: seconds between the server's keepalive pings on an idle
            transport (default 60.0; ``grpc.keepalive_time_ms``), so dead peers are found.
        keepalive_timeout_s: seconds to wait for a ping's ack before closing the
            connection (default 20.0; ``grpc.keepalive_timeout_ms``).
        max_connection_idle_s: a connection without calls for this long is closed with
            GOAWAY (default 300.0; ``grpc.max_connection_idle_ms``); clients reconnect on
            their next call. ``None``: never.

    Raises:
        ConfigError: a value is out of range (quoted in the message).
    """

    max_concurrent_rpcs: int | None = 32
    max_concurrent_streams: int = 64
    max_receive_message_bytes: int = 4 * _MIB
    bdp_probe: bool = False
    first_message_timeout_s: float | None = 10.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_idle_s: float | None = 300.0

    def __post_init__(self) -> None:
        if self.max_concurrent_rpcs is not None and not (
                isinstance(self.max_concurrent_rpcs, int) and self.max_concurrent_rpcs >= 1):
            raise ConfigError(
                f"max_concurrent_rpcs must be >= 1 or None, got {self.max_concurrent_rpcs!r}")
        if not isinstance(self.max_concurrent_streams, int) or self.max_concurrent_streams < 1:
            raise ConfigError(
                f"max_concurrent_streams must be >= 1, got {self.max_concurrent_streams!r}")
        if (not isinstance(self.max_receive_message_bytes, int)
                or self.max_receive_message_bytes < 1):
            raise ConfigError("max_receive_message_bytes must be >= 1, got "
                              f"{self.max_receive_message_bytes!r}")
        for name in ("first_message_timeout_s", "max_connection_idle_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or None, got {value!r}")
        for name in ("keepalive_time_s", "keepalive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")

    def channel_args(self) -> tuple[tuple[str, Any], ...]:
        """The grpc server arguments these limits set (``ServeOptions.server_options``
        given by the caller override them key by key)."""
        args: list[tuple[str, Any]] = [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.http2.bdp_probe", int(self.bdp_probe)),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
        ]
        if self.max_connection_idle_s is not None:
            args.append(("grpc.max_connection_idle_ms", int(self.max_connection_idle_s * 1000)))
        return tuple(args)


# -- undecodable requests --------------------------------------------------------------
class UndecodableRequest(Exception):
    """A streaming call's request message did not decode (raised by the guarded
    deserializer from the request iterator or ``context.read()``; the guarded behaviour
    answers ``INVALID_ARGUMENT``)."""


class _Undecodable:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<undecodable request>"


_UNDECODABLE = _Undecodable()


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    """``ecom.v1.PlaceOrderRequest`` for ``PlaceOrderRequest.FromString``, else "request"."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) and name else "request message"


def _invalid(type_name: str) -> str:
    return f"request is not a valid {type_name}"


def _guarded_deserializer(deserializer: Callable[[bytes], Any], streaming: bool,
                          type_name: str, sweeper: FirstMessageSweeper | None
                          ) -> Callable[[bytes], Any]:
    if streaming:
        def decode_stream(data: bytes) -> Any:
            try:
                return deserializer(data)
            except Exception as exc:
                raise UndecodableRequest(_invalid(type_name)) from exc

        decode_stream._meshkit_guarded = True  # type: ignore[attr-defined]
        return decode_stream

    def decode(data: bytes) -> Any:
        if sweeper is not None:
            sweeper.arrived()
        try:
            return deserializer(data)
        except Exception:
            return _UNDECODABLE

    decode._meshkit_guarded = True  # type: ignore[attr-defined]
    return decode


def guard_method_handler(handler: Handler,
                         sweeper: FirstMessageSweeper | None = None) -> Handler:
    """``handler`` answering ``INVALID_ARGUMENT`` "request is not a valid <Type>" when its
    request does not decode (see the module docstring); with ``sweeper``, unary-request
    calls are also watched for a request that never comes. Handlers without a request
    deserializer are returned as they are."""
    deserializer = handler.request_deserializer
    if deserializer is None or getattr(deserializer, "_meshkit_guarded", False):
        return handler
    type_name = _type_name(deserializer)
    message = _invalid(type_name)
    req_s, resp_s = handler.request_streaming, handler.response_streaming
    guarded_des = _guarded_deserializer(deserializer, req_s, type_name, sweeper)
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
    the_inner = inner

    if resp_s:
        async def stream_behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            if request is _UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            try:
                result = the_inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:
                    async for item in other_responses(result):
                        yield item
            except UndecodableRequest:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        behavior = stream_behavior
    else:
        async def unary_behavior(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            try:
                result = the_inner(request, context)
                if inspect.isawaitable(result):
                    return await result
                return result
            except UndecodableRequest:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        behavior = unary_behavior
    guarded: Handler = factory(behavior, request_deserializer=guarded_des,
                               response_serializer=handler.response_serializer)
    return guarded


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded (cached per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler,
                 sweeper: FirstMessageSweeper | None) -> None:
        self._inner = inner
        self._sweeper = sweeper
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    def service_name(self) -> str | None:
        """The wrapped handler's service name (what the server's reflection lists)."""
        name = getattr(self._inner, "service_name", None)
        return name() if callable(name) else None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """The wrapped handler's method handler for the call, guarded."""
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = guard_method_handler(handler, self._sweeper)
        if len(self._cache) < 4096:
            self._cache[method] = (handler, guarded)
        return guarded


def guard_generic_handler(handler: grpc.GenericRpcHandler,
                          sweeper: FirstMessageSweeper | None = None) -> grpc.GenericRpcHandler:
    """``handler`` whose method handlers are guarded by :func:`guard_method_handler`."""
    return _GuardedGenericHandler(handler, sweeper)


# -- requests that never come -------------------------------------------------------------
class FirstMessageSweeper(grpc.aio.ServerInterceptor):
    """Cancels unary-request calls whose request message has not arrived within
    ``timeout_s`` of their headers (see the module docstring).

    Installed by :class:`meshkit.MeshServer` as the outermost server interceptor when
    ``ServerLimits.first_message_timeout_s`` is set: at handler lookup (in the call's own
    task) the task is noted; the guarded request deserializer forgets it; a sweep every
    ``min(1, timeout_s / 4)`` seconds cancels the tasks still waiting past ``timeout_s``.

    Args:
        timeout_s: seconds (> 0).
        clock: monotonic clock in seconds (default ``time.monotonic``).
    """

    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"first_message_timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self._clock = clock
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._sweep_task: asyncio.Task[None] | None = None
        self.cancelled = 0

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Note the call's task when its handler takes a unary request."""
        handler: Handler | None = await continuation(handler_call_details)
        if handler is not None and not handler.request_streaming:
            task = asyncio.current_task()
            if task is not None:
                self._waiting[task] = self._clock()
                if self._sweep_task is None or self._sweep_task.done():
                    self._sweep_task = asyncio.get_running_loop().create_task(self._sweep())
        return handler

    def arrived(self) -> None:
        """The current call's request arrived (called by the guarded deserializer)."""
        if self._waiting:
            task = asyncio.current_task()
            if task is not None:
                self._waiting.pop(task, None)

    def sweep(self) -> int:
        """Cancel the calls waiting past the timeout; how many were cancelled."""
        now = self._clock()
        n = 0
        for task, since in list(self._waiting.items()):
            if task.done():
                del self._waiting[task]
            elif now - since >= self.timeout_s:
                del self._waiting[task]
                task.cancel()
                n += 1
        if n:
            self.cancelled += n
            _log.warning("cancelled calls whose request did not arrive", calls=n,
                         first_message_timeout_s=self.timeout_s)
        return n

    async def _sweep(self) -> None:
        interval = min(1.0, self.timeout_s / 4)
        while self._waiting:
            await asyncio.sleep(interval)
            self.sweep()

    async def aclose(self) -> None:
        """Stop sweeping (the server stopped)."""
        task, self._sweep_task = self._sweep_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._waiting.clear()
