"""What the operator subcommands share: the registry argument and one-shot discovery.

Light to import: a command builds its parser and parses its arguments (``--help``, a usage
error) with nothing but the standard library loaded; grpc, the registries and the logging
setup are imported by the functions that use them, after the arguments parsed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from meshkit.discovery import Instance, Registry

__all__ = [
    "REGISTRY_READS_AT_ONCE",
    "SERVICE_NAME",
    "StdoutWriteError",
    "add_registry_argument",
    "discover",
    "failing_instances",
    "missing_local",
    "missing_local_registry",
    "open_registry",
    "positive_number",
    "positive_seconds",
    "printable",
    "quiet_grpc_core",
    "quiet_logging",
    "read_services",
    "service_name",
    "service_names",
]

_T = TypeVar("_T")

#: Registry reads (a ``snapshot()``, a watch's first answer, a ``failing()`` read) a
#: command has in flight at once: enough that a pass over hundreds of services takes a
#: few round trips, well under what a Consul agent allows one client
#: (``limits.http_max_conns_per_client``, 200 by default, shared with the other clients
#: on the host).
REGISTRY_READS_AT_ONCE = 32

#: The environment variable naming the default registry: :data:`meshkit.discovery.ENV_VAR`,
#: spelled out here so that a command's ``--help`` does not import the registries (a test
#: checks they agree).
ENV_VAR = "MESHKIT_REGISTRY"

REGISTRY_HELP = (f"registry URI, e.g. local:///tmp/mesh or consul://127.0.0.1:8500 "
                 f"(default ${ENV_VAR}, else the default local registry)")


#: A mesh service name, as :func:`meshkit.dial` and :class:`~meshkit.discovery.Instance`
#: take it: letters, digits, ``-``, ``_`` and ``.``, 1 to 63 characters, the first a letter
#: or digit (``fullmatch``). Spelled out here so that a usage error loads neither grpc nor
#: the registries (a test checks it is theirs).
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")


def service_name(text: str) -> str:
    """An argparse ``type`` (and check) for a mesh service name: ``text`` when it matches
    :data:`SERVICE_NAME`. A name no instance can be registered under is refused as a
    usage error, rather than read from the registry (which would find nothing, or, for
    a name that is not UTF-8, such as a mis-encoded argument, fail with an encoding
    error).

    Raises:
        argparse.ArgumentTypeError: any other text (quoted as ``repr`` writes it:
            non-UTF-8 bytes as ``\\udcXX``, control characters escaped).
    """
    if SERVICE_NAME.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"a service name is letters, digits, '-', '_' and '.' (1 to 63, the first a "
            f"letter or digit), got {text!r}")
    return text


class StdoutWriteError(OSError):
    """The command's output could not be written to stdout for another reason than its
    reader going away (a full disk or quota, ``ENOSPC``/``EDQUOT``; a terminal gone,
    ``EIO``): :func:`meshkit.cli.main` raises it from stdout's ``write``/``flush`` and
    ends the command with one line and status 1; a command's own ``OSError`` handling
    re-raises it, as it does ``BrokenPipeError``."""


def printable(text: str) -> str:
    """``text`` with each character that is not printable (``str.isprintable``: C0 and C1
    controls, DEL, line and paragraph breaks, Unicode format characters such as U+202E)
    but the space escaped as ``repr`` writes it (``\\x1b``, ``\\n``, ``\\u202e``);
    ``text`` itself when it has none.

    For text from a server or a registry (a status message, an instance id) written to a
    terminal: raw, an ESC sequence would act on the terminal of whoever runs the command
    (clear it, retitle it, write its clipboard) and a line break would forge a line of
    the output. Raises nothing."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def add_registry_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--registry URI`` (default ``$MESHKIT_REGISTRY``, else ``local://``)."""
    parser.add_argument("--registry", default=os.environ.get(ENV_VAR, "").strip() or "local://",
                        metavar="URI", help=REGISTRY_HELP)


def positive_number(unit: str) -> Callable[[str], float]:
    """An argparse ``type`` for an option in ``unit`` (``"seconds"``, ``"days"``,
    ``"hours"``): a positive finite number (``inf``, ``nan``, zero and negatives are
    refused: asyncio and grpc take them for no bound, an overflow or an expired deadline;
    a certificate's validity of zero days is none).

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it, quoted, and exits 2).
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(
                f"must be a positive finite number of {unit}, got {text!r}")
        return value

    return parse


positive_seconds = positive_number("seconds")
"""An argparse ``type`` for a duration option in seconds (:func:`positive_number`)."""


#: ``GRPC_VERBOSITY`` a command runs grpc core with when the user sets neither it nor
#: ``GRPC_TRACE``: C-core's errors only.
GRPC_VERBOSITY_DEFAULT = "ERROR"


def quiet_grpc_core() -> None:
    """Keep grpc core's (C-core's) own INFO and DEBUG lines off the command's stderr:
    sets ``GRPC_VERBOSITY`` to :data:`GRPC_VERBOSITY_DEFAULT` (``ERROR``) in this process's
    environment unless the user set ``GRPC_VERBOSITY`` or ``GRPC_TRACE`` (an empty or blank
    value is unset). grpcio (1.85) leaves absl's default in place without it, and C-core
    then writes glog-style INFO lines on stderr, e.g. ``Got goaway [2] ...`` when a server
    goes away with an error while a call is in flight. A user's ``GRPC_VERBOSITY=INFO``
    or ``GRPC_TRACE=...`` still brings C-core's lines (a tracer logs at INFO, which
    ``ERROR`` would hide).

    C-core reads the variable once, when grpc is first imported: call this before the
    command imports grpc. Once grpc is loaded it does nothing (it could no longer take
    effect, and child processes inherit the environment). The setting stays for the
    rest of the process and its children. Raises nothing.
    """
    if "grpc" in sys.modules:
        return
    if any(os.environ.get(name, "").strip() for name in ("GRPC_VERBOSITY", "GRPC_TRACE")):
        return
    os.environ["GRPC_VERBOSITY"] = GRPC_VERBOSITY_DEFAULT


def quiet_logging() -> None:
    """meshkit's logs on stderr at ``MESHKIT_LOG_LEVEL`` (default ERROR; empty is unset),
    so stdout carries only the command's output and a failure is the command's own one
    line: the library's warnings (a registry that cannot be read, ...) say what the command
    then says itself; ``MESHKIT_LOG_LEVEL=WARNING`` shows them.

    Raises:
        SystemExit: a bad logging setting in the environment (an unknown level...) or a
            bad ``MESHKIT_INLINE_CALLS``: exit
            status 2 (a usage error), after one line on stderr that names the variable
            and quotes its value.
    """
    from meshkit._inline import inline_calls_enabled
    from meshkit.errors import ConfigError
    from meshkit.observability import configure_logging

    # set: read by configure_logging itself, whose error names the variable (given as
    # the level argument, its message said only 'log level must be ...')
    level = None if os.environ.get("MESHKIT_LOG_LEVEL", "").strip() else "ERROR"
    try:
        configure_logging(level, json=False)
        inline_calls_enabled()  # MESHKIT_INLINE_CALLS, which dial() would refuse later
    except ConfigError as exc:
        what = "log level: " if level is None and "MESHKIT_LOG_LEVEL" in str(exc) else ""
        print(f"meshkit: {what}{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def open_registry(uri: str) -> Registry:
    """The registry named by ``uri``.

    Raises:
        SystemExit: the URI is bad: exit status 2 (a usage error), after one line on
            stderr that quotes it.
    """
    from meshkit.discovery import registry_from_uri
    from meshkit.errors import ConfigError

    try:
        return registry_from_uri(uri)
    except ConfigError as exc:
        print(f"meshkit: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def missing_local_registry(registry: Registry) -> str | None:
    """Why ``registry`` lists nothing, when it is a local registry whose database file
    does not exist (a mistyped ``local:`` path, or no server ever started with it); else
    ``None``. :func:`service_names` and :func:`read_services` then read nothing from it
    (none listed), since opening a local registry creates its directories and file: a
    command that only reads it made a new empty registry at a typo's path (``/var/lib/
    mesh`` for ``/var/lib/meshkit``), anywhere the user may write. Another error of the
    look-up (a directory that cannot be searched) is left to the registry's own read.
    Raises nothing."""
    local = sys.modules.get("meshkit.discovery._local")  # loaded when it is one
    if local is None or not isinstance(registry, local.LocalRegistry):
        return None
    path = registry.options.path
    try:
        os.stat(path)
    except FileNotFoundError:
        return (f"no local registry at {str(path)!r}: no server has registered there (is "
                "--registry, or $MESHKIT_REGISTRY, the URI the servers use?); nothing "
                "created")
    except OSError:
        return None
    return None


def missing_local(uri: str) -> str | None:
    """:func:`missing_local_registry` of the registry ``uri`` names (a bad URI: ``None``).
    Raises nothing."""
    from meshkit.discovery import registry_from_uri
    from meshkit.errors import ConfigError

    try:
        return missing_local_registry(registry_from_uri(uri))
    except ConfigError:
        return None


async def service_names(registry: Registry, timeout_s: float) -> list[str]:
    """The services the registry lists now, sorted; the read is bounded by ``timeout_s``
    seconds.

    Raises:
        SystemExit: the registry cannot list its services (it has no ``services()``):
            exit status 1, the message says so.
        MeshError: the registry cannot be read (the registry's own error, e.g.
            :class:`~meshkit.errors.RegistryError`), or :class:`RegistryError` when it gave
            no answer within ``timeout_s``; each caller reports it its documented way.
    """
    import asyncio  # loaded already: the command runs in asyncio.run

    from meshkit.errors import RegistryError

    if missing_local_registry(registry) is not None:  # opening it would create it
        return []
    lister = getattr(registry, "services", None)
    if lister is None:
        raise SystemExit(f"meshkit: {registry!r} cannot list its services; "
                         "name them with --service")
    try:
        async with asyncio.timeout(timeout_s):
            names: Iterable[str] = await lister()
    except TimeoutError:
        raise RegistryError(f"no answer from the registry within {timeout_s} s") from None
    return sorted(names)


async def _first(registry: Registry, service: str) -> frozenset[Instance]:
    watch = registry.watch(service)
    try:
        async for instances in watch:
            return instances
    finally:
        with contextlib.suppress(Exception):
            await watch.aclose()  # type: ignore[attr-defined]
    return frozenset()


async def _read_each(names: list[str], read: Callable[[str], Awaitable[_T]],
                     timeout_s: float) -> list[_T | None]:
    """``read(name)`` for each of ``names``, in their order: at most
    :data:`REGISTRY_READS_AT_ONCE` at once, each bounded by ``timeout_s`` seconds from its
    own start (not from the pass's: a read waiting for its turn is not running out of
    time). ``None`` for a read with no answer in time; once one had none, the reads not
    started yet are not started (``None`` too): the registry is not answering, and each
    would wait ``timeout_s`` more (a pass over N services would take N /
    ``REGISTRY_READS_AT_ONCE`` timeouts).

    Raises:
        Exception: the first error a read raised (the reads in flight are cancelled).
    """
    import asyncio

    results: list[_T | None] = [None] * len(names)
    pending = iter(enumerate(names))
    stalled = False

    async def worker() -> None:
        nonlocal stalled
        for k, name in pending:  # shared: each name is taken by one worker
            if stalled:
                return
            try:
                async with asyncio.timeout(timeout_s):
                    results[k] = await read(name)
            except TimeoutError:
                stalled = True
                return

    workers = [asyncio.create_task(worker())
               for _ in range(min(REGISTRY_READS_AT_ONCE, len(names)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return results


async def discover(registry: Registry, services: Iterable[str],
                   timeout_s: float) -> dict[str, frozenset[Instance] | None]:
    """The live instances of each service: the first answer of a watch on each, in
    parallel (at most :data:`REGISTRY_READS_AT_ONCE` at once), each bounded by
    ``timeout_s`` seconds from its own start; ``None`` for a service with no answer in
    time (the registry cannot be read), and for the services not read after that."""
    names = list(services)
    found = await _read_each(names, lambda name: _first(registry, name), timeout_s)
    return dict(zip(names, found, strict=True))


async def failing_instances(registry: Registry, services: Iterable[str],
                            timeout_s: float) -> list[Instance]:
    """The instances of ``services`` the registry reports failing (none when it has no
    ``failing()``): one ``failing()`` read per service, in parallel (at most
    :data:`REGISTRY_READS_AT_ONCE` at once), each bounded by ``timeout_s`` seconds from
    its own start.

    Raises:
        MeshError: the registry cannot be read (its own error), or :class:`RegistryError`
            when a read gave no answer within ``timeout_s``.
    """
    from meshkit.errors import RegistryError

    failing_of = getattr(registry, "failing", None)
    if failing_of is None:
        return []
    found = await _read_each(list(services), failing_of, timeout_s)
    if any(v is None for v in found):
        raise RegistryError(f"no answer from the registry within {timeout_s} s")
    return [i for v in found if v for i in v]


async def read_services(registry: Registry, names: list[str], timeout_s: float
                        ) -> tuple[dict[str, frozenset[Instance] | None], list[Instance]]:
    """The live instances of each of ``names`` (``None``: no answer within ``timeout_s``,
    and for those not read after one had none) and the failing ones, for ``meshkit
    services`` and each pass of ``prometheus-targets``: one ``snapshot(service)`` read per
    service when the registry has one (the local, Consul and etcd registries:
    :class:`~meshkit.discovery.ServiceSnapshot`), else the first answer of a watch on
    each and then a ``failing()`` read (none without one), made even when a watch had
    no answer (the registry's error names the cause). The reads run in parallel, at most
    :data:`REGISTRY_READS_AT_ONCE` at once, each bounded by ``timeout_s`` seconds from
    its own start (:func:`discover`).

    Raises:
        MeshError: the registry cannot be read (its own error, e.g.
            :class:`~meshkit.errors.RegistryError`), or, without ``snapshot()``,
            :class:`RegistryError` when a failing read had no answer in time.
    """
    if missing_local_registry(registry) is not None:  # opening it would create it
        return dict.fromkeys(names, frozenset()), []
    snapshot = getattr(registry, "snapshot", None)
    if snapshot is None:
        found = await discover(registry, names, timeout_s)
        return found, await failing_instances(registry, names, timeout_s)
    read = await _read_each(names, snapshot, timeout_s)
    return ({name: None if snap is None else snap.live
             for name, snap in zip(names, read, strict=True)},
            [i for snap in read if snap is not None for i in snap.failing])
