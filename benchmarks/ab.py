"""Latency and throughput of two code trees side by side: the closest A/B this machine
allows for a change to one side of a call, or to both.

``python -m benchmarks.ab --base /path/to/old/tree [--new /path/to/new/tree]`` (``--new``
defaults to this checkout; ``git worktree add --detach ../base REV`` makes an old tree)
starts, for ``--side server`` (the default), a meshkit server from each tree in its own
process, each driven by a plain grpc.aio client process, which run ``--rounds`` rounds of
``--calls`` unary calls (``--callers`` at once) in alternating order; for ``--side
client``, one meshkit server (from ``--new``) and a meshkit client process from each
tree, alternating the same way; for ``--side both``, a meshkit server and a meshkit
client from each tree (the way meshkit runs on both sides of a call: a change to both
sides, or one whose effect depends on the other side's code, is measured whole, e.g. a
client's deferred work against a server's own deferral). Only the side under test
differs, and both trees' rounds share the machine's state of the moment: on a shared VM
whose speed moves by more than a change between two runs (a tree's p50 at one caller moved
from 685 to 564 us between two runs on 2026-12-04), paired rounds still resolve a few
microseconds. It prints each tree's median round p50, mean and QPS, and the median
per-round difference (new minus base) with how many rounds the new tree was lower.
``--telemetry defaults`` (as shipped) or ``traced`` (every call sampled into an SDK batch
processor that drops spans) on both processes of a call. ``--loop uvloop`` runs every
process on uvloop's event loop (``meshkit[fast]``).
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from benchmarks._interrupt import interruptible as _interruptible
from benchmarks._interrupt import restore as _restore

__all__ = ["main", "run"]

_WORKER = str(Path(__file__).with_name("_ab_worker.py"))
_HERE = str(Path(__file__).resolve().parents[1])
ANSWER_TIMEOUT_S = 300.0
"""The longest a worker may take to start (import, warm-up) or to answer a round, seconds;
a worker silent for longer is killed and the run fails naming its tree."""


class _Proc:
    """A worker process of one tree, talked to line by line."""

    def __init__(self, tree: str, *args: str, loop: str = "asyncio",
                 warmup_calls: int = 300) -> None:
        env = dict(os.environ, PYTHONPATH=tree, MESHKIT_BENCH_LOOP=loop,
                   MESHKIT_AB_WARMUP_CALLS=str(warmup_calls))
        self.what = f"worker {args!r} of {tree}"
        self.proc = subprocess.Popen([sys.executable, _WORKER, *args], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        # its lines through a thread, so that a read can stop waiting (a hung worker)
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True,
                                        name="ab-worker-stdout")
        self._reader.start()
        try:
            first = self.read().split()
        except BaseException:  # no answer in time (killed), or interrupted while it starts:
            self.proc.kill()  # not yet in _session's list, whose finally would stop it
            self.close()
            raise
        if not first or first[0] != "ready":
            self.close()
            raise RuntimeError(f"{self.what} did not start: {first!r}")
        self.ready = first

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of its output

    def read(self) -> str:
        """The worker's next line (``""`` once it exited).

        Raises:
            RuntimeError: it said nothing within :data:`ANSWER_TIMEOUT_S` (it is killed).
        """
        try:
            return self._lines.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            self.proc.kill()
            raise RuntimeError(f"{self.what}: no answer within {ANSWER_TIMEOUT_S:.0f} s "
                               "(killed)") from None

    def ask(self, line: str) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        got = self.read().split()
        if len(got) != 3:
            raise RuntimeError(f"{self.what} answered {got!r}")
        return [float(x) for x in got]

    def end_input(self) -> None:
        """Close its stdin: the worker stops (drains, exits) without being waited for."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def close(self) -> None:
        """Stop the worker and wait for it (killed after 15 s); its pipes are closed."""
        self.end_input()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5.0)  # it ends at the pipe's end, once the worker exited
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run(base: str, new: str, *, side: str = "server", telemetry: str = "defaults",
        rounds: int = 40, calls: int = 300, callers: int = 1,
        loop: str = "asyncio", sessions: int = 4,
        warmup_calls: int = 300) -> dict[str, Any]:
    """The A/B (see the module docstring): per tree (``"base"``, ``"new"``) the rounds'
    ``[p50_us, mean_us, qps]``, and their summary; ``loop`` is every process's event loop
    (``"asyncio"`` or ``"uvloop"``). The rounds are split over ``sessions`` sets of fresh
    processes (>= 1), started base first in even sessions and new first in odd ones: a
    set of processes keeps a bias of its own (in A/A runs the tree started second read
    faster in five of six sets, by 3 to 37 us of p50), which alternating start orders
    cancel. ``warmup_calls``: calls each driver makes before its first round (300).

    Raises:
        ValueError: ``side`` is unknown, or not ``1 <= sessions <= rounds``, or not
            ``1 <= callers <= calls`` (a round runs ``calls // callers`` calls per caller).
    """
    if side not in ("server", "client", "both"):
        raise ValueError(f"side must be 'server', 'client' or 'both', got {side!r}")
    if sessions < 1 or rounds < sessions:
        raise ValueError(f"need 1 <= sessions <= rounds, got sessions={sessions!r}, "
                         f"rounds={rounds!r}")
    if not 1 <= callers <= calls:  # a round of no call has no median: its worker died
        raise ValueError(f"need 1 <= callers <= calls, got callers={callers!r}, "
                         f"calls={calls!r}")
    got: dict[str, list[list[float]]] = {"base": [], "new": []}
    trees = (("base", base), ("new", new))
    for session in range(sessions):
        order = trees if session % 2 == 0 else trees[::-1]
        share = rounds // sessions + (session < rounds % sessions)
        _session(got, order, side, telemetry, share, calls, callers, loop, warmup_calls)
    diffs = [n[0] - b[0] for n, b in zip(got["new"], got["base"], strict=True)]
    summary = {name: {"p50_us": statistics.median(r[0] for r in rs),
                      "mean_us": statistics.median(r[1] for r in rs),
                      "qps": statistics.median(r[2] for r in rs)} for name, rs in got.items()}
    summary["new_minus_base_p50_us"] = statistics.median(diffs)
    summary["rounds_new_lower"] = sum(d < 0 for d in diffs)
    return {"rounds": got, "summary": summary}


def _session(got: dict[str, list[list[float]]], order: tuple[tuple[str, str], ...],
             side: str, telemetry: str, rounds: int, calls: int, callers: int,
             loop: str, warmup_calls: int = 300) -> None:
    """One set of fresh processes, started in ``order``, running ``rounds`` alternating
    rounds into ``got``; they are stopped together (all told to stop, then waited for:
    one after another they took 0.7-1.1 s a session)."""
    procs: list[_Proc] = []
    new = dict(order)["new"]
    loop_kw: dict[str, Any] = {"loop": loop, "warmup_calls": warmup_calls}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            drivers: dict[str, _Proc] = {}
            if side == "server":
                for name, tree in order:
                    srv = _Proc(tree, "server", telemetry, os.path.join(tmp, name), **loop_kw)
                    procs.append(srv)
                    drivers[name] = _Proc(_HERE, "raw", f"127.0.0.1:{srv.ready[1]}",
                                          **loop_kw)
                    procs.append(drivers[name])
            elif side == "both":
                for name, tree in order:
                    registry = os.path.join(tmp, name)
                    procs.append(_Proc(tree, "server", telemetry, registry, **loop_kw))
                    drivers[name] = _Proc(tree, "client", telemetry, registry, **loop_kw)
                    procs.append(drivers[name])
            else:
                registry = os.path.join(tmp, "registry")
                procs.append(_Proc(new, "server", telemetry, registry, **loop_kw))
                for name, tree in order:
                    drivers[name] = _Proc(tree, "client", telemetry, registry, **loop_kw)
                    procs.append(drivers[name])
            first, second = (name for name, _ in order)
            for r in range(rounds):
                for name in ((first, second) if r % 2 == 0 else (second, first)):
                    got[name].append(drivers[name].ask(f"{calls} {callers}"))
    finally:
        for p in procs:
            p.end_input()
        for p in procs:
            p.close()


def main(argv: list[str] | None = None) -> int:
    """Run the A/B and print its summary; returns 0, or 130 when interrupted (SIGINT or
    SIGTERM: every worker stopped first)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the old code tree")
    p.add_argument("--new", default=_HERE, help="the new code tree (default: this checkout)")
    p.add_argument("--side", choices=("server", "client", "both"), default="server")
    p.add_argument("--telemetry", choices=("defaults", "traced"), default="defaults")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calls", type=int, default=300, help="calls per round per tree")
    p.add_argument("--callers", type=int, default=1, help="concurrent callers")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="every process's event loop (default asyncio)")
    p.add_argument("--sessions", type=int, default=4,
                   help="sets of fresh processes the rounds are split over, in alternating "
                        "start order (default 4)")
    a = p.parse_args(argv)
    if not 1 <= a.callers <= a.calls:
        p.error(f"need 1 <= --callers <= --calls, got --callers {a.callers}, "
                f"--calls {a.calls}")
    if not 1 <= a.sessions <= a.rounds:
        p.error(f"need 1 <= --sessions <= --rounds, got --sessions {a.sessions}, "
                f"--rounds {a.rounds}")
    previous = _interruptible()
    try:
        s = run(a.base, a.new, side=a.side, telemetry=a.telemetry, rounds=a.rounds,
                calls=a.calls, callers=a.callers, loop=a.loop, sessions=a.sessions)["summary"]
    except KeyboardInterrupt:  # _session's finally stopped the workers
        print("\ninterrupted; every worker process was stopped", file=sys.stderr)
        return 130
    finally:
        _restore(previous)
    sides = "both sides" if a.side == "both" else f"{a.side} side"
    print(f"{sides}, telemetry {a.telemetry}, {a.rounds} alternating rounds of "
          f"{a.calls} calls, {a.callers} caller(s), {a.loop} event loop, "
          f"{a.sessions} session(s)")
    for name in ("base", "new"):
        print(f"  {name:4s}  p50 {s[name]['p50_us']:8.1f} us  mean {s[name]['mean_us']:8.1f} us"
              f"  {s[name]['qps']:9.1f} QPS   (medians of the rounds)")
    print(f"  new - base p50, median per round: {s['new_minus_base_p50_us']:+.1f} us "
          f"({s['rounds_new_lower']} of {a.rounds} rounds lower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
