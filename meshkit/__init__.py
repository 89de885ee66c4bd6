"""meshkit: what a service mesh gives gRPC services, in-process, for grpc.aio.

* :func:`dial` returns a balanced channel to a service found through a registry; give it
  to any generated stub.
* :func:`serve` runs servicers on a grpc.aio server with health and reflection, registers
  the instance, and drains on SIGTERM.

Example::

    import meshkit

    async def main() -> None:
        async with meshkit.dial("userd") as channel:
            users = UserServiceStub(channel)
            print(await users.GetUser(GetUserRequest(user_id="u1"), timeout=1.0))

Also here: :func:`server_chain` (the interceptors ``serve()`` installs, in the one
documented order) and the typed snapshots ``stats()`` returns (:class:`ChannelStats`,
:class:`ServerStats`, :class:`EndpointStats`, :class:`RetrySnapshot`).

Packages: :mod:`meshkit.discovery` (registries, balancers), :mod:`meshkit.interceptors`
(per-call client interceptors), :mod:`meshkit.errors` (the error tree).
"""

from __future__ import annotations

from meshkit._loop import run, uvloop_installed
from meshkit._stats import ChannelStats, EndpointStats, RetrySnapshot, ServerStats
from meshkit.channel import DialOptions, MeshChannel, dial
from meshkit.discovery import Instance, Registry, registry_from_env, registry_from_uri
from meshkit.errors import (
    ConfigError,
    InvalidCallError,
    InvalidMetadataError,
    MeshError,
    MeshRpcError,
    NoEndpointsError,
    RegistryError,
    RequestIteratorError,
    RequestSerializationError,
    ResponseDeserializationError,
)
from meshkit.interceptors import CallKind, ClientCallDetails, ClientInterceptor
from meshkit.server import MeshServer, ServeOptions, ServerLimits, serve, server_chain

__version__ = "0.1.0"

__all__ = [
    "CallKind",
    "ChannelStats",
    "ClientCallDetails",
    "ClientInterceptor",
    "ConfigError",
    "DialOptions",
    "EndpointStats",
    "Instance",
    "InvalidCallError",
    "InvalidMetadataError",
    "MeshChannel",
    "MeshError",
    "MeshRpcError",
    "MeshServer",
    "NoEndpointsError",
    "Registry",
    "RegistryError",
    "RequestIteratorError",
    "RequestSerializationError",
    "ResponseDeserializationError",
    "RetrySnapshot",
    "ServeOptions",
    "ServerLimits",
    "ServerStats",
    "__version__",
    "dial",
    "registry_from_env",
    "registry_from_uri",
    "run",
    "serve",
    "server_chain",
    "uvloop_installed",
]
