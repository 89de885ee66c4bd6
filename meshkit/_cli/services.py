"""``meshkit services``: every service in a registry, its instances, their health and
admin URLs.

Health is the instance's own readiness, from its admin server's
``/readyz?service=<service>&instance=<instance id>`` (the servers of one process share one
admin server; plain ``/readyz`` answers for all of them, and one draining would make the
others look not ready): ``ready`` (200), ``not-ready`` (503: draining, not registered
yet), ``not-served`` (404: the process there has no live server of that instance: it
stopped and its registration is stale, or the port belongs to another process now),
``unreachable`` (no answer within ``--timeout-s`` of the probe's start), or ``-`` when the
instance announces no admin port (registry meta ``admin_port``, set by ``serve()``). An
admin server of a meshkit release without per-service readiness ignores the query and
answers for its whole process. The instances are probed in parallel,
:data:`PROBES_AT_ONCE` at a time, so N instances take about N / 100 probe times, and each
probe's timeout starts when its request does (not while it waits for its turn).
Instances the registry reports as failing (a lapsed heartbeat or a failing Consul check
without a deregistration: died or hung; clients no longer see them) are listed as
``failing``. Each service is read once where the registry can give its live and failing
instances together (local, Consul, etcd: ``snapshot()``); otherwise a watch's first
answer and a ``failing()`` read.

Exit status: 0 when an instance is listed; 1 when none is (``--json`` still prints ``[]``)
or the registry cannot be read (one line on stderr either way); 2 for a usage error (bad
option, registry URI or ``--timeout-s``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from meshkit._cli._common import (
    add_registry_argument,
    missing_local,
    open_registry,
    positive_seconds,
    printable,
    quiet_grpc_core,
    quiet_logging,
    read_services,
    service_name,
    service_names,
)

if TYPE_CHECKING:  # imported where used: --help loads none of them
    import asyncio

    import aiohttp

    from meshkit.discovery import Instance

__all__ = ["PROBES_AT_ONCE", "InstanceRow", "admin_address", "admin_url", "build_parser",
           "main", "readiness_url"]

# the parser's description: the docstring's first paragraph; none under python -OO
# (PYTHONOPTIMIZE=2), which strips docstrings
_DESCRIPTION = (__doc__ or "").split("\n\n")[0] or None

#: Readiness (``/readyz``) probes in flight at once (aiohttp's default connection limit,
#: and well under the usual 1,024 open files).
PROBES_AT_ONCE = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRow:
    """One line of the listing."""

    service: str
    instance_id: str
    address: str
    health: str
    admin_url: str | None
    meta: dict[str, str]


def _admin_endpoint(instance: Instance) -> tuple[str, str] | None:
    """``(host, port)`` of ``instance``'s admin server from its registry meta:
    ``admin_port`` (ASCII digits naming a TCP port, 1 to 65535; written back without
    leading zeros) at ``admin_host`` when announced (``serve()`` does when the admin
    listens elsewhere than the instance's host), else at the instance's host; ``None``
    without a valid port (``0``, ``99999``: no scrape or probe could reach it) or with an
    invalid ``admin_host``."""
    from meshkit._hosts import check_host
    from meshkit.errors import ConfigError

    port = instance.meta.get("admin_port", "")
    if not (port.isascii() and port.isdigit()):  # isdigit() alone takes "٩١٠٠", "²"
        return None
    port = port.lstrip("0")
    if not port or len(port) > 5 or int(port) > 65535:
        return None
    host = instance.meta.get("admin_host") or instance.host
    try:
        check_host("admin_host", host)
    except ConfigError:
        return None
    return host, port


def admin_address(instance: Instance) -> str | None:
    """``host:port`` of ``instance``'s admin server (a Prometheus target): ``admin_port``
    at ``admin_host`` or the instance's host; an IPv6 host bracketed once, its zone as it
    is (``[fe80::1%eth0]:9100``: Prometheus dials the target's host as written). ``None``
    without a valid port (or with an invalid ``admin_host``)."""
    from meshkit._hosts import bare_host

    endpoint = _admin_endpoint(instance)
    if endpoint is None:
        return None
    bare = bare_host(endpoint[0])
    return f"[{bare}]:{endpoint[1]}" if ":" in bare else f"{bare}:{endpoint[1]}"


def admin_url(instance: Instance) -> str | None:
    """``http://<host>:<admin_port>`` of ``instance`` (the address of
    :func:`admin_address`, a zone's ``%`` written ``%25`` as URLs have it, RFC 6874), or
    ``None``."""
    from meshkit._hosts import uri_host

    endpoint = _admin_endpoint(instance)
    return None if endpoint is None else f"http://{uri_host(endpoint[0])}:{endpoint[1]}"


def readiness_url(instance: Instance) -> str | None:
    """The URL that answers ``instance``'s own readiness: its admin server's
    ``/readyz?service=<service>&instance=<instance id>`` (percent-encoded), or ``None``
    when it announces no admin server (:func:`admin_url`)."""
    url = admin_url(instance)
    if url is None:
        return None
    query = urlencode({"service": instance.service, "instance": instance.instance_id},
                      quote_via=quote)
    return f"{url}/readyz?{query}"


def _probe_url(instance: Instance) -> str | None:
    """:func:`readiness_url` as aiohttp dials it: an IPv6 zone as it is (``[fe80::1%eth0]``),
    not ``%25``-escaped (RFC 6874's URI text, which aiohttp hands to the resolver as
    written: "Name or service not known", a live instance probed ``unreachable``)."""
    from meshkit._hosts import bare_host

    endpoint = _admin_endpoint(instance)
    if endpoint is None:
        return None
    host = bare_host(endpoint[0])
    query = urlencode({"service": instance.service, "instance": instance.instance_id},
                      quote_via=quote)
    return (f"http://{f'[{host}]' if ':' in host else host}:{endpoint[1]}"
            f"/readyz?{query}")


_HEALTH_OF_STATUS = {200: "ready", 503: "not-ready", 404: "not-served"}


async def _health(http: aiohttp.ClientSession, turn: asyncio.Semaphore, url: str | None,
                  timeout_s: float) -> str:
    """The health answered at ``url`` (:func:`_probe_url`): ``ready``, ``not-ready``,
    ``not-served``, ``http-<status>`` for another status, ``unreachable``, or ``-`` for
    ``None``. The probe waits for its ``turn``, then has ``timeout_s`` seconds
    (connecting included)."""
    if url is None:
        return "-"
    import asyncio

    import aiohttp  # loaded already: collect() made the session

    async with turn:
        try:
            async with asyncio.timeout(timeout_s), http.get(url) as resp:
                return _HEALTH_OF_STATUS.get(resp.status, f"http-{resp.status}")
        except (aiohttp.ClientError, TimeoutError):
            return "unreachable"


async def collect(registry_uri: str, only: list[str], timeout_s: float) -> list[InstanceRow]:
    """The rows for ``only`` (every service the registry lists when empty), sorted.

    Raises:
        SystemExit: bad URI (status 2); a registry that cannot be read or cannot list
            services (status 1). Each registry read (listing, watches, failing
            instances) and each ``/readyz`` probe is bounded by ``timeout_s`` seconds
            from its own start.
    """
    import asyncio

    from meshkit.errors import MeshError

    registry = open_registry(registry_uri)
    try:
        names = list(dict.fromkeys(only)) or await service_names(registry, timeout_s)
        found, failing = await read_services(registry, names, timeout_s)
    except MeshError as exc:  # RegistryError, a timeout of the listing: one line
        raise SystemExit("meshkit services: the registry cannot be read: "
                         f"{printable(str(exc))}") from None
    finally:
        await registry.close()
    unread = [n for n, v in found.items() if v is None]
    if unread:
        raise SystemExit(f"meshkit services: the registry cannot be read: no answer for "
                         f"{unread} within {timeout_s} s")
    instances = sorted((i for v in found.values() if v for i in v),
                       key=lambda i: (i.service, i.instance_id))
    # The bound is per probe (asyncio.timeout once its turn comes): a session timeout
    # would count the wait for a pooled connection too, and probes queued behind slow
    # ones would time out unsent. The pool is as large as the turns, so no probe waits
    # for a connection after its turn came.
    # No instance to probe (none listed, none with an admin port): no session, and
    # aiohttp is not imported.
    urls = [_probe_url(i) for i in instances]  # readiness_url(), its zone as dialled
    if any(url is not None for url in urls):
        import aiohttp

        turn = asyncio.Semaphore(PROBES_AT_ONCE)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=PROBES_AT_ONCE),
                timeout=aiohttp.ClientTimeout(total=None)) as http:
            health = await asyncio.gather(*(_health(http, turn, url, timeout_s)
                                            for url in urls))
    else:
        health = ["-"] * len(instances)
    rows = [(i, h) for i, h in zip(instances, health, strict=True)]
    rows += [(i, "failing") for i in failing]
    return [InstanceRow(service=i.service, instance_id=i.instance_id, address=i.address,
                        health=h, admin_url=admin_url(i), meta=dict(i.meta))
            for i, h in sorted(rows, key=lambda r: (r[0].service, r[0].instance_id))]


def render(rows: list[InstanceRow]) -> str:
    """The rows as an aligned table with a header line, one line per row: each cell's
    control characters (an instance id may hold any) escaped (:func:`printable`)."""
    table = [["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "ADMIN"]]
    table += [[printable(cell) for cell in (r.service, r.instance_id, r.address, r.health,
                                            r.admin_url or "-")]
              for r in rows]
    widths = [max(len(line[c]) for line in table) for c in range(4)]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False))
                   + "  " + line[4] + "\n" for line in table)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``meshkit services``."""
    p = argparse.ArgumentParser(prog="meshkit services", description=_DESCRIPTION,
                                epilog="Exit status: 0 ok, 1 no instance listed or the "
                                       "registry cannot be read, 2 usage error.")
    add_registry_argument(p)
    p.add_argument("--service", action="append", default=[], metavar="NAME", type=service_name,
                   help="list only this service (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.add_argument("--timeout-s", type=positive_seconds, default=3.0,
                   help="bound on each registry read and each /readyz, positive seconds "
                        "(default 3)")
    return p


def main(argv: list[str]) -> int:
    """Run ``meshkit services``; exit status 0, 1 when no instance is listed or the
    registry cannot be read, 2 for a usage error (argparse's or a bad registry URI)."""
    args = build_parser().parse_args(argv)
    quiet_grpc_core()  # before grpc loads (the registries, meshkit.errors)
    import asyncio

    quiet_logging()
    rows = asyncio.run(collect(args.registry, args.service, args.timeout_s))
    if args.json:  # [] when none: still a JSON document for the script reading it
        json.dump([asdict(r) for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        sys.stdout.write(render(rows))
    if not rows:  # a local registry's missing file named (it is not created)
        missing = missing_local(args.registry)
        names = list(dict.fromkeys(args.service))  # the filter named: a typo shows
        which = (f" for service{'s' if len(names) > 1 else ''} "
                 f"{', '.join(map(repr, names))}" if names else "")
        print(f"meshkit services: no instance listed{which} in {args.registry}"
              f"{f' ({missing})' if missing else ''}", file=sys.stderr)
    return 0 if rows else 1
