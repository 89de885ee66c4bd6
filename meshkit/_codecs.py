"""Messages a method's codecs refuse end the call ``INTERNAL``, as in grpc-go.

grpc.aio only logs a serializer's or deserializer's exception: it sends an empty message
in place of a request it could not serialize and hands the reader ``None`` in place of a
response it could not deserialize (grpc/grpc#34894). A meshkit channel therefore runs the
codecs itself where grpc.aio's interceptors do not need the messages
(``DialOptions.attempt_interceptors`` is empty; see :class:`meshkit.channel._MethodPlan`).
Where they do, grpc.aio keeps the codecs, its deserializer made strict, and the mesh
serializes each request message once more, only to check it; either way:

* a unary request is serialized before the pick and a unary response deserialized after
  the attempt (in :mod:`meshkit.channel`);
* a stream's request messages are serialized as grpc.aio takes them (:func:`serialized`,
  :func:`serialize_message`; a method without a serializer has each checked to be bytes,
  :func:`bytes_message`): on a refusal the call's ``codec_error`` is set (on its
  :class:`~meshkit.interceptors.ClientCallDetails`) and grpc.aio ends the attempt, which
  the call objects (:mod:`meshkit._calls`) report as that error;
* a stream's response messages go through :func:`strict_deserializer`, which hands a
  refusal on as an :class:`Undecodable` for the call object to end the call with.

The request wrapper also counts the messages it hands on (``grpc_client_msg_sent_total``,
when telemetry set ``details.messages``), once per logical call: a stream-unary request
the retry policy replays (a list, a tuple: every attempt iterates it again) has each
message counted by the first attempt to take it (:class:`_CallMessages`), as
go-grpc-prometheus counts what the application sent; the attempts are counted apart
(``meshkit_client_attempts_total``).

Each costs what grpc.aio's own codec step did (one Python frame per message or fewer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from meshkit.errors import (
    RequestIteratorError,
    RequestSerializationError,
    ResponseDeserializationError,
)
from meshkit.interceptors import CallKind

__all__ = ["Undecodable", "bytes_message", "codec_error", "exact_bytes", "serialize_message",
           "serialized", "strict_deserializer", "undecodable_error"]


class Undecodable:
    """What :func:`strict_deserializer` returns for a message its deserializer refused:
    the exception, for the call object to end the call with."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def strict_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` returning an :class:`Undecodable` instead of raising (grpc.aio
    would log the exception and return ``None``)."""

    def strict(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            return Undecodable(exc)

    return strict


_E = TypeVar("_E", bound=BaseException)


def _recorded(err: _E, cause: BaseException | None, details: Any) -> _E:
    """``err`` with ``cause`` as its ``__cause__``, recorded as the ``codec_error`` of
    ``details`` (a stream's call; ``None``: a unary request's check, nothing to record)."""
    err.__cause__ = cause
    if details is not None:
        details.codec_error = err
    return err


def undecodable_error(details: Any, message: Undecodable) -> ResponseDeserializationError:
    """The error that ends ``details``' call for ``message``, recorded as its
    ``codec_error``."""
    return _recorded(ResponseDeserializationError(
        details.method, type(message.error).__name__), message.error, details)


def _refused(method: str, problem: str, cause: BaseException | None,
             details: Any) -> RequestSerializationError:
    return _recorded(RequestSerializationError(method, problem), cause, details)


def serialize_message(method: str, serializer: Callable[[Any], bytes], message: Any,
                      details: Any = None) -> bytes:
    """One request message of ``method`` (``/pkg.Service/Method``), serialized: the one
    place meshkit runs a request serializer (unary requests before the pick, stream
    messages as grpc.aio takes them).

    Args:
        details: the call's :class:`~meshkit.interceptors.ClientCallDetails` for a stream
            message (a refusal is recorded as its ``codec_error``), else ``None``.

    Raises:
        RequestSerializationError: the serializer raised (the exception is the cause) or
            returned something other than bytes (``INTERNAL``; nothing is sent). A
            ``bytes`` subclass it returns is returned as its ``bytes`` (grpc sends exact
            ``bytes`` only).
    """
    try:
        out = serializer(message)
    except Exception as exc:
        raise _refused(method, f"the request serializer raised {type(exc).__name__}",
                       exc, details) from exc
    if type(out) is not bytes:
        if not isinstance(out, bytes):
            raise _refused(method, f"the request serializer returned {type(out).__name__}, "
                                   f"not bytes", None, details)
        out = bytes(out)  # a subclass: grpc sends exact bytes only
    return out


def exact_bytes(serializer: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``serializer`` for grpc.aio where grpc.aio runs it itself (a channel with attempt
    interceptors, which see the messages): a ``bytes`` subclass it returns (such as
    ``numpy.bytes_``) handed on as its ``bytes``, since grpc sends exact ``bytes`` only
    (grpc.aio's ``TypeError`` ended the attempt). The mesh has checked each message with
    :func:`serialize_message` before, so anything else is bytes. One call more per
    message, on that path only."""
    def serialize(message: Any) -> bytes:
        out = serializer(message)
        return out if type(out) is bytes or not isinstance(out, bytes) else bytes(out)

    return serialize


def bytes_message(method: str, message: Any, details: Any = None) -> bytes:
    """``message``, a request message of ``method`` (``/pkg.Service/Method``), a method
    without a request serializer, whose messages go out as they are: ``bytes`` (a
    subclass, such as ``numpy.bytes_``, as its ``bytes``: grpc sends exact ``bytes``
    only), as a unary request of such a method must be.

    Args:
        details: the call's :class:`~meshkit.interceptors.ClientCallDetails` for a stream
            message (a refusal is recorded as its ``codec_error``), else ``None``.

    Raises:
        RequestSerializationError: ``message`` is not bytes (``None`` included, which
            grpc.aio would send as an empty message; ``INTERNAL``; nothing is sent).
    """
    if isinstance(message, bytes):
        # a subclass (numpy.bytes_) as its bytes: grpc sends exact bytes only
        return message if type(message) is bytes else bytes(message)
    raise _refused(method, f"a method without a request_serializer sends bytes, got "
                           f"{type(message).__name__}", None, details)


def serialized(details: Any, serializer: Callable[[Any], bytes] | None, requests: Any,
               wire: bool = True, ended: Callable[[], None] | None = None) -> Any:
    """The request iterator ``requests`` (sync or async, as grpc.aio takes either) with
    each message serialized (``wire``), or serialized only to check it and handed on as it
    is (``wire=False``: grpc.aio serializes it again, for attempt interceptors that see
    the messages), or handed on as it is (no ``serializer``: checked to be bytes, see
    :func:`bytes_message`). A message the serializer refuses (or, without one, a message
    that is not bytes), or an exception of ``requests`` itself (one that cannot be iterated
    included: an ``int``, an ``__iter__`` that raises), is recorded as the call's
    ``codec_error`` (:class:`~meshkit.errors.RequestSerializationError`,
    :class:`~meshkit.errors.RequestIteratorError`; an ``asyncio.CancelledError`` of
    ``requests`` too, unless the call itself is being cancelled) and raised; grpc.aio then ends the
    attempt (it cancels a call whose iterator raised) and the call objects report it.

    Called once per attempt. Each message handed on is counted in
    ``details.messages.msg_sent`` when telemetry set ``details.messages`` (one iterator
    layer per message for both), once per logical call: a stream-unary ``requests`` that
    gives a new iterator each time (a list, a tuple; the retry policy replays it on every
    attempt, and hedges run side by side) is counted through the call's
    :class:`_CallMessages`, which counts the ``k``-th message when the first attempt takes
    it (about 16 bytecodes more per message). An iterator or a generator (spent by the
    attempt that sends it, never replayed) is counted directly.

    ``ended`` (no arguments), when given, is called as ``requests`` ends, once every
    message before it was handed on (not when it raises): the channel times an upload's
    half-close with it, with no layer around the iterator (nothing per message)."""
    messages = details.messages
    if messages is not None and details.kind is _STREAM_UNARY and _replayable(requests):
        call = messages
        if type(call) is not _CallMessages:  # the call's first attempt
            details.messages = call = _CallMessages(messages)
        if hasattr(requests, "__aiter__"):
            return _aserialized(details, serializer, requests, wire, None, call, ended)
        return _serialized(details, serializer, requests, wire, None, call, ended)
    if hasattr(requests, "__aiter__"):
        return _aserialized(details, serializer, requests, wire, messages, None, ended)
    return _serialized(details, serializer, requests, wire, messages, None, ended)


_STREAM_UNARY = CallKind.STREAM_UNARY


def _replayable(requests: Any) -> bool:
    """Whether ``requests`` gives a new iterator each time (the retry policy replays such
    a stream-unary request on every attempt; an iterator or a generator is spent)."""
    try:
        if hasattr(requests, "__aiter__"):
            return bool(requests.__aiter__() is not requests)
        return iter(requests) is not requests
    except Exception:  # no iterable: _serialized raises it as the iterator's failure
        return False


class _CallMessages:
    """``details.messages`` of a stream-unary call whose request is replayed: the method's
    telemetry record (``record``, counts of every call of the method) and ``taken``, the
    most request messages one attempt of this call has taken so far: an attempt taking
    its ``k``-th message counts it in the record only when ``k > taken`` (the first
    attempt to take it). Reads and writes of ``msg_sent``/``msg_received`` go to the
    record, as on the record itself."""

    __slots__ = ("record", "taken")

    def __init__(self, record: Any) -> None:
        self.record = record
        self.taken = 0

    @property
    def msg_sent(self) -> int:
        """The record's count of request messages (every call of the method)."""
        return int(self.record.msg_sent)

    @msg_sent.setter
    def msg_sent(self, value: int) -> None:
        self.record.msg_sent = value

    @property
    def msg_received(self) -> int:
        """The record's count of response messages (every call of the method)."""
        return int(self.record.msg_received)

    @msg_received.setter
    def msg_received(self, value: int) -> None:
        self.record.msg_received = value


def _iterator_failed(details: Any, exc: BaseException) -> RequestIteratorError:
    return _recorded(RequestIteratorError(details.method, type(exc).__name__), exc, details)


def _call_cancelled(exc: BaseException) -> bool:
    """Whether ``exc``, raised by the request iterator as it was asked for its next
    message, is the call's cancellation (an ``asyncio.CancelledError`` while the task
    taking the messages is being cancelled: it goes on as it is, re-raised where it was
    caught: raised from a helper, its traceback held the helper's frame and the frame it,
    a reference cycle per cancelled stream); else (an exception, or a
    ``CancelledError`` of the iterator's own: it awaited something another task
    cancelled) it is the call's :class:`~meshkit.errors.RequestIteratorError`, not a call
    the channel cancelled. Asked on the failure path only."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _serialized(details: Any, serializer: Callable[[Any], bytes] | None, requests: Any,
                wire: bool, messages: Any, call: _CallMessages | None = None,
                ended: Callable[[], None] | None = None) -> Iterator[Any]:
    """The messages of ``requests`` (a sync iterable), each serialized or checked (see
    :func:`serialized`), counted in ``messages`` (telemetry's record) when it is not
    ``None``, else, for one attempt of a replayed request, in ``call``'s record only when
    no attempt of the call took that message before (``call.taken``)."""
    method = details.method
    sent = 0
    try:  # (a request that is no iterable: the caller's error, as one that raises)
        it = iter(requests)
    except Exception as exc:
        raise _iterator_failed(details, exc) from exc
    while True:
        try:
            message = next(it)
        except StopIteration:
            if ended is not None:
                ended()
            return
        except (asyncio.CancelledError, Exception) as exc:  # the call's, or the iterator's
            if _call_cancelled(exc):
                raise
            raise _iterator_failed(details, exc) from exc
        if serializer is not None:
            out = serialize_message(method, serializer, message, details)
            if wire:
                message = out
        elif type(message) is not bytes:  # (one check per message of a bytes method)
            message = bytes_message(method, message, details)
        if messages is None:
            if call is not None:  # a replayed request's count: once per logical call
                sent += 1
                if sent > call.taken:
                    call.taken = sent
                    call.record.msg_sent += 1
        else:  # telemetry's count (grpc_client_msg_sent_total), straight on to the yield
            messages.msg_sent += 1
        yield message


# _serialized's loop again for async iterables (anext, awaited): a loop body shared by the
# two would cost each message a function call
async def _aserialized(details: Any, serializer: Callable[[Any], bytes] | None,
                       requests: Any, wire: bool, messages: Any,
                       call: _CallMessages | None = None,
                       ended: Callable[[], None] | None = None) -> AsyncIterator[Any]:
    """:func:`_serialized` for an async iterable."""
    method = details.method
    sent = 0
    try:  # (see _serialized)
        it = aiter(requests)
    except Exception as exc:
        raise _iterator_failed(details, exc) from exc
    while True:
        try:
            message = await anext(it)
        except StopAsyncIteration:
            if ended is not None:
                ended()
            return
        except (asyncio.CancelledError, Exception) as exc:  # the call's, or the iterator's
            if _call_cancelled(exc):
                raise
            raise _iterator_failed(details, exc) from exc
        if serializer is not None:
            out = serialize_message(method, serializer, message, details)
            if wire:
                message = out
        elif type(message) is not bytes:  # (one check per message of a bytes method)
            message = bytes_message(method, message, details)
        if messages is None:
            if call is not None:  # a replayed request's count: once per logical call
                sent += 1
                if sent > call.taken:
                    call.taken = sent
                    call.record.msg_sent += 1
        else:  # telemetry's count (grpc_client_msg_sent_total), straight on to the yield
            messages.msg_sent += 1
        yield message


def codec_error(details: Any) -> BaseException | None:
    """The codec error that ended ``details``' call, if one did (read where an attempt
    ended cancelled), and ``None`` while the current task itself is being cancelled (the
    caller's cancellation wins)."""
    err: BaseException | None = getattr(details, "codec_error", None)
    if err is None:
        return None
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None
    return err
