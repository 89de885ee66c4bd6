"""``python -m tests.faults [--quick|--long] [--scenarios a,b] [--json PATH]``: run the fault
scenarios of issue 12 on real processes and print the table; exit 1 unless every one passed.

As root the harness first re-executes itself under ``setpriv`` without
``CAP_DAC_OVERRIDE``/``CAP_DAC_READ_SEARCH`` (root keeps owning its files, but file modes
bind it like any user), so ``chmod`` faults act on the services as they would for a
service user; its children inherit that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from meshkit.observability import configure_logging
from tests.faults._runner import (
    LONG,
    QUICK,
    Outcome,
    SharedStack,
    Timing,
    run_scenario,
    table,
    write_json,
)
from tests.faults._stack import sweep_stale
from tests.faults.scenarios import ALL, BY_NAME

_REEXEC_FLAG = "MESHKIT_CHAOS_UNPRIVILEGED"
_DAC_CAPS = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
NEEDS_FILE_MODES = {"registry-readonly", "registry-unreadable"}


def _has_dac_override() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            eff = int(line.split()[1], 16)
            return any(eff & (1 << c) for c in _DAC_CAPS)
    return False


def drop_file_privileges(argv: list[str]) -> None:
    """As root with DAC override, re-execute ``argv`` under setpriv without it (once)."""
    if os.geteuid() != 0 or os.environ.get(_REEXEC_FLAG) or not _has_dac_override():
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return
    os.environ[_REEXEC_FLAG] = "1"
    os.execv(setpriv, [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--",
                       sys.executable, "-m", "tests.faults", *argv])


def file_modes_bind() -> bool:
    """Whether this process is refused a file whose mode forbids it (else chmod faults
    would do nothing)."""
    with tempfile.NamedTemporaryFile() as f:
        os.chmod(f.name, 0)
        try:
            with open(f.name, "rb"):
                return False
        except PermissionError:
            return True


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m tests.faults``."""
    p = argparse.ArgumentParser(prog="python -m tests.faults",
                                description=(__doc__ or "").split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="short faults; without --scenarios only the quick subset")
    mode.add_argument("--long", action="store_true", help="full-length faults (default)")
    p.add_argument("--scenarios", default="",
                   help="comma-separated names (default: all; with --quick the quick ones)")
    p.add_argument("--json", type=Path, default=None, help="also write the outcomes here")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep each scenario's temp dir (logs, databases) for inspection")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p


async def run_all(names: list[str], timing: Timing, *, keep_workdir: bool,
                  json_path: Path | None) -> list[Outcome]:
    """Run the named scenarios one after another; print a line as each ends."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    modes_bind = file_modes_bind()
    for stale in sweep_stale():
        print(f"removed {stale}, left by an earlier run that was killed", flush=True)
    outcomes: list[Outcome] = []
    shared = SharedStack(keep_workdir=keep_workdir)
    try:
        for name in names:
            cls = BY_NAME[name]
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            if name in NEEDS_FILE_MODES and not modes_bind:
                out = Outcome(scenario=name, item=cls.item, environment=True, error=(
                    "file modes do not bind this process (root with CAP_DAC_OVERRIDE and no "
                    "setpriv to drop it): a chmod fault would do nothing"))
            else:
                out = await run_scenario(cls(), timing, keep_workdir=keep_workdir,
                                         shared=shared)
            outcomes.append(out)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {out.verdict} in "
                  f"{out.seconds:.0f} s", flush=True)
            if json_path is not None:
                write_json(json_path, outcomes, timing.name)
    finally:
        await shared.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.list:
        for cls in ALL:
            doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n    ", " ")
            print(f"{cls.name:<20} item {cls.item:<5} {'quick' if cls.quick else 'long '}  "
                  f"{' '.join(doc.split())}")
        return 0
    drop_file_privileges(argv)
    timing = QUICK if args.quick else LONG
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {sorted(BY_NAME)}")
    if not names:
        names = [c.name for c in ALL if c.quick or not args.quick]
    configure_logging(os.environ.get("MESHKIT_LOG_LEVEL", "ERROR"), json=False)
    print(f"meshkit chaos: {len(names)} scenario(s), {timing.name} mode, on real processes",
          flush=True)
    try:
        outcomes = asyncio.run(run_all(names, timing, keep_workdir=args.keep_workdir,
                                       json_path=args.json))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("Interrupted; every process was stopped.", flush=True)
        return 130
    print("")
    print(table(outcomes))
    failed = [o.scenario for o in outcomes if o.verdict != "PASS"]
    print("")
    print("Result: " + ("every scenario passed." if not failed
                        else f"{len(failed)} of {len(outcomes)} missed: {', '.join(failed)}."))
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
