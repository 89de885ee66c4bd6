"""OpenTelemetry RPC semantic conventions for gRPC, computed once per method.

Span name ``{rpc.service}/{rpc.method}`` (e.g. ``ecom.v1.OrderService/PlaceOrder``);
attributes ``rpc.system="grpc"``, ``rpc.service`` (full service name), ``rpc.method``
(method name), ``rpc.grpc.status_code`` (int), ``server.address`` (client: the dialed
mesh service, which has no one port, so no ``server.port``),
``network.peer.address``/``network.peer.port`` (both sides: the other end of the
connection; on the client the endpoint the call settled on).

Span status (semconv gRPC): a client span is an error for any code but ``OK``; a server
span only for ``UNKNOWN``, ``DEADLINE_EXCEEDED``, ``UNIMPLEMENTED``, ``INTERNAL``,
``UNAVAILABLE`` and ``DATA_LOSS`` (the other codes are the caller's problem).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import grpc

__all__ = [
    "ATTR_ATTEMPTS",
    "ATTR_INSTANCE_ID",
    "ATTR_PEER_IDENTITY",
    "ATTR_RATE_LIMITED",
    "SERVER_ERROR_CODES",
    "MethodNames",
    "parse_peer",
]

RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
CLIENT_PORT = "client.port"
NETWORK_PEER_ADDRESS = "network.peer.address"
NETWORK_PEER_PORT = "network.peer.port"
NETWORK_TRANSPORT = "network.transport"
NETWORK_TYPE = "network.type"
ERROR_TYPE = "error.type"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_ESCAPED = "exception.escaped"

ATTR_ATTEMPTS = "meshkit.attempts"
"""Attempts made by a logical client call (1 without retries)."""
ATTR_INSTANCE_ID = "meshkit.instance_id"
"""The registry instance id of the endpoint an attempt went to."""
ATTR_PEER_IDENTITY = "meshkit.peer.identity"
"""The verified SPIFFE ID of the caller (server spans; mTLS only)."""
ATTR_RATE_LIMITED = "meshkit.rate_limited"
"""``True`` on server spans of calls the rate limiter refused
(:func:`meshkit.resilience.rejected_by_rate_limit`), and on client spans of calls answered
``RESOURCE_EXHAUSTED`` (the client cannot tell the limiter from a handler)."""

# the statuses the reporters compare per call, by identity (an Enum member hashes in Python)
STATUS_OK = grpc.StatusCode.OK
STATUS_UNKNOWN = grpc.StatusCode.UNKNOWN
STATUS_CANCELLED = grpc.StatusCode.CANCELLED
STATUS_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
STATUS_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
STATUS_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})

_TYPE_NAMES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """go-grpc-prometheus ``grpc_type``: ``unary``, ``client_stream``, ``server_stream``
    or ``bidi_stream``."""
    return _TYPE_NAMES[(request_streaming, response_streaming)]


class MethodNames:
    """The names of one gRPC method, split once.

    Args:
        method: full method, ``/ecom.v1.OrderService/PlaceOrder``: the text after the last
            ``/`` is the method, the rest the service (``"unknown"`` when a part is empty).
        grpc_type: see :func:`grpc_type`.

    Attributes:
        full: the full method as given; service: ``ecom.v1.OrderService``; name:
            ``PlaceOrder``; span_name: ``ecom.v1.OrderService/PlaceOrder``; grpc_type.
    """

    __slots__ = ("full", "grpc_type", "name", "service", "span_name")

    def __init__(self, method: str, grpc_type: str) -> None:
        self.full = method
        service, _, name = method.lstrip("/").rpartition("/")
        self.service = service or "unknown"
        self.name = name or "unknown"
        self.span_name = f"{self.service}/{self.name}"
        self.grpc_type = grpc_type

    def span_attributes(self) -> dict[str, Any]:
        """The attributes known before the call starts (rpc.system/service/method)."""
        return {RPC_SYSTEM: "grpc", RPC_SERVICE: self.service, RPC_METHOD: self.name}


def parse_peer(peer: str | None) -> tuple[str | None, int | None]:
    """Split a grpc peer string into address and port.

    ``"ipv4:127.0.0.1:5050"`` -> ``("127.0.0.1", 5050)``; ``"ipv6:[::1]:5050"`` ->
    ``("::1", 5050)``, also as grpc core (1.6x on) writes it, percent-encoded:
    ``"ipv6:%5B::1%5D:5050"`` (a zone ``%25eth0`` becomes ``%eth0``); ``"unix:/tmp/s"``
    -> ``("/tmp/s", None)``; ``None``/garbage -> ``(None, None)`` or the whole string
    without a port.
    """
    if not peer:
        return None, None
    if "%" in peer:
        peer = unquote(peer)
    kind, _, rest = peer.partition(":")
    if kind == "unix" or not rest:
        return (rest or peer), None
    host, _, port = rest.rpartition(":")
    if not host:
        return rest, None
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        return rest, None
