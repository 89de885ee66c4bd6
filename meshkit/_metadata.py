"""Request metadata checked against gRPC's rules before a call is attempted.

grpc core refuses a call whose metadata breaks the rules of gRPC over HTTP/2
(``PROTOCOL-HTTP2.md``, *Custom-Metadata*): grpc.aio then raises a bare
``ExecuteBatchError`` (unary) or ``INTERNAL`` "Invalid metadata" (streams) that names
nothing, after the balancer has counted an attempt it never sees end. meshkit's channel
checks the metadata of every attempt first (:func:`check_metadata`, only when the call has
metadata) and raises :class:`~meshkit.errors.InvalidMetadataError` naming the key.

Keys already seen legal are remembered (a bounded dict: keys repeat from call to call), so
a call pays one dict lookup per key and, for a text value, an ASCII flag check and one
``bytes.translate``.

On the server side, :func:`call_metadata` reads an incoming call's metadata once for every
check of the call that needs it.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable
from typing import Any

from meshkit import __version__
from meshkit.errors import InvalidMetadataError

__all__ = ["MESH_USER_AGENT", "PREVIOUS_ATTEMPTS", "LoggedMetadata", "call_metadata",
           "check_metadata", "logged_metadata", "with_previous_attempts"]

MESH_USER_AGENT = f"meshkit/{__version__}"
"""The product token every sub-channel of a ``MeshChannel`` adds to its ``user-agent``
header (the channel option ``grpc.secondary_user_agent``, set once per sub-channel: no
per-call metadata), e.g. ``grpc-python-asyncio/1.85.4 grpc-c/58.0.0 (linux; chttp2)
meshkit/0.1.0``; a ``grpc.secondary_user_agent`` of the user's own comes before it (grpc
core joins them). A draining ``MeshServer`` reads it to tell mesh clients, which retry its
nacked refusals elsewhere whatever the method, from other gRPC clients, which it leaves
to the GOAWAY of grpc's stop (:meth:`meshkit.MeshServer.drain`)."""

PREVIOUS_ATTEMPTS = "meshkit-previous-rpc-attempts"
"""The request header of a retry or a hedge meshkit sends: how many attempts of the call
went before it (``"1"`` on the second attempt; none on the first), the value gRFC A6's
``grpc-previous-rpc-attempts`` ("Exposed Retry Metadata") carries. Any server or proxy
sees it (a grpc-python handler in ``invocation_metadata()``), as do attempt interceptors.

Not A6's own key: grpc core's client retry filter owns that one and sets it from its
*own* attempts (its transparent retries), removing it from every first attempt, and each
meshkit attempt is a first attempt to grpc core; a value meshkit set never reached the
wire (seen on the wire with grpcio 1.85). Taking the filter out
(``grpc.enable_retries=0``) would let it through, but would end grpc core's transparent
retries: a call that met a GOAWAY before the server saw it, which grpc core sends again
on a new connection, then fails ``UNAVAILABLE``, and meshkit cannot tell such a call from
one the server ran, so a call not safe to repeat would not be retried."""


def with_previous_attempts(metadata: list[tuple[str, Any]],
                           previous: int) -> list[tuple[str, Any]]:
    """A new list: ``metadata`` with :data:`PREVIOUS_ATTEMPTS` set to ``previous`` (the
    attempts of the call before this one; an earlier value of the header replaced)."""
    out = [kv for kv in metadata if kv[0] != PREVIOUS_ATTEMPTS]
    out.append((PREVIOUS_ATTEMPTS, str(previous)))
    return out

# (context, its invocation metadata) of the call whose task this is: grpc.aio runs each
# call in a task of its own, so the value goes with the task
_CALL_MD: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "meshkit_call_metadata", default=None)


def call_metadata(context: Any) -> Any:
    """``context.invocation_metadata()`` (a tuple of ``(key, value)`` pairs, or ``None``),
    read once per call: grpc.aio builds a new tuple of the call's metadata on every read
    (about 1.5 us with a bearer token and a ``traceparent``), and a server with tracing
    and JWT checks reads it twice per call. Kept in a context variable of the call's own
    task, keyed by ``context``, so it ends with the call."""
    got = _CALL_MD.get()
    if got is not None and got[0] is context:
        return got[1]
    md = context.invocation_metadata()
    _CALL_MD.set((context, md))
    return md


LoggedMetadata = dict[str, str | list[str]]
"""An access log's ``md``: see :func:`logged_metadata`."""


def logged_metadata(metadata: Iterable[Any],
                    keys: tuple[str, ...]) -> LoggedMetadata | None:
    """The values of ``metadata`` under ``keys`` as an access log's ``md`` (``None`` when
    there is none): a key the metadata carries once maps to its value, one it carries
    more than once (metadata is a multimap) to the list of its values, in order. A key or
    value given as ``bytes`` (text keys and values may be, printable ASCII) is shown as
    text, a byte outside ASCII escaped (``\\xff``); any other value is left out. A value's
    characters that are not printable are escaped as ``repr`` writes them (``\\x1b``,
    ``\\u202e``: :func:`meshkit._log.printable`), as the access line writes a method
    name: a gRPC library sends printable ASCII only, but a raw HTTP/2 peer sends any
    octets and grpc core hands them on, and the JSON line escapes only what RFC 8259
    requires, so a right-to-left override, a C1 control (U+009B CSI) or U+2028 reached
    the log raw. A credential in a value (a key not named for one can carry one:
    ``x-callback: https://u:pw@h/``, ``host=db password=pw``, ``Bearer <token>``) is
    ``[REDACTED]`` as in every other log field (:func:`meshkit._log.redact_text`), read
    only in a value holding ``@``, ``=``, ``:`` or ``earer``: the access line does not
    pass through :func:`meshkit._log.redact_secrets`. An item of ``metadata`` that is no
    ``(key, value)`` pair (a ``str``: a
    ``dict``'s key; a tuple of another length), which makes the call itself fail, is
    passed over: the call's line is written all the same (this never raises for the
    metadata's shape)."""
    out: LoggedMetadata = {}
    for pair in metadata:
        # an item that is no (key, value) pair (a dict's key: the channel keeps a dict's
        # keys; a pair of 3): a call check_metadata refuses, whose line is still written
        if type(pair) is str:
            continue
        try:
            key, value = pair
        except (TypeError, ValueError):
            continue
        if type(key) is not str:
            if not isinstance(key, bytes | str):
                continue
            key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if key not in keys:
            continue
        if not isinstance(value, str):
            if not isinstance(value, bytes):
                continue
            value = value.decode("ascii", "backslashreplace")
        if "@" in value or "=" in value or ":" in value or "earer" in value or (
                "EARER" in value):  # could hold a credential: read (a plain id: 5 checks)
            from meshkit._log import redact_text  # (structlog: not for every importer)

            value = redact_text(value)
        if not value.isprintable():  # a raw peer's (the usual value: this one check)
            from meshkit._log import printable  # (structlog: not for every importer)

            value = printable(value)
        had = out.get(key)
        if had is None:
            out[key] = value
        elif isinstance(had, list):
            had.append(value)
        else:
            out[key] = [had, value]
    return out or None

_KEY = re.compile(r"[0-9a-z_.\-]+")
_ASCII_VALUE = re.compile(rb"[\x20-\x7e]*")
# printable ASCII: what bytes.translate deletes from a legal text value, leaving nothing.
# Twice as fast as str.isprintable(), which looks each character up in the Unicode
# database: about 12k instructions per call for a 400-character bearer token (callgrind)
_PRINTABLE = bytes(range(0x20, 0x7F))

# legal keys seen so far -> whether the key is binary (ends in "-bin")
_KEYS: dict[str, bool] = {}
_MAX_KEYS = 4096


# gRPC's status header: a response's trailers only (PROTOCOL-HTTP2.md, "Status");
# grpcio sends it as request metadata, and a non-zero value makes the client end the
# call OK with no messages while the server ran it (a server stream's messages lost).
# Never remembered in _KEYS: a request check must see it every time
_STATUS_KEY = "grpc-status"
_STATUS_REASON = ("gRPC sends it only in a response's trailers (PROTOCOL-HTTP2.md, "
                  "'Status'; 'grpc-' names are reserved): as request metadata it makes "
                  "the call end OK without its response")


# gRPC's deadline header: a request's only (PROTOCOL-HTTP2.md, "Requests"); grpc core
# CHECK-fails (aborts the process) sending it in a server's initial or trailing metadata,
# whatever its value. Never remembered in _KEYS: a handler's check must see it every time
_TIMEOUT_KEY = "grpc-timeout"
_TIMEOUT_REASON = ("gRPC sends it only in a request's headers (PROTOCOL-HTTP2.md, "
                   "'Requests'): sent by a server, grpc core aborts the process")


def _learn(key: Any, request: bool = False) -> bool:
    """Whether legal ``key`` is binary, remembered (but ``grpc-status``, refused in
    ``request`` metadata, and ``grpc-timeout``, refused in any other); raises for an
    illegal key (never remembered, so it is checked again at each call)."""
    if type(key) is not str:
        if not isinstance(key, str | bytes):
            raise InvalidMetadataError(key, f"a key must be str, got {type(key).__name__}")
        text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if _KEY.fullmatch(text) is None:
            raise InvalidMetadataError(key, "a key is lower-case [0-9a-z-_.], non-empty")
        if request and text == _STATUS_KEY:
            raise InvalidMetadataError(key, _STATUS_REASON)
        if not request and text == _TIMEOUT_KEY:
            raise InvalidMetadataError(key, _TIMEOUT_REASON)
        return text.endswith("-bin")
    if _KEY.fullmatch(key) is None:
        raise InvalidMetadataError(key, "a key is lower-case [0-9a-z-_.], non-empty")
    if key == _STATUS_KEY:
        if request:
            raise InvalidMetadataError(key, _STATUS_REASON)
        return False
    if key == _TIMEOUT_KEY:
        if not request:
            raise InvalidMetadataError(key, _TIMEOUT_REASON)
        return False
    binary = key.endswith("-bin")
    if len(_KEYS) >= _MAX_KEYS:
        _KEYS.clear()
    _KEYS[key] = binary
    return binary


# a str where a (key, value) pair belongs: unpacked, a two-letter key became a pair of its
# letters (sent, its value lost) and a longer one a bare ValueError naming nothing
_NOT_A_PAIR = ("metadata is a sequence of (key, value) pairs, got {} in place of a pair "
               "(metadata given as a dict? pass dict.items())")


def _check_not_text(item: Any) -> None:
    """Raise :class:`InvalidMetadataError` for an ``item`` of metadata that is no tuple
    and is text: a ``str`` (a ``StrEnum`` of header names included), ``bytes`` or
    ``bytearray``, a dict's key or a header line; another item (a list pair) is left to
    the unpacking."""
    if isinstance(item, str):
        raise InvalidMetadataError(str(item), _NOT_A_PAIR.format("a str"))
    if isinstance(item, bytes | bytearray):
        raise InvalidMetadataError(bytes(item), _NOT_A_PAIR.format(
            "bytes" if isinstance(item, bytes) else "a bytearray"))


def check_metadata(metadata: Iterable[Any], request: bool = False) -> None:
    """Check ``metadata`` (``(key, value)`` pairs) against gRPC's rules.

    A key is non-empty ``[0-9a-z-_.]``; a ``-bin`` key's value is ``bytes`` (any bytes);
    any other key's value is ``str`` or ``bytes`` of printable ASCII (``0x20``-``0x7E``).
    With ``request`` (a call's request metadata; default ``False``: a handler's
    trailing metadata), a key is also not ``grpc-status``: gRPC sends it only in a
    response's trailers (PROTOCOL-HTTP2.md), and grpcio sends it as request metadata,
    where a non-zero value ends the call ``OK`` without its response (a server stream's
    messages lost) while the server ran it. (In trailing metadata grpc core's own status
    replaces it: a plain grpc.aio server answers as if it were not there.) Without
    ``request`` (a handler's metadata), a key is not ``grpc-timeout``, a request header
    only: grpc core aborts the server's process sending it (as request metadata grpc
    core leaves it out, the call's own deadline sent).

    A ``str`` (a ``StrEnum``'s member too) or ``bytes`` in place of a pair is refused
    too: metadata given as a ``dict``, which the channel's ``list(metadata)`` turns into
    its keys (a two-letter key would otherwise go out split into a key and a value, its
    own value lost), or as header lines.

    Raises:
        InvalidMetadataError: the first pair that breaks a rule, or a ``str`` or
            ``bytes`` in place of a pair (status ``INTERNAL``; the message quotes the
            key, or the ``str`` when it has a key's shape, never a value).
        ValueError, TypeError: ``metadata`` is not a sequence of pairs (an item that
            is no ``str``, no ``bytes`` and no pair: a tuple of 3).
    """
    keys = _KEYS
    for pair in metadata:
        if type(pair) is not tuple:  # (a pair is a tuple: one check for the usual case)
            _check_not_text(pair)  # a dict's key (list(metadata) of a dict), header line
        key, value = pair
        binary = keys.get(key) if type(key) is str else None
        if binary is None:
            binary = _learn(key, request)
        if binary:
            if not isinstance(value, bytes):
                raise InvalidMetadataError(
                    key, f"a '-bin' key's value must be bytes, got {type(value).__name__}")
        elif type(value) is str:
            if not value.isascii() or value.encode().translate(None, _PRINTABLE):
                raise InvalidMetadataError(
                    key, "a text value must be printable ASCII (0x20-0x7E); "
                         "send other values under a '-bin' key, as bytes")
        elif isinstance(value, bytes | str):
            if isinstance(value, str):  # a str subclass
                value = str(value).encode("utf-8")
            if _ASCII_VALUE.fullmatch(value) is None:
                raise InvalidMetadataError(
                    key, "a text value must be printable ASCII (0x20-0x7E); "
                         "send other values under a '-bin' key, as bytes")
        else:
            raise InvalidMetadataError(
                key, f"a value must be str or bytes, got {type(value).__name__}")
