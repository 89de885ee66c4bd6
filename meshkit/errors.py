"""One error tree for meshkit.

Every error meshkit raises derives from :class:`MeshError`. Errors that travel as
gRPC statuses to a caller derive from :class:`MeshRpcError`, which is also a
:class:`grpc.aio.AioRpcError`, so code that already catches ``AioRpcError`` and
looks at ``.code()`` keeps working:

====================================  ==============================
error                                 gRPC status
====================================  ==============================
:class:`NoEndpointsError`             ``UNAVAILABLE``
:class:`InvalidMetadataError`         ``INTERNAL`` (as grpc-go), raised before any attempt
:class:`RequestSerializationError`    ``INTERNAL`` (as grpc-go), raised before any attempt
:class:`RequestIteratorError`         ``UNKNOWN`` (as grpc's synchronous client), the stream ends
:class:`ResponseDeserializationError` ``INTERNAL`` (as grpc-go), the attempt failed
:class:`RequestStreamCutError`        (raised in a server's handler, never on the wire)
:class:`ConfigError`                  (raised at construction, never on the wire)
:class:`RegistryError`                (raised by registry calls, never on the wire)
====================================  ==============================

Foreign exceptions (sqlite3, aiohttp, consul, etcd's gateway errors) are translated at the
boundary: ``raise RegistryError(...) from exc``.
"""

from __future__ import annotations

import re

import grpc
from grpc.aio import AioRpcError, Metadata

__all__ = [
    "ConfigError",
    "InvalidCallError",
    "InvalidMetadataError",
    "MeshError",
    "MeshRpcError",
    "NoEndpointsError",
    "RegistryError",
    "RequestIteratorError",
    "RequestSerializationError",
    "RequestStreamCutError",
    "ResponseDeserializationError",
]


class MeshError(Exception):
    """Base class of every error meshkit raises."""


class ConfigError(MeshError, ValueError):
    """A configuration value is invalid.

    Raised when an options object or a URI is built, never on the first RPC. The
    message quotes the offending value, e.g. ``ttl_s must be > 0, got -1.0``.
    """


class RegistryError(MeshError):
    """A registry operation failed (the backing store or agent is unreachable or refused)."""


class MeshRpcError(AioRpcError, MeshError):
    """An RPC failure produced by meshkit itself rather than by the remote handler.

    Args:
        code: the gRPC status code carried to the caller.
        details: the human-readable status message; never contains secrets.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, Metadata(), Metadata(), details=details)


class NoEndpointsError(MeshRpcError):
    """No endpoint of ``service`` can take the call: status ``UNAVAILABLE``.

    Args:
        service: the dialed service name; it is named in the status message.
        reason: why there is no endpoint (none registered, all failing, ...).
        unresolved: the registry gave no first answer within the call's wait for it
            (``DialOptions.resolve_timeout_s``); kept as ``.unresolved``. The channel's
            retry policy does not retry such a call: a retry would only wait again.
    """

    def __init__(self, service: str, reason: str = "no endpoint is registered", *,
                 unresolved: bool = False) -> None:
        self.service = service
        self.unresolved = unresolved
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"service {service!r}: {reason}")


class InvalidCallError(MeshRpcError):
    """A call that cannot be sent as the caller made it: status ``INTERNAL``, as grpc-go
    reports such calls (``UNKNOWN`` for :class:`RequestIteratorError`). A meshkit channel
    raises it before it picks an endpoint (or, for a stream's request message, ends the
    stream with it), so the call is not retried (whatever the retry policy's codes) and
    counts against no endpoint. The message never quotes a value the caller passed."""


class InvalidMetadataError(InvalidCallError):
    """A call's request metadata cannot be sent (grpc core refuses the call with an
    unnamed error otherwise).

    The rules are gRPC's (``PROTOCOL-HTTP2.md``, *Custom-Metadata*): a key is non-empty
    and made of ``[0-9a-z-_.]``; a key ending in ``-bin`` carries ``bytes``, any other a
    ``str`` (or ``bytes``) of printable ASCII (``0x20``-``0x7E``). A ``grpc-status`` key
    is refused in request metadata: gRPC sends it only in response trailers, and with it
    grpc.aio reports the call ``OK`` without its response.

    Args:
        key: the offending key (kept as ``.key``); the status message quotes it when it
            has a key's shape (see :func:`describe_metadata_key`), else describes it
            without quoting it: a "key" of another shape is most likely a value given in
            its place (``-H 'authorization=Bearer id:secret'``, a pair swapped). The value
            is never quoted: it may be a credential.
        reason: what is wrong with the key or its value.
    """

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        super().__init__(grpc.StatusCode.INTERNAL,
                         f"{describe_metadata_key(key)}: {reason}")


_KEY_SHAPE = re.compile(r":?[0-9A-Za-z_.\-]{0,64}")


def describe_metadata_key(key: object) -> str:
    """``metadata key 'k'`` for an error message, the key quoted only when it has a key's
    shape: ``str`` or ``bytes`` of up to 64 characters of ``[0-9A-Za-z-_.]``, after a
    ``:`` or not (upper case and pseudo-headers such as ``:path`` included, so that a key
    refused for those is named; the empty key too). Any other key is described
    without its text (it may be a value or a credential given in a key's place): its
    length and the characters that make it no key (e.g. ``metadata key of 23 characters
    (not quoted: it holds ' ', '=')``), or its type for a key neither ``str`` nor
    ``bytes``."""
    if isinstance(key, bytes):
        text = key.decode("latin-1")
    elif isinstance(key, str):
        text = key
    else:
        return f"metadata key of type {type(key).__name__}"
    if _KEY_SHAPE.fullmatch(text):
        return f"metadata key {key!r}"
    odd = sorted({c for c in text if c.isascii() and c.isprintable()
                  and not (c.isalnum() or c in "_.-")})
    held = [repr(c) for c in odd[:5]]
    if any(not c.isascii() for c in text):
        held.append("non-ASCII characters")
    if any(c.isascii() and not c.isprintable() for c in text):
        held.append("control characters")
    why = f"it holds {', '.join(held)}" if held else "over 64 characters"
    plural = "" if len(text) == 1 else "s"
    return f"metadata key of {len(text)} character{plural} (not quoted: {why})"


class RequestSerializationError(InvalidCallError):
    """A unary request its method's ``request_serializer`` refused (or, for a method
    without one, a request that is not ``bytes``). grpc.aio would log the serializer's
    exception and send an empty message instead (grpc/grpc#34894); the status message
    names the method and the exception type, and the exception is the ``__cause__``
    (its text is not copied: it may hold a field's value).

    Args:
        method: the full method name, ``/pkg.Service/Method``.
        problem: what went wrong, e.g. ``"the request serializer raised ValueError"``.
    """

    def __init__(self, method: str, problem: str) -> None:
        self.method = method
        super().__init__(grpc.StatusCode.INTERNAL,
                         f"{method}: request could not be serialized: {problem}")


class RequestIteratorError(InvalidCallError):
    """The request iterator of a client- or bidi-streaming call raised: the stream ends
    with status ``UNKNOWN`` (grpc's synchronous client says "Exception iterating
    requests!"; grpc.aio cancels the call and the caller's ``await`` raises
    ``asyncio.CancelledError`` in a task nobody cancelled). The status message names the
    method and the exception type; the exception is the ``__cause__`` (its text is not
    copied).

    Args:
        method: the full method name, ``/pkg.Service/Method``.
        error: the iterator's exception type name.
    """

    def __init__(self, method: str, error: str) -> None:
        self.method = method
        super().__init__(grpc.StatusCode.UNKNOWN,
                         f"{method}: the request iterator raised {error}")


class RequestStreamCutError(MeshError, grpc.RpcError):
    """Raised by a plain-function (``def``) handler's request iterator, on a server, in
    place of the end of a request stream that ended with its call before its client
    half-closed it: its deadline passed, its caller cancelled, or grpc core refused a
    message over the server's ``max_receive_message_bytes`` (or a compressed one
    inflating past it). grpc.aio reads such a stream as ended, and the handler would act
    on a truncated request stream as on the whole one; a synchronous ``grpc.server``'s
    iterator raises ``grpc.RpcError`` there, as this one (a ``grpc.RpcError``) does. The
    call has ended: its caller already has its status, and nothing the handler answers
    is sent."""

    def __init__(self) -> None:
        super().__init__("the request stream ended with its call, before its client "
                         "half-closed it (the call's deadline passed, its caller "
                         "cancelled, or a message was over the server's receive limit)")


class ResponseDeserializationError(MeshRpcError):
    """A unary response its method's ``response_deserializer`` refused: status
    ``INTERNAL`` (grpc.aio would log the exception and hand the caller ``None``). It is
    the answering endpoint's failure: counted against it and retried where the policy
    retries ``INTERNAL``. The exception is the ``__cause__``.

    Args:
        method: the full method name.
        error: the deserializer's exception type name.
    """

    def __init__(self, method: str, error: str) -> None:
        self.method = method
        super().__init__(grpc.StatusCode.INTERNAL,
                         f"{method}: response could not be deserialized: the response "
                         f"deserializer raised {error}")
