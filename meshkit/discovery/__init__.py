"""Service discovery: the registry protocol and three registries.

A :class:`Registry` announces instances (``register``/``deregister``) and streams the live
set of a service (``watch``). Three implementations:

* :class:`LocalRegistry` (default): one SQLite file shared by the processes of a machine,
  liveness by heartbeat with a TTL (``ttl_s`` 3 s), watchers poll every 0.25 s.
* :class:`ConsulRegistry`: a Consul agent's HTTP API (blocking queries on
  ``/v1/health/service/<name>?passing``), configured like Consul's CLI by
  ``CONSUL_HTTP_ADDR`` / ``CONSUL_HTTP_TOKEN``.
* :class:`EtcdRegistry`: etcd v3 through its JSON gateway (aiohttp): instances are keys under
  a lease (``ttl_s`` 10 s) kept alive by the registry, watches follow a watch stream with
  revision resume; configured like etcdctl by ``ETCDCTL_ENDPOINTS``.

Pick one by URI, ``local:///path/to/dir``, ``consul://127.0.0.1:8500`` or
``etcd://10.0.0.1:2379,10.0.0.2:2379``, or by the ``MESHKIT_REGISTRY`` environment
variable::

    registry = registry_from_uri("local:///tmp/mesh")
    await registry.register(Instance(service="orderd", instance_id="orderd-1",
                                     host="127.0.0.1", port=50051))
    async for instances in registry.watch("orderd"):
        print(sorted(i.address for i in instances))

Each of the three also reads a service once for a one-shot listing (``meshkit services``,
``prometheus-targets``): ``snapshot(service)`` gives a :class:`ServiceSnapshot`, the live
instances (what a new watch yields first) and the failing ones (``failing(service)``:
registered, their owner died or hangs, not deregistered), from one read. It is no part of
the :class:`Registry` protocol: a registry of another package may lack it.

Balancers, which choose an endpoint per call among what discovery returns, live in
:mod:`meshkit.balancer`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import meshkit._log  # noqa: F401  (meshkit's loggers quiet until logging is configured)
from meshkit.discovery._local import (
    LocalOptions,
    LocalRegistry,
    _local_dir_from_env,
    _per_user_dir,
    default_local_path,
)
from meshkit.discovery._options import parse_uri, query_fields, shown_uri
from meshkit.discovery._types import Instance, Registry, RegistryStatus, ServiceSnapshot
from meshkit.errors import ConfigError

if TYPE_CHECKING:
    from meshkit.discovery._consul import ConsulOptions, ConsulRegistry
    from meshkit.discovery._etcd import EtcdOptions, EtcdRegistry

__all__ = [
    "ConsulOptions",
    "ConsulRegistry",
    "EtcdOptions",
    "EtcdRegistry",
    "Instance",
    "LocalOptions",
    "LocalRegistry",
    "Registry",
    "RegistryStatus",
    "ServiceSnapshot",
    "default_local_path",
    "registry_from_env",
    "registry_from_uri",
]

ENV_VAR = "MESHKIT_REGISTRY"


if not TYPE_CHECKING:
    # Hidden from type checkers: to them a module __getattr__ makes every name exist (as
    # Any), so a misspelled import would pass; they see the lazy names imported above.

    def __getattr__(name: str) -> Any:
        # Consul support imports consul.aio (and aiohttp) only when asked for.
        if name in ("ConsulOptions", "ConsulRegistry"):
            try:
                return getattr(_consul_module(), name)
            except ConfigError as exc:
                raise ImportError(str(exc), name=name) from exc.__cause__
        if name in ("EtcdOptions", "EtcdRegistry"):
            from meshkit.discovery import _etcd

            return getattr(_etcd, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _consul_module() -> Any:
    """:mod:`meshkit.discovery._consul`, which needs py-consul (the ``meshkit[consul]``
    extra).

    Raises:
        ConfigError: py-consul is not installed (the message says how to install it).
    """
    try:
        from meshkit.discovery import _consul
    except ImportError as exc:
        raise ConfigError(
            f"the Consul registry needs py-consul, which is not installed ({exc.name}): "
            "pip install 'meshkit[consul]'") from exc
    return _consul


_LOCAL_URI_FIELDS = ("ttl_s", "poll_interval_s", "heartbeat_interval_s", "busy_timeout_s",
                     "fault_grace_s")


def registry_from_uri(uri: str, *, environ: Mapping[str, str] | None = None) -> Registry:
    """Build a registry from a URI.

    ``environ`` (default ``os.environ``) holds the variables the registry reads besides
    the URI: ``CONSUL_*``, ``ETCDCTL_*``, and ``MESHKIT_LOCAL_DIR`` for ``local://``.

    Forms:
        * ``local:///abs/path`` (directory or ``.db`` file, by :class:`LocalOptions`' rule:
          ``local:///srv/run.db/``, with its trailing slash, is a directory;
          ``local://localhost/abs/path``
          the same, as ``file:`` URIs have it) or ``local://`` (default path:
          ``$MESHKIT_LOCAL_DIR``, else ``<tmp>/meshkit-<uid>``, used only if it is the
          user's own and not writable by others, see :class:`LocalOptions`);
          query ``?ttl_s=3&poll_interval_s=0.25`` (also ``heartbeat_interval_s``,
          ``busy_timeout_s``, ``fault_grace_s``) sets :class:`LocalOptions`.
        * ``consul://host:port`` or ``consul+https://host:port`` (query options as
          :meth:`ConsulRegistry.from_uri` documents); ``CONSUL_HTTP_TOKEN`` applies.
        * ``etcd://host:2379[,host2:2379]`` or ``etcd+https://host:2379,...`` (query options
          as :meth:`EtcdRegistry.from_uri` documents); ``etcd://`` alone takes
          ``ETCDCTL_ENDPOINTS``; ``ETCDCTL_CACERT``/``ETCDCTL_CERT``/``ETCDCTL_KEY`` and
          ``ETCDCTL_INSECURE_TRANSPORT`` apply as etcdctl reads them, and so do
          ``ETCDCTL_USER``/``ETCDCTL_PASSWORD`` (:meth:`EtcdOptions.from_env`).

    Raises:
        ConfigError: ``uri`` is no string (``None``, a ``pathlib.Path``, ``bytes``: named
            by its type), unknown scheme, bad option value or a URI that cannot be parsed (an
            unbalanced ``[``: ``consul://[::1:8500``), a ``local:`` URI with a host other
            than ``localhost`` or a relative path (``local://tmp/mesh``, two slashes,
            names the host ``tmp``; ``local:tmp/mesh``), which would be a path under each
            process's working directory, as would a relative ``MESHKIT_LOCAL_DIR`` for
            ``local://``, or a ``local:`` URI holding ``#`` (it would end the path:
            ``%23`` is a ``#`` in a directory name) (the URI is quoted, any user info
            and the values of query keys that are no option masked: ``***``); a Consul URI
            without py-consul installed (``meshkit[consul]``).
    """
    parts = parse_uri(uri, "registry URI")
    scheme = parts.scheme.lower()
    if scheme == "local":
        # keep_blank_values: ``?ttl_s=`` is an error, not the default silently kept
        kwargs: dict[str, Any] = query_fields(
            parse_qs(parts.query, keep_blank_values=True), floats=_LOCAL_URI_FIELDS,
            strs=(), where=f"registry URI {shown_uri(uri, _LOCAL_URI_FIELDS)!r}")
        raw_path = unquote(parts.path)
        # "local://tmp/mesh" (two slashes) has the host "tmp", "local:tmp/mesh" a relative
        # path: either would be a path under each process's working directory, so a server
        # and a client started from two directories would use two registries unawares
        if (parts.netloc.lower() not in ("", "localhost")
                or (raw_path and not Path(raw_path).is_absolute())):
            raise ConfigError(
                f"registry URI {shown_uri(uri, _LOCAL_URI_FIELDS)!r}: a local registry "
                "needs an absolute path, local:///abs/path (three slashes; or "
                "local://localhost/abs/path), or local:// for the default path")
        if "#" in uri:
            # "#" ends the path: local:///srv/c#1/mesh would name /srv/c, silently
            raise ConfigError(
                f"registry URI {shown_uri(uri, _LOCAL_URI_FIELDS)!r}: a local registry URI "
                "has no fragment; a '#' in its path is written %23")
        if raw_path:
            # the text, not Path(): a trailing slash says "directory" (LocalOptions.path)
            kwargs["path"] = raw_path
        elif environ is not None:
            kwargs["path"] = _default_local_path(environ)
        return LocalRegistry(LocalOptions(**kwargs))
    if scheme in ("consul", "consul+http", "consul+https"):
        registry: Registry = _consul_module().ConsulRegistry.from_uri(uri, environ=environ)
        return registry
    if scheme in ("etcd", "etcd+http", "etcd+https"):
        from meshkit.discovery._etcd import EtcdRegistry

        return EtcdRegistry.from_uri(uri, environ=environ)
    raise ConfigError(
        f"unknown registry URI {shown_uri(uri)!r}: expected local:///path, consul://host:port "
        "or etcd://host:port[,host:port]"
    )


def _default_local_path(environ: Mapping[str, str]) -> Path:
    """:func:`default_local_path` with ``MESHKIT_LOCAL_DIR`` read from ``environ``."""
    base = environ.get("MESHKIT_LOCAL_DIR", "").strip()  # blank: unset
    return (_local_dir_from_env(base) if base else _per_user_dir()) / "registry.db"


def registry_from_env(environ: Mapping[str, str] | None = None) -> Registry:
    """The registry named by ``MESHKIT_REGISTRY`` (a URI), else the default local one.

    Every variable is read from ``environ`` (default ``os.environ``): ``MESHKIT_REGISTRY``
    and the registry's own (``CONSUL_*``, ``ETCDCTL_*``, ``MESHKIT_LOCAL_DIR``), never
    some from one and some from the other.

    Raises:
        ConfigError: ``MESHKIT_REGISTRY`` holds a bad URI, or a variable the registry
            reads is invalid.
    """
    if environ is None:
        uri = os.environ.get(ENV_VAR, "").strip()
        return registry_from_uri(uri) if uri else LocalRegistry()
    uri = environ.get(ENV_VAR, "").strip()
    if uri:
        return registry_from_uri(uri, environ=environ)
    return LocalRegistry(LocalOptions(path=_default_local_path(environ)))
