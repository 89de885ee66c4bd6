"""A process with a LocalRegistry, driven by a test over stdin/stdout (not collected by pytest).

Usage::

    python registry_child.py PATH [--ttl-s 0.6] [--poll-s 0.05] [--register ID ...]
                             [--watch SERVICE] [--honour-permissions]

Registers instances ``ID`` of service ``svc`` on 127.0.0.1, watches ``SERVICE`` and prints
one JSON object per line on stdout:

* ``{"event": "ready"}`` once registered and watching;
* ``{"event": "set", "watch": N, "ids": [...]}`` for each set watch number ``N`` yields
  (0 is the one of ``--watch``);
* a reply to each command read from stdin, one per line:

  - ``watch SERVICE``: starts another watch; reply ``{"event": "watch", "watch": N}``.
  - ``fault``: from now on this process cannot write files: ``RLIMIT_FSIZE`` is set to one
    byte (with ``SIGXFSZ`` ignored), so every write SQLite makes to the registry's files fails
    with ``EFBIG`` (SQLite: "disk I/O error"), as on a full disk or a read-only remount;
    reads keep working. Reply ``{"event": "fault"}``.
  - ``heal``: lifts the limit; reply ``{"event": "heal"}``.
  - ``status [SERVICE]``: reply ``{"event": "status", "status": {...}}`` (the fields of
    ``RegistryStatus``, of ``status(SERVICE)`` when named) or ``{"event": "status",
    "error": "..."}``.
  - ``register ID``: reply ``{"event": "register", "id": ID, "error": null or "..."}``.
  - ``deregister ID``: reply ``{"event": "deregister", "id": ID, "error": null or "..."}``.
  - ``quit``: closes the registry and exits 0.

Logs are structlog JSON lines on stderr (``event``, ``level``, and the fields).

``--honour-permissions`` makes a process running as root subject to file permission bits
like any other user: it drops ``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH`` and
``CAP_FOWNER`` from its capability bounding set and executes itself again (without them),
so a ``chmod a-w`` registry is read-only to it, as it is to a service's own user. It exits
with status 3 if the capabilities cannot be dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.errors import RegistryError


def emit(**fields: Any) -> None:
    """Write one protocol line on stdout."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def instance(instance_id: str) -> Instance:
    """Instance ``instance_id`` of service ``svc`` on a port derived from its id."""
    return Instance(service="svc", instance_id=instance_id, host="127.0.0.1",
                    port=20000 + sum(map(ord, instance_id)))


async def main(args: argparse.Namespace) -> None:
    reg = LocalRegistry(LocalOptions(path=Path(args.path), ttl_s=args.ttl_s,
                                     poll_interval_s=args.poll_s))
    for i in args.register:
        await reg.register(instance(i))

    watchers: list[asyncio.Task[None]] = []

    def follow(service: str) -> int:
        async def run(n: int) -> None:
            async for instances in reg.watch(service):
                emit(event="set", watch=n, ids=sorted(i.instance_id for i in instances))

        watchers.append(asyncio.create_task(run(len(watchers))))
        return len(watchers) - 1

    if args.watch:
        follow(args.watch)
    emit(event="ready")
    loop = asyncio.get_running_loop()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        cmd, _, arg = line.partition(" ")
        if cmd == "fault":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
            emit(event="fault")
        elif cmd == "watch":
            emit(event="watch", watch=follow(arg))
        elif cmd == "heal":
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            emit(event="heal")
        elif cmd == "status":
            try:
                emit(event="status", status=dataclasses.asdict(reg.status(arg or None)))
            except Exception as exc:  # reported to the test, which fails
                emit(event="status", error=f"{type(exc).__name__}: {exc}")
        elif cmd == "register":
            try:
                await reg.register(instance(arg))
                emit(event="register", id=arg, error=None)
            except RegistryError as exc:
                emit(event="register", id=arg, error=str(exc))
        elif cmd == "deregister":
            try:
                await reg.deregister(instance(arg))
                emit(event="deregister", id=arg, error=None)
            except RegistryError as exc:
                emit(event="deregister", id=arg, error=str(exc))
        elif cmd == "quit":
            break
    for task in watchers:
        task.cancel()
    await reg.close()


PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def honour_permissions() -> None:
    """As root, re-execute without the capabilities that bypass permission bits."""
    sys.argv.remove("--honour-permissions")
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            sys.stderr.write(f"prctl(PR_CAPBSET_DROP, {cap}): errno {ctypes.get_errno()}\n")
            sys.exit(3)
    os.execv(sys.executable, [sys.executable, *sys.argv])


if __name__ == "__main__":
    if "--honour-permissions" in sys.argv:
        honour_permissions()
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--ttl-s", type=float, default=0.6)
    parser.add_argument("--poll-s", type=float, default=0.05)
    parser.add_argument("--register", nargs="*", default=[])
    parser.add_argument("--watch", default="")
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(main(parser.parse_args()))
