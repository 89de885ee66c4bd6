"""The benchmark runner: ``python -m benchmarks [--quick|--smoke] [--plot]``.

Runs the scenarios of :mod:`benchmarks.scenarios` in order (overhead by layer, against the
hand-assembled stack, slow replica, failover, discovery convergence, fan-out), prints a
table per scenario and the targets, and writes ``benchmarks/results/<timestamp>.json``.

Modes: the default full run takes a few minutes; ``--quick`` about a minute (shorter and
fewer rounds); ``--smoke`` a reduced set for the test suite (every scenario, the overhead
scenario with ``raw``, ``mesh``, ``defaults`` and the full-stack contenders only). Every
process the runner starts is stopped when it ends, also on Ctrl-C; a worker also exits by
itself when the runner's pipe to it closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import meshkit
from benchmarks import report, stacks
from benchmarks._interrupt import interruptible as _interruptible
from benchmarks._interrupt import restore as _restore
from benchmarks.procs import REPO, Supervisor, WorkerError
from benchmarks.scenarios import SCENARIOS
from benchmarks.scenarios._common import PLANS, Ctx, Plan
from benchmarks.scenarios.overhead import CONTENDERS

__all__ = ["RESULTS_DIR", "main", "run"]

RESULTS_DIR = REPO / "benchmarks" / "results"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine(argv: list[str], prog: str = "python -m benchmarks") -> dict[str, Any]:
    """The machine, interpreter and package versions, and the exact command (``prog``,
    the program name as run, then ``argv``)."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": {d: _version(d) for d in (
            "meshkit", "grpcio", "protobuf", "opentelemetry-sdk",
            "opentelemetry-instrumentation-grpc", "grpc-interceptor", "tenacity", "limits",
            "PyJWT", "cryptography")},
        "command": " ".join([prog, *argv]),
    }


def _parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="meshkit benchmarks: overhead by layer, vs a hand-assembled stack, slow "
                    "replica, failover, discovery convergence, fan-out.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="about a minute: every scenario with short rounds")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="the smallest run of every scenario (the test suite's)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="the full run (default), a few minutes")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--plot", action="store_true",
                   help="also render PNG charts (needs matplotlib) next to the JSON")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="directory for <timestamp>.json (default benchmarks/results)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="also write every table as Markdown to this file (its directory "
                        "is made if missing)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary directory (worker logs, registries)")
    p.add_argument("--contenders", default=None,
                   help="overhead scenario: comma-separated contenders only (e.g. "
                        "raw,+tracing,full), for a quicker loop while tuning one layer")
    p.add_argument("--concurrency", default=None,
                   help="overhead scenario: comma-separated concurrencies (default 1,32)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per contender in the overhead and compare "
                        "scenarios (default: the mode's; more rounds, steadier medians)")
    p.add_argument("--sessions", type=int, default=None,
                   help="overhead scenario: sets of fresh worker processes its rounds are "
                        "split over at each concurrency (default: the mode's, 1 in full); "
                        "averages out how identical processes differ")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the event loop of every worker, raw grpc.aio's included (default "
                        "asyncio; uvloop comes with meshkit[fast])")
    p.set_defaults(mode="full")
    return p


def _plan(args: argparse.Namespace) -> Plan:
    """The run's plan: ``--mode``'s, narrowed by ``--scenarios``, ``--contenders``,
    ``--concurrency``, ``--rounds`` and ``--sessions`` (the scenarios chosen go to
    ``args.selected``).

    Raises:
        ValueError: a bad value of one of them, the message naming the option (a usage
            error: :func:`main` exits 2 with it, as argparse does for its own).
    """
    plan = PLANS[args.mode]
    # each once, in the order given
    selected = list(dict.fromkeys(s.strip() for s in args.scenarios.split(",") if s.strip()))
    unknown = [s for s in selected if s not in SCENARIOS]
    if unknown or not selected:
        raise ValueError(f"--scenarios: {f'unknown {unknown}' if unknown else 'none given'}; "
                         f"choose from {list(SCENARIOS)}")
    args.selected = selected
    if args.contenders is not None:  # '' too: an empty list, not the option left out
        names = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
        unknown = [n for n in names if n not in CONTENDERS]
        if not names:  # not raw alone, a run of nothing that was asked for
            raise ValueError(f"--contenders: none given in {args.contenders!r}; "
                             f"choose from {', '.join(CONTENDERS)}")
        if unknown:
            raise ValueError(f"--contenders: unknown {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(CONTENDERS)}")
        plan = dataclasses.replace(plan, overhead_only=("raw", *(n for n in names
                                                                 if n != "raw")))
    if args.concurrency is not None:  # '' too, as --contenders
        try:
            # each once, in the order given (one named twice ran all its rounds twice)
            conc = tuple(dict.fromkeys(int(c) for c in args.concurrency.split(",")
                                       if c.strip()))
        except ValueError:
            raise ValueError(f"--concurrency takes integers, got {args.concurrency!r}") from None
        if not conc or min(conc) < 1:
            raise ValueError(f"--concurrency takes integers >= 1, got {args.concurrency!r}")
        plan = dataclasses.replace(plan, concurrencies=conc)
    if args.rounds is not None:
        if args.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {args.rounds!r}")
        plan = dataclasses.replace(plan, rounds=args.rounds, compare_rounds=None)
    if args.sessions is not None:
        if args.sessions < 1:
            raise ValueError(f"--sessions must be >= 1, got {args.sessions!r}")
        plan = dataclasses.replace(plan, overhead_sessions=args.sessions)
    return plan


async def run(args: argparse.Namespace, sup: Supervisor, workdir: Path,
              argv: list[str]) -> dict[str, Any]:
    """Run the selected scenarios and return the results document."""
    plan = args.plan if hasattr(args, "plan") else _plan(args)
    selected = args.selected
    sup.drain_delay_s = plan.drain_delay_s
    secrets = stacks.Secrets(workdir / "secrets")
    ctx = Ctx(plan=plan, sup=sup, secrets=secrets, workdir=workdir)
    started = time.monotonic()
    results: dict[str, Any] = {
        "schema": 1,
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "machine": machine(argv, args.prog),
        "loop": sup.loop,
        "layers": {},
        "scenarios": {},
        "errors": {},
        "notes": ctx.notes,
    }
    for n in secrets.create():
        ctx.note(n)
    results["layers"] = {name: stacks.layer_note(name, secrets) or "available"
                         for name in stacks.LAYERS}
    m = machine(argv, args.prog)
    print(f"meshkit benchmarks, {plan.mode} mode: {m['cores']} cores, Python {m['python']}, "
          f"grpcio {m['packages']['grpcio']}, {sup.loop} event loop", flush=True)
    try:
        for name in selected:
            print(f"\n== {name}", flush=True)
            t0 = time.monotonic()
            before = set(map(id, sup.procs))
            try:
                res = await SCENARIOS[name](ctx)
                res["duration_s"] = round(time.monotonic() - t0, 2)
                results["scenarios"][name] = res
                report.print_scenario(name, res)
            except Exception as exc:  # any: the other scenarios still run and are written
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
                if not isinstance(exc, (WorkerError, TimeoutError)):  # where, for a bug
                    traceback.print_exc(file=sys.stderr)
            finally:
                keep = {id(p.server) for p in ctx.pairs.values()} | \
                    {id(p.client) for p in ctx.pairs.values()}
                done = [p for p in sup.procs if id(p) not in before and id(p) not in keep]
                await ctx.tear_down(asyncio.gather(*(p.stop(1.0) for p in done),
                                                   return_exceptions=True))
            print(f"  ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        await ctx.stopped()
        await sup.close()
    results["duration_s"] = round(time.monotonic() - started, 2)
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None, *, prog: str = "meshkit bench") -> int:
    """Run the benchmarks; returns 0, or 1 when a scenario failed (missed targets are
    reported, not failures), 2 when ``--loop uvloop`` finds no uvloop, or 130 when
    interrupted. A bad argument is a usage error, as argparse's own: the usage and a
    line naming the option on stderr, status 2 (``SystemExit(2)``).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the command as the user ran it, for the usage, its errors and the results'
            ``machine.command`` (default ``meshkit bench``; ``python -m benchmarks``
            passes its own).

    Raises:
        SystemExit: status 2 for a bad argument (an unknown scenario or contender, a
            concurrency, ``--rounds`` or ``--sessions`` below 1, an ``--out`` or
            ``--markdown`` path that cannot be written), before any worker starts or
            the work directory is made; 0 after ``--help``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog)
    args = parser.parse_args(args_list)
    args.prog = prog  # the command as run, for the results' machine.command
    try:
        args.plan = _plan(args)
    except ValueError as exc:  # a usage error, as argparse's own: the usage, status 2
        parser.error(str(exc))
    if args.loop == "uvloop" and not meshkit.uvloop_installed():
        print("--loop uvloop: uvloop is not installed (pip install 'meshkit[fast]')",
              file=sys.stderr)
        return 2
    # where the results go is made now, not after the run (whose results would be lost)
    for option, where in (("--out", args.out),
                          ("--markdown", args.markdown.parent if args.markdown else None)):
        if where is None:
            continue
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"{option}: cannot make {where}: {exc.strerror or exc}")
        if not os.access(where, os.W_OK):
            parser.error(f"{option}: {where} is not writable")
    workdir = Path(tempfile.mkdtemp(prefix="meshkit-bench-"))
    sup = Supervisor(workdir, workdir / "secrets", loop=args.loop)
    previous = _interruptible()
    try:
        results = asyncio.run(run(args, sup, workdir, args_list))
    except KeyboardInterrupt:
        print("\ninterrupted; every worker process was stopped", file=sys.stderr)
        return 130
    finally:
        sup.kill_all()
        _restore(previous)
        if args.keep_workdir:
            print(f"work directory kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.print_targets(results["targets"], report.machine_note(results))
    stem = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nresults: {path}  ({results['duration_s']:.0f} s)", flush=True)
    if args.plot:
        for png in report.plot(results, args.out, stem):
            print(f"chart:   {png}", flush=True)
    if args.markdown is not None:
        args.markdown.write_text(report.markdown(results))
        print(f"markdown: {args.markdown}", flush=True)
    for name, err in results["errors"].items():
        print(f"scenario {name} failed: {err}", file=sys.stderr)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 1 if results["errors"] else 0
