"""Registry data types and the :class:`Registry` protocol."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from meshkit.errors import ConfigError

__all__ = ["Instance", "Registry"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    """One running instance of a service, as registered and as discovered.

    Args:
        service: service name, e.g. ``"orderd"``; letters, digits, ``-``, ``_``, ``.``,
            1 to 63 characters (a DNS label, as Consul recommends for service names).
        instance_id: unique id of this instance across the registry, e.g. ``"orderd-1"``.
        host: address clients connect to (an IP or a host name), e.g. ``"127.0.0.1"``.
        port: TCP port, 1 to 65535.
        tags: free-form tags (Consul ``Tags``), e.g. ``("v2",)``.
        meta: string key/values (Consul ``Meta``), e.g. ``{"version": "v2", "zone": "a"}``.
        weight: relative weight for weighted balancers (Consul ``Weights.Passing``), >= 1.

    Raises:
        ConfigError: a field is out of range; the message quotes the bad value.

    Equality and hashing use every field but ``meta`` takes part in equality only.
    """

    service: str
    instance_id: str
    host: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    weight: int = 1

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.service):
            raise ConfigError(f"service name must match {_NAME_RE.pattern}, got {self.service!r}")
        if not self.instance_id or len(self.instance_id) > 128:
            raise ConfigError(f"instance_id must be 1..128 characters, got {self.instance_id!r}")
        if not self.host:
            raise ConfigError(f"host must not be empty, got {self.host!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port!r}")
        if self.weight < 1:
            raise ConfigError(f"weight must be >= 1, got {self.weight!r}")
        if not isinstance(self.tags, tuple):
            object.__setattr__(self, "tags", tuple(self.tags))
        for k, v in self.meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"meta keys and values must be strings, got {k!r}: {v!r}")

    @property
    def address(self) -> str:
        """``host:port`` as a gRPC target (IPv6 hosts are bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves and where clients find them.

    Implementations: :class:`meshkit.discovery.LocalRegistry` (embedded, one machine) and
    :class:`meshkit.discovery.ConsulRegistry` (Consul agent HTTP API). Pick one by URI with
    :func:`meshkit.discovery.registry_from_uri`.
    """

    async def register(self, instance: Instance) -> None:
        """Announce ``instance`` and keep it alive (heartbeat/TTL) until deregistered or closed.

        Raises:
            RegistryError: the backing store or agent refused or could not be reached.
        """
        ...

    async def deregister(self, instance: Instance) -> None:
        """Withdraw ``instance`` at once and stop its heartbeat. Unknown instances are ignored.

        Raises:
            RegistryError: the backing store or agent could not be reached.
        """
        ...

    def watch(self, service: str) -> AsyncIterator[frozenset[Instance]]:
        """Stream the live endpoint set of ``service``.

        Yields the current set first (possibly empty), then a new set each time it changes.
        A watch survives backend outages: it keeps the last known set (yielding nothing) and
        resumes when the backend is back. The iterator ends only when closed or cancelled.
        """
        ...

    async def close(self) -> None:
        """Stop heartbeats and watches and release resources. Does not deregister."""
        ...
