"""A sub-channel's attempt interceptors, so that cancelling an attempt cancels its RPC.

grpc.aio runs a channel's client interceptors in a task of their own
(``grpc/aio/_interceptor.py``: ``InterceptedUnaryUnaryCall`` and the other three kinds).
While that task still runs, ``InterceptedCall.cancel()`` cancels the task alone, and so
does a cancel of the task awaiting the call (the caller's, a hedge's), which reaches the
interceptors' task it waits on. An interceptor that has started the RPC and awaits
something more before handing the call back (its status: a per-attempt metrics
interceptor, meshkit's :class:`~meshkit.observability.AttemptSpanInterceptor`,
opentelemetry-instrumentation-grpc's aio interceptor, whose ``_wrap_unary_response``
awaits ``call.code()`` for every unary-response call) then gets a ``CancelledError`` in
its await, and the RPC its continuation started runs on: nothing cancels it, its server's
handler runs to its end. Every cancel meshkit makes of an attempt is one of these: a
caller's cancel, a hedge that lost, the channel's close (grpc.aio's ``Channel.close()``
cancels the intercepted call, not the RPC under it, which it does not know of).

:func:`cancel_through` wraps each interceptor of a built grpc.aio channel, the ones
meshkit passed (``DialOptions.attempt_interceptors``, telemetry's) and the ones a patch of
``grpc.aio.insecure_channel``/``secure_channel`` added (the OpenTelemetry grpc aio client
instrumentor's, which ``opentelemetry-instrument`` installs): the continuation each is
given records the call it returns, and when the interceptor ends with an exception
(the cancel above, or an error of its own while the RPC runs) those calls are cancelled
(a call already done ignores it). A channel without interceptors is left as it is, so
the default path costs nothing; with interceptors each attempt adds a closure and a
frame per interceptor to the task grpc.aio makes anyway.

This reads grpc.aio's ``Channel`` private lists of interceptors by kind
(``_unary_unary_interceptors``...), kept since grpcio 1.32; where they are missing the
channel is left as it is, with a warning once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import structlog

__all__ = ["cancel_through"]

_log = structlog.get_logger("meshkit.channel")


class _CancelsInner:
    """The base of the wrappers: runs the wrapped interceptor's method for one kind with a
    continuation that records the calls it returns, and cancels them when that method
    raises (``CancelledError`` included)."""

    def __init__(self, intercept: Callable[..., Any], interceptor: Any) -> None:
        self._intercept = intercept
        self.interceptor = interceptor  # the wrapped one, for whoever lists them

    async def _run(self, continuation: Callable[..., Any], client_call_details: Any,
                   request: Any) -> Any:
        started: list[Any] = []

        async def recording(details: Any, req: Any) -> Any:
            call = await continuation(details, req)
            started.append(call)
            return call

        try:
            return await self._intercept(recording, client_call_details, request)
        except BaseException:
            for call in started:  # the RPC under a cancelled (or failed) interceptor
                call.cancel()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.interceptor!r})"


class _UnaryUnary(_CancelsInner, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _CancelsInner._run


class _UnaryStream(_CancelsInner, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _CancelsInner._run


# grpc.aio calls these positionally: the stream kinds' third parameter, request_iterator
# in grpc's interfaces, is never named
class _StreamUnary(_CancelsInner, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _CancelsInner._run  # type: ignore[assignment]


class _StreamStream(_CancelsInner, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _CancelsInner._run  # type: ignore[assignment]


# grpc.aio Channel's list of each kind, the wrapper for it and the method it runs
_LISTS: tuple[tuple[str, type[_CancelsInner], str], ...] = (
    ("_unary_unary_interceptors", _UnaryUnary, "intercept_unary_unary"),
    ("_unary_stream_interceptors", _UnaryStream, "intercept_unary_stream"),
    ("_stream_unary_interceptors", _StreamUnary, "intercept_stream_unary"),
    ("_stream_stream_interceptors", _StreamStream, "intercept_stream_stream"),
)
_warned: list[bool] = []


def cancel_through(channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """Wrap, in place, each client interceptor of a grpc.aio ``channel`` built a moment
    ago (before any multicallable of it is made), so that a cancel of an attempt while an
    interceptor still runs cancels the RPC its continuation started (see the module's
    docstring); an interceptor already wrapped is kept as it is.

    Args:
        channel: a channel from ``grpc.aio.insecure_channel``/``secure_channel`` (or a
            patch of them that adds interceptors).

    Returns:
        ``channel`` itself. One without interceptors, or not of grpc.aio's layout, is
        returned unchanged (the latter with a warning, once per process).
    """
    found = False
    for attr, wrapper, method in _LISTS:
        interceptors = getattr(channel, attr, None)
        if interceptors is None:
            continue
        found = True
        if interceptors and isinstance(interceptors, list):
            interceptors[:] = [
                icpt if isinstance(icpt, _CancelsInner)
                else wrapper(getattr(icpt, method), icpt) for icpt in interceptors]
    if not found and not _warned:
        _warned.append(True)
        _log.warning("grpc.aio channel without its lists of interceptors: a cancel of an "
                     "attempt while an attempt interceptor runs may not reach its RPC",
                     channel_type=type(channel).__name__)
    return channel
