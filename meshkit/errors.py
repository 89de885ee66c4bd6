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
:class:`ConfigError`                  (raised at construction, never on the wire)
:class:`RegistryError`                (raised by registry calls, never on the wire)
====================================  ==============================

Foreign exceptions (sqlite3, aiohttp, consul, etcd's gateway errors) are translated at the
boundary: ``raise RegistryError(...) from exc``.
"""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError, Metadata

__all__ = [
    "ConfigError",
    "InvalidMetadataError",
    "MeshError",
    "MeshRpcError",
    "NoEndpointsError",
    "RegistryError",
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
    """

    def __init__(self, service: str, reason: str = "no endpoint is registered") -> None:
        self.service = service
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"service {service!r}: {reason}")


class InvalidMetadataError(MeshRpcError):
    """A call's request metadata cannot be sent: status ``INTERNAL``, as grpc-go reports
    it (grpc core refuses the call with an unnamed error otherwise).

    The rules are gRPC's (``PROTOCOL-HTTP2.md``, *Custom-Metadata*): a key is non-empty
    and made of ``[0-9a-z-_.]``; a key ending in ``-bin`` carries ``bytes``, any other a
    ``str`` (or ``bytes``) of printable ASCII (``0x20``-``0x7E``). Raised by a meshkit
    channel before it picks an endpoint, so the call makes no attempt, is not retried and
    counts against no endpoint.

    Args:
        key: the offending key; quoted in the status message (the value never is: it may
            be a credential).
        reason: what is wrong with the key or its value.
    """

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        super().__init__(grpc.StatusCode.INTERNAL, f"metadata key {key!r}: {reason}")
