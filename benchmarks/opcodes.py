"""Python bytecodes per call, by function, of the mesh's variants.

``python -m benchmarks.opcodes --variants raw,defaults`` (seconds per variant) runs each
variant of :mod:`benchmarks.instructions` (one process holding a real server and channel,
plaintext loopback, unary ``Echo/Unary``) in its own process and counts, with
``sys.settrace`` opcode events, the bytecodes each Python function executes during the
measured calls (after the warm-up; access lines of those calls rendered inside the count).
It prints the totals per call, then, for every variant after the first, the functions
whose bytecodes per call differ most from the first variant's.

Where ``benchmarks.instructions`` says *how much* a variant costs (every machine
instruction, grpc's C core included), this says *which Python function* the difference is
in: callgrind sees one interpreter loop, not the functions it runs. With one caller the
counts do not depend on the machine's load, and repeat within about 30 bytecodes per call
(how often the event loop turns while the call waits on grpc varies: compare trees by
several counts each); with several callers how many calls one loop turn serves depends on
timing. Not counted: C and Cython code (grpc's core,
grpc.aio's Cython server, orjson, the garbage collector) and threads other than the event
loop's (e.g. the SDK's span export thread). A bytecode costs about 30-75 machine
instructions here (more where it calls into C), so the table ranks Python work; it does not
replace the instruction count.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from types import FrameType
from typing import Any

from benchmarks import instructions
from benchmarks.procs import LOOP_ENV

__all__ = ["count", "main"]

_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


def _where(code: Any) -> str:
    """``file:line name`` of a code object, with the checkout, site-packages and stdlib
    prefixes cut."""
    path: str = code.co_filename
    if "site-packages" + os.sep in path:
        path = path.split("site-packages" + os.sep, 1)[1]
    elif path.startswith(_STDLIB):
        path = "<stdlib>/" + path[len(_STDLIB):]
    else:
        path = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path}:{code.co_firstlineno} {code.co_name}"


@contextlib.contextmanager
def _counting(ops: collections.Counter[Any], entered: collections.Counter[Any]) -> Iterator[None]:
    """Count into ``ops`` the opcodes each code object executes on this thread, and into
    ``entered`` how often its frames start, while the block runs. Lines waiting in the
    access log are written first (the warm-up's) and last (the measured calls')."""
    from meshkit.observability import flush_logs

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        code = frame.f_code
        entered[code] += 1

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                ops[code] += 1
            return local

        # Python 3.12+ (PEP 669 underneath sys.settrace) turns opcode events on for a
        # frame whose f_trace is set when f_trace_opcodes is: set f_trace first (on
        # 3.11 the order does not matter; on 3.12.1 the other order counted nothing)
        frame.f_trace = local
        frame.f_trace_opcodes = True
        return local

    flush_logs()
    # 3.12+: opcode tracing is taken from the frame that calls settrace (CPython issues
    # 103615, 114480): without this, frames entered later counted nothing on 3.12.1
    # and their first frame was missed on 3.13
    here = sys._getframe()
    here.f_trace_opcodes = True
    sys.settrace(tracer)
    try:
        yield
        flush_logs()
    finally:
        sys.settrace(None)
        here.f_trace_opcodes = False


def _child(variant: str, calls: int, callers: int, out: str) -> None:
    ops: collections.Counter[Any] = collections.Counter()
    entered: collections.Counter[Any] = collections.Counter()
    instructions.around_measured = lambda: _counting(ops, entered)
    instructions._child(variant, calls, callers)
    n = calls // callers * callers
    by_fn: dict[str, list[float]] = {}
    for code in set(ops) | set(entered):
        row = by_fn.setdefault(_where(code), [0.0, 0.0])
        row[0] += ops[code] / n
        row[1] += entered[code] / n
    with open(out, "w") as f:
        json.dump(by_fn, f)


def count(variant: str, calls: int, callers: int,
          loop: str = "asyncio") -> dict[str, list[float]]:
    """``{function: [bytecodes per call, frames started per call]}`` of ``variant``, run in
    a child process (``calls`` measured calls by ``callers`` concurrent callers) on ``loop``
    (``"asyncio"`` or ``"uvloop"``, whose own turns are C and not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "counts.json")
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.opcodes", "--child", variant, str(calls),
             str(callers), out],
            capture_output=True, text=True, env={**os.environ, LOOP_ENV: loop}, timeout=600,
            check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant}: {proc.stderr[-2000:]}")
        with open(out) as f:
            got: dict[str, list[float]] = json.load(f)
    return got


def main(argv: list[str] | None = None) -> int:
    """Count and print the markdown tables; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.opcodes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="raw,defaults",
                        help=f"comma-separated, from {', '.join(instructions.VARIANTS)}; "
                             "the first is the base of the differences (default raw,defaults)")
    parser.add_argument("--calls", type=int, default=400, help="measured calls (default 400)")
    parser.add_argument("--callers", type=int, default=1,
                        help="concurrent callers (default 1: counts that repeat within ~30 a call)")
    parser.add_argument("--top", type=int, default=30,
                        help="functions listed per difference (default 30)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop of every variant (default asyncio)")
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "CALLS", "CALLERS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]), args.child[3])
        return 0
    variants = list(dict.fromkeys(v for v in args.variants.split(",") if v))  # each once
    unknown = [v for v in variants if v not in instructions.VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variants {unknown!r}; choose from "
                     f"{', '.join(instructions.VARIANTS)}")
    if not 1 <= args.callers <= args.calls or args.top < 0:
        parser.error(f"need 1 <= --callers <= --calls and --top >= 0, got "
                     f"{args.callers} callers, {args.calls} calls, --top {args.top}")
    counts = {v: count(v, args.calls, args.callers, args.loop) for v in variants}
    print(f"Python bytecodes per call (sys.settrace), client and server in one process, "
          f"{args.callers} caller(s), {args.calls} calls, {args.loop} event loop\n")
    print("| variant | bytecodes per call | Python frames per call |\n|---|---:|---:|")
    for v, by_fn in counts.items():
        print(f"| {v} | {sum(r[0] for r in by_fn.values()):,.0f} "
              f"| {sum(r[1] for r in by_fn.values()):,.1f} |")
    base_name, base = variants[0], counts[variants[0]]
    for v in variants[1:]:
        got = counts[v]
        rows = sorted(((got.get(k, [0, 0])[0] - base.get(k, [0, 0])[0], k)
                       for k in set(got) | set(base)), key=lambda r: (-abs(r[0]), r[1]))
        print(f"\n{v} against {base_name}: the {args.top} largest differences\n")
        print(f"| function | {base_name} | {v} | difference |\n|---|---:|---:|---:|")
        for diff, k in rows[:args.top]:
            print(f"| `{k}` | {base.get(k, [0, 0])[0]:.1f} | {got.get(k, [0, 0])[0]:.1f} "
                  f"| {diff:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
