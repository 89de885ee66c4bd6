"""``meshkit prometheus-targets``: Prometheus ``file_sd`` targets from the registry.

Each instance that announces an admin port (registry meta ``admin_port``, set by
``serve()``) becomes one target ``host:admin_port`` (its ``/metrics``; the host is meta
``admin_host`` when announced, else the instance's) with the labels
``mesh_service`` and ``mesh_instance`` (instances at one address, the servers of one
process sharing its admin server, are one target: their names joined with ``,``, see
:func:`target_groups`), and ``__meta_meshkit_health`` for relabelling (a
meta label, so a change of health does not start new series): ``passing`` for a live
instance, ``failing`` for one whose heartbeat lapsed or whose checks fail without a
deregistration (it died or hangs; a drained instance deregisters and leaves the targets at
once). A
failing instance stays a target while the registry still reports it and, with
``--watch``, for ``--keep-failing-s`` after (default 300 s), so Prometheus sees
``up == 0`` for it and ``MeshkitInstanceDown`` fires (``deploy/prometheus/``), unless
a live instance has its admin address (restarted on the same admin port: that address
answers, and is the live one's target). Each
pass reads each service once where the registry gives its live and failing instances
together (local, Consul, etcd: ``snapshot()``); otherwise a watch's first answer and a
``failing()`` read.

The file is written atomically (a temporary file in the same directory, then
``os.replace``), and only when its content changes, so Prometheus never reads half a file.
``--watch`` rewrites it every ``--interval-s`` until SIGTERM (exit status 0) or Ctrl-C
(SIGINT: one line on stderr and status 130, as for every ``meshkit`` command); either
lets the pass under way finish and closes the registry. Without it, one pass. A
``local:`` registry whose file does not exist (a mistyped path, or no server started
yet) is not created, ``[]`` is written, and one line on stderr says so: after the one
pass, or with ``--watch`` when a pass first finds it missing (again after it appeared
and went).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshkit._cli._common import (
    add_registry_argument,
    missing_local_registry,
    open_registry,
    positive_seconds,
    printable,
    quiet_grpc_core,
    quiet_logging,
    read_services,
    service_names,
)
from meshkit._cli.services import admin_address

if TYPE_CHECKING:  # imported where used: --help loads none of them
    import signal

    from meshkit.discovery import Instance, Registry

__all__ = ["TargetWriter", "build_parser", "main", "target_groups", "write_atomically"]

# the parser's description: the docstring's first paragraph; none under python -OO
# (PYTHONOPTIMIZE=2), which strips docstrings
_DESCRIPTION = (__doc__ or "").split("\n\n")[0] or None


def target_groups(live: list[Instance], failing: list[Instance]) -> list[dict[str, Any]]:
    """The ``file_sd`` document: one group per admin address (instances without a valid
    ``admin_port`` are left out), sorted by its labels.

    One address is one scrape of one ``/metrics``: the servers of one process share one
    admin server, and a group per instance had Prometheus scrape it once per instance,
    each series stored once under each ``mesh_service`` (every call counted twice). So
    the instances at one address make one group: the live ones, or the failing ones
    when none there is live (a live one answers there: a crashed instance's
    restart on the same admin port is that target), their services and instance ids
    (sorted by service, then id) joined with ``,`` in ``mesh_service`` and
    ``mesh_instance`` (one each for an address of one instance, as most are)."""
    at: dict[str, tuple[list[Instance], list[Instance]]] = {}
    for instances, side in ((live, 0), (failing, 1)):
        for inst in instances:
            address = admin_address(inst)
            if address is not None:
                at.setdefault(address, ([], []))[side].append(inst)
    out: list[dict[str, Any]] = []
    for address, (up, down) in at.items():
        shown = sorted(up or down, key=lambda i: (i.service, i.instance_id))
        out.append({"targets": [address],
                    "labels": {"mesh_service": ",".join(dict.fromkeys(
                                   i.service for i in shown)),
                               "mesh_instance": ",".join(dict.fromkeys(
                                   i.instance_id for i in shown)),
                               "__meta_meshkit_health": "passing" if up else "failing"}})
    out.sort(key=lambda g: (g["labels"]["mesh_service"], g["labels"]["mesh_instance"],
                            g["targets"][0]))
    return out


def _file_kind(mode: int) -> str:
    """What a non-regular file is, for a message: ``"a FIFO"``, ``"a character device"``..."""
    import stat

    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file"


def refuse_special_file(path: Path) -> None:
    """Return unless ``path`` exists and is neither a regular file nor a directory.

    Raises:
        OSError: ``EINVAL``, ``strerror`` "not a regular file (a FIFO)" (a character or
            block device, a socket): it is neither read, which could block or never
            end, nor replaced. A path that cannot be read is left to the writer.
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing: made; unreachable: mkstemp says why
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OSError(errno.EINVAL, f"not a regular file ({_file_kind(mode)})")


def write_atomically(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``; returns
    whether the file changed (an unchanged file is not touched).

    Raises:
        OSError: the directory cannot be written, or ``path`` exists and is neither a
            regular file nor a directory (a FIFO, a device: ``strerror`` "not a regular
            file (...)"; it is neither read, which could block or never end, nor
            replaced).
    """
    import tempfile

    refuse_special_file(path)
    data = text.encode()
    with contextlib.suppress(OSError):  # bytes: a file that is not UTF-8 just differs
        if path.read_bytes() == data:
            return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


class TargetWriter:
    """Reads the registry and writes the targets file; remembers failing instances for
    ``keep_failing_s`` seconds after the registry stops reporting them."""

    def __init__(self, registry: Registry, out: Path, *, keep_failing_s: float,
                 timeout_s: float) -> None:
        self.registry = registry
        self.out = out
        self.keep_failing_s = keep_failing_s
        self.timeout_s = timeout_s
        # (service, instance id) -> (instance, last seen): an id is unique within its
        # service only (etcd keys an instance <service>/<id>), not across services
        self._failing: dict[tuple[str, str], tuple[Instance, float]] = {}

    async def once(self) -> int:
        """One pass; returns the number of targets written. Each service is read once
        (:func:`~meshkit._cli._common.read_services`: its ``snapshot()``, or without one
        a watch's first answer and a ``failing()`` read), every read bounded by
        ``timeout_s`` seconds from its own start.

        Raises:
            MeshError: the registry cannot be read or gave no answer within
                ``timeout_s`` (the file is left as it was).
            OSError: the file cannot be written (its message names ``out`` and the reason).
        """
        from meshkit.errors import MeshError, RegistryError

        try:
            names = await service_names(self.registry, self.timeout_s)
            found, failing = await read_services(self.registry, names, self.timeout_s)
        except MeshError as exc:
            raise RegistryError(f"the registry cannot be read: {exc}") from None
        if any(v is None for v in found.values()):
            raise MeshError(f"no answer from the registry within {self.timeout_s} s")
        live = [i for v in found.values() if v for i in v]
        now = time.monotonic()
        for inst in failing:
            self._failing[(inst.service, inst.instance_id)] = (inst, now)
        live_ids = {(i.service, i.instance_id) for i in live}
        self._failing = {k: v for k, v in self._failing.items()
                         if k not in live_ids and now - v[1] <= self.keep_failing_s}
        groups = target_groups(live, [i for i, _ in self._failing.values()])
        try:
            write_atomically(self.out, json.dumps(groups, indent=2) + "\n")
        except OSError as exc:  # named by --out, not by the temporary file beside it
            raise OSError(f"--out {self.out}: {exc.strerror or exc}") from exc
        return len(groups)


def _non_negative_seconds(text: str) -> float:
    """An argparse ``type``: seconds >= 0 (``inf``: for ever; NaN and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _out_file(text: str) -> Path:
    """An argparse ``type`` for ``--out``: the file's path.

    Raises:
        argparse.ArgumentTypeError: ``""`` or blanks (``--out "$TARGETS"`` with the
            variable unset: ``Path("")`` is the working directory), or a leading ``~`` no
            shell expanded (``--out=~/t.json``: a directory named ``~`` in the working
            directory), or ``-`` (stdout to most commands; it made a file named ``-``
            in the working directory: ``./-`` names that on purpose); quoted (argparse
            prints it and exits 2).
    """
    from meshkit._env import unexpanded_home  # os only; --help loads no more

    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a file path, got {text!r}")
    if text == "-":
        raise argparse.ArgumentTypeError(
            "got '-': the targets file is replaced atomically beside itself, which stdout "
            "cannot be; give a file path (./- for a file named '-')")
    if (home := unexpanded_home(text)) is not None:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, whose '~' no shell expanded (as with --out=~/...); give the "
            f"path itself, e.g. {home!r}")
    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``meshkit prometheus-targets``."""
    p = argparse.ArgumentParser(prog="meshkit prometheus-targets",
                                description=_DESCRIPTION,
                                epilog="Exit status: 0 ok, 1 a one-shot pass failed, "
                                       "2 usage error, 130 Ctrl-C.")
    add_registry_argument(p)
    p.add_argument("--out", required=True, type=_out_file, metavar="FILE",
                   help="the file_sd JSON file to write (e.g. /etc/prometheus/meshkit.json)")
    p.add_argument("--watch", action="store_true",
                   help="keep rewriting it every --interval-s until SIGTERM (status 0) or "
                        "Ctrl-C (status 130)")
    p.add_argument("--interval-s", type=positive_seconds, default=5.0,
                   help="seconds between passes with --watch (default 5)")
    p.add_argument("--keep-failing-s", type=_non_negative_seconds, default=300.0,
                   help="keep a failing instance as a target this long after the registry "
                        "stops reporting it, seconds (default 300; --watch only)")
    p.add_argument("--timeout-s", type=positive_seconds, default=5.0,
                   help="bound on each registry read, seconds (default 5)")
    return p


async def _run(args: argparse.Namespace) -> signal.Signals | None:
    """One pass, or with ``--watch`` passes until a signal; returns the signal that ended
    the watch (SIGINT or SIGTERM), ``None`` after the one pass.

    Raises:
        MeshError: the one pass could not read the registry.
        OSError: the one pass could not write the file.
    """
    import asyncio
    import signal

    from meshkit._signals import unblock_signals
    from meshkit.errors import MeshError

    registry = open_registry(args.registry)
    writer = TargetWriter(registry, args.out, keep_failing_s=args.keep_failing_s,
                          timeout_s=args.timeout_s)
    try:
        if not args.watch:
            n = await writer.once()
            missing = missing_local_registry(registry)  # not created: named
            print(f"wrote {n} target(s) to {args.out}{f' ({missing})' if missing else ''}",
                  file=sys.stderr)
            return None
        stop = asyncio.Event()
        stopped_by: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            stopped_by.append(sig)
            stop.set()

        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM)
        for sig in handled:  # SIGINT even when inherited ignored
            loop.add_signal_handler(sig, on_signal, sig)
        unblock_signals(handled)  # and even when inherited blocked
        said: str | None = None  # the missing registry's line, once while it stays so
        while not stop.is_set():
            try:
                await writer.once()
            except (MeshError, OSError) as exc:  # keep the last file; try again
                print(f"meshkit prometheus-targets: {printable(str(exc))}", file=sys.stderr)
            else:
                missing = missing_local_registry(registry)  # not created: named
                if missing is not None and missing != said:
                    print(f"meshkit prometheus-targets: {missing}", file=sys.stderr)
                said = missing
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.interval_s):  # not wait_for (3.11)
                    await stop.wait()
        return stopped_by[0]
    finally:
        await registry.close()


def main(argv: list[str]) -> int:
    """Run ``meshkit prometheus-targets``; exit status 0 (after one pass, or a watch ended
    by SIGTERM), 1 when a one-shot pass fails, ``--out`` is a FIFO or a device (with
    ``--watch`` too) or a relative ``--out`` cannot be resolved (the working directory was
    deleted), 2 for a usage error (argparse's, a bad duration
    or registry URI).

    Raises:
        KeyboardInterrupt: Ctrl-C (SIGINT) ended the watch, once it stopped cleanly
            (:func:`meshkit.cli.main` makes it one line and status 130).
    """
    args = build_parser().parse_args(argv)
    quiet_grpc_core()  # before grpc loads (meshkit.errors, the registries)
    import asyncio
    import signal

    from meshkit.errors import MeshError

    quiet_logging()
    try:
        # before resolve(): /dev/stdout on a pipe resolves to /proc/PID/fd/pipe:[N]
        refuse_special_file(args.out)
        args.out = args.out.resolve()  # a relative path needs the working directory
    except OSError as exc:  # a FIFO or a device; or the working directory deleted
        print(printable(f"meshkit prometheus-targets: --out {args.out}: "
                        f"{exc.strerror or exc}"), file=sys.stderr)  # a path is any text
        return 1
    try:
        stopped_by = asyncio.run(_run(args))
    except (MeshError, OSError) as exc:
        print(f"meshkit prometheus-targets: {printable(str(exc))}", file=sys.stderr)
        return 1
    if stopped_by is signal.SIGINT:
        raise KeyboardInterrupt
    return 0
