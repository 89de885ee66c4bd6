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
:class:`ServerStats`, :class:`EndpointStats`, :class:`RetrySnapshot`), and
:data:`DOWNSTREAM_STATUS_KEY` (``"meshkit-downstream-status"``: the trailer a meshkit
server answers with, beside ``RESOURCE_EXHAUSTED``, when a call its handler made was
refused ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED`` and the error escaped; its value the
root refusal's code name, carried up a chain of any length).

Packages: :mod:`meshkit.discovery` (registries: local, Consul, etcd),
:mod:`meshkit.balancer` (balancers, filters, outlier ejection), :mod:`meshkit.resilience`
(retries, hedging, budgets, deadlines, rate limits), :mod:`meshkit.auth` (mTLS, JWT,
authorization), :mod:`meshkit.observability` (tracing, metrics, logs, admin server),
:mod:`meshkit.messaging` (NATS JetStream events, the ``meshkit[nats]`` extra),
:mod:`meshkit.interceptors` (per-call client interceptors), :mod:`meshkit.errors` (the
error tree).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from meshkit._lazy import first_read_lock

if TYPE_CHECKING:
    from meshkit._loop import run, uvloop_installed
    from meshkit._stats import ChannelStats, EndpointStats, RetrySnapshot, ServerStats
    from meshkit._unhandled import DOWNSTREAM_STATUS_KEY
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
        RequestStreamCutError,
        ResponseDeserializationError,
    )
    from meshkit.interceptors import CallKind, ClientCallDetails, ClientInterceptor
    from meshkit.server import MeshServer, ServeOptions, ServerLimits, serve, server_chain

__version__ = "0.1.0"

__all__ = [
    "DOWNSTREAM_STATUS_KEY",
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
    "RequestStreamCutError",
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

# Where each public name lives. ``import meshkit`` itself loads none of them (grpc,
# aiohttp, cryptography, ...): a name's module is imported when the name is first read
# (PEP 562), so ``meshkit.cli`` starts inside its own ``try`` (a Ctrl-C while the command
# is still loading is its one line and status 130, not a traceback) and a program pays
# for the parts it uses.
_LAZY = {
    **dict.fromkeys(("run", "uvloop_installed"), "meshkit._loop"),
    "DOWNSTREAM_STATUS_KEY": "meshkit._unhandled",
    **dict.fromkeys(("ChannelStats", "EndpointStats", "RetrySnapshot", "ServerStats"),
                    "meshkit._stats"),
    **dict.fromkeys(("DialOptions", "MeshChannel", "dial"), "meshkit.channel"),
    **dict.fromkeys(("Instance", "Registry", "registry_from_env", "registry_from_uri"),
                    "meshkit.discovery"),
    **dict.fromkeys(("ConfigError", "InvalidCallError", "InvalidMetadataError", "MeshError",
                     "MeshRpcError", "NoEndpointsError", "RegistryError",
                     "RequestIteratorError", "RequestSerializationError",
                     "RequestStreamCutError", "ResponseDeserializationError"),
                    "meshkit.errors"),
    **dict.fromkeys(("CallKind", "ClientCallDetails", "ClientInterceptor"),
                    "meshkit.interceptors"),
    **dict.fromkeys(("MeshServer", "ServeOptions", "ServerLimits", "serve", "server_chain"),
                    "meshkit.server"),
}

# The public modules ``meshkit.<name>`` reads after a bare ``import meshkit`` (each
# imported when first read; the import then makes it an attribute of the package).
_SUBPACKAGES = frozenset({"auth", "balancer", "channel", "cli", "discovery", "errors",
                          "interceptors", "messaging", "observability", "resilience",
                          "server"})


if not TYPE_CHECKING:
    # Hidden from type checkers: to them a module __getattr__ makes every name exist (as
    # Any), so a misspelled import would pass; they see the names imported above.

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            if name in _SUBPACKAGES:  # ``import meshkit; meshkit.auth.current_claims()``
                with first_read_lock():
                    return importlib.import_module(f"meshkit.{name}")
            raise AttributeError(f"module 'meshkit' has no attribute {name!r}")
        with first_read_lock():  # one thread imports at a time (see meshkit._lazy)
            value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # read once: later reads are plain module attributes
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
