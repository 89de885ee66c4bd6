"""Profile one overhead contender under load with py-spy: where do client and server spend?

``python -m benchmarks.profile --layers full --concurrency 32 --seconds 8`` starts the
contender's server and client workers (as the overhead scenario does), drives load, and
samples both processes with ``py-spy record`` (sampling at 250 Hz, idle threads excluded);
it prints, per process, the frames with the most *self* samples and the meshkit
frames with the most *inclusive* samples (file:line), and keeps the collapsed stacks
(``<out>/<role>.txt``, loadable by speedscope or flamegraph.pl). Needs ``py-spy``.

``--layers`` takes layer names from :data:`benchmarks.stacks.LAYERS` (comma-separated),
``full`` for every available policy layer, or ``raw`` for plain grpc.aio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import stacks
from benchmarks.procs import Supervisor
from benchmarks.runner import _interruptible, _restore

__all__ = ["main", "summarize"]


def summarize(collapsed: Path, top: int = 15) -> str:
    """Self and inclusive hot spots of a py-spy ``--format raw`` (collapsed stacks) file."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        self_counts[frames[-1]] += count
        for f in set(frames):
            if "meshkit/" in f or "benchmarks/" in f or "site-packages/" in f:
                incl[f] += count
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples; top self time:"]
    for frame, hits in self_counts.most_common(top):
        out.append(f"  {100 * hits / total:5.1f}%  {frame}")
    out.append("  top inclusive meshkit frames:")
    for frame, hits in [(f, k) for f, k in incl.most_common() if "meshkit/" in f][:top]:
        out.append(f"  {100 * hits / total:5.1f}%  {frame}")
    return "\n".join(out)


def _load_line(res: dict[str, Any]) -> str:
    """The load's figures: QPS and p50 of the served calls, and the failed calls by
    status code when there were any (a stack failing every call has no p50 to show:
    "0 us" read as the fastest)."""
    errors: dict[str, int] = res.get("errors") or {}
    failed = sum(errors.values())
    served = (f"{res['qps']:.0f} QPS, p50 {res['p50_us']:.0f} us" if res.get("ok", 1)
              else "no call served")
    if not failed:
        return served
    codes = ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))
    return (f"{served}; {failed:,} of {res.get('calls', failed):,} calls failed ({codes}): "
            "the profile is partly or wholly of failing calls")


async def _stop_spies(spies: list[asyncio.subprocess.Process], wait_s: float = 5.0) -> None:
    """Stop the py-spy recorders still running (SIGTERM, SIGKILL after ``wait_s`` seconds)
    and wait for each, on this loop: a recorder left running outlives an interrupted
    profile, and its transport, collected after the loop closed, prints a traceback."""
    for spy in spies:
        if spy.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                spy.terminate()
    for spy in spies:
        try:
            await asyncio.wait_for(spy.wait(), wait_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                spy.kill()
            await spy.wait()


async def _run(args: argparse.Namespace, workdir: Path, sup: Supervisor) -> None:
    secrets = stacks.Secrets(workdir / "secrets")
    for note in secrets.create():
        print(f"note: {note}")
    if args.layers == "raw":
        kind, layers = "raw", ()
    else:
        names = stacks.FULL_LAYERS if args.layers == "full" else tuple(
            x for x in args.layers.split(",") if x)
        kind = "mesh"
        notes = {n: stacks.layer_note(n, secrets) for n in names}
        for n, why in notes.items():
            if why is not None:
                print(f"note: layer {n!r} left out: {why}")
        layers = tuple(n for n, why in notes.items() if why is None)
    registry = f"local://{workdir / 'registry'}"
    server = await sup.server("srv", kind=kind, layers=layers, service="prof",
                              registry=registry)
    client = await sup.client("cli")
    await client.request({"op": "open", "name": "main", "kind": kind, "layers": list(layers),
                          "service": "prof", "registry": registry,
                          "address": f"127.0.0.1:{server.port}"}, timeout_s=30)
    await client.request({"op": "load", "name": "main", "concurrency": args.concurrency,
                          "duration_s": 1.0}, timeout_s=60)
    load = asyncio.create_task(client.request(
        {"op": "load", "name": "main", "concurrency": args.concurrency,
         "duration_s": args.seconds + 2.0}, timeout_s=args.seconds + 60))
    await asyncio.sleep(0.5)
    args.out.mkdir(parents=True, exist_ok=True)
    spies: list[tuple[str, asyncio.subprocess.Process]] = []
    try:
        for role, pid in (("server", server.pid), ("client", client.pid)):
            spies.append((role, await asyncio.create_subprocess_exec(
                args.py_spy, "record", "--pid", str(pid),
                "--duration", str(max(1, round(args.seconds))),
                "--rate", "250", "--format", "raw", "--output", str(args.out / f"{role}.txt"),
                "--nonblocking", stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)))
        for role, spy in spies:
            _, err = await spy.communicate()
            if spy.returncode:
                print(f"py-spy on the {role} failed: {err.decode(errors='replace')[-400:]}")
    finally:  # interrupted (or failed): no recorder left running, each waited for here
        await _stop_spies([spy for _, spy in spies])
    res = await load
    print(f"layers: {kind} {','.join(layers)}; concurrency {args.concurrency}: "
          + _load_line(res))
    for role, _ in spies:
        path = args.out / f"{role}.txt"
        print(f"\n{role} ({path})")
        print(summarize(path, args.top) if path.exists() else "  (no profile)")


def main(argv: list[str] | None = None) -> int:
    """Profile one contender; returns 0, or 2 when py-spy is missing."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    p.add_argument("--layers", default="full",
                   help="raw, full, or comma-separated layer names (default full)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"))
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(
        Path(sys.executable).parent / "py-spy"))
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    if args.concurrency < 1 or not args.seconds > 0 or args.top < 0:
        p.error(f"need --concurrency >= 1, --seconds > 0 and --top >= 0, got "
                f"--concurrency {args.concurrency}, --seconds {args.seconds}, --top {args.top}")
    if args.layers not in ("raw", "full"):
        names = [x for x in args.layers.split(",") if x]
        if not names:  # not the bare mesh, a profile of nothing that was asked for
            p.error(f"--layers: none given in {args.layers!r}; choose raw, full or from "
                    f"{', '.join(stacks.LAYERS)}")
        unknown = [x for x in names if x not in stacks.LAYERS]
        if unknown:
            p.error(f"--layers: unknown {', '.join(map(repr, unknown))}; choose raw, full "
                    f"or from {', '.join(stacks.LAYERS)}")
    if not Path(args.py_spy).exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="meshkit-prof-"))
    sup = Supervisor(workdir, workdir / "secrets")

    async def go() -> None:
        try:
            await _run(args, workdir, sup)
        finally:
            await sup.close()

    # SIGINT (even inherited as ignored) and SIGTERM interrupt it through go()'s finally,
    # which stops the workers, as in the runner
    previous = _interruptible()
    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        print("\ninterrupted; every worker process was stopped", file=sys.stderr)
        return 130
    finally:
        sup.kill_all()
        _restore(previous)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
