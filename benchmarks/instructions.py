"""Instructions per call of the mesh's variants, counted by callgrind (load-independent).

CPU-time figures on a small shared VM move by more than a mesh layer from run to run when
anything else runs. Instruction counts do not: ``valgrind --tool=callgrind`` counts what a
process executes, the same for the same code whatever else the machine is doing.

``python -m benchmarks.instructions`` (about two minutes per variant; needs ``valgrind``)
runs, for each variant, one process holding a real :class:`meshkit.MeshServer` and a real
:func:`meshkit.dial` channel (plaintext, loopback, unary ``Echo/Unary``, ``--callers``
concurrent callers, default 1), twice under callgrind: with ``--calls-low`` and with
``--calls-high`` calls. The difference of the two totals divided by the difference of the
calls the two ran (``calls // callers`` per caller) is the instructions per call, client
and server together, with start-up and shutdown cancelled out. With one caller the count
repeats closely; with several, how many calls one event-loop turn or one poll serves
depends on timing, and counts on a loaded machine moved by about 4 % between runs.
Access lines go through :func:`meshkit.observability.configure_logging` (JSON) to
``/dev/null``.

Work that runs per unit of *time* rather than per call does not cancel out: callgrind runs
a process about 50 times slower, so a registry watch polling every 50 ms would run once
every call or two. The local registry here polls every 600 s and heartbeats every 1200 s
(the channel reads it once when it opens); with a 50 ms poll, as before 2026-12-03, every
mesh variant counted about 60k instructions per call of registry polling. Calls carry a
60 s timeout: a call runs tens of milliseconds under callgrind on a loaded machine.

Variants (``--variants``, comma-separated):

* ``raw``: plain grpc.aio server and channel with the same echo handler;
* ``bare``: ``serve()``/``dial()`` with every policy off (round robin, no retries, no
  ejection, no deadline check, no request gate, no admin server, no telemetry);
* ``nolog``: the defaults without telemetry (P2C, retries armed, ejection, deadline
  admission, the request gate);
* ``metrics``: ``nolog`` plus RED metrics;
* ``defaults``: ``dial()``/``serve()`` as shipped (metrics and the JSON access log);
* ``shipped``: ``defaults`` with tracing on as ``TelemetryOptions()`` ships it, with no
  SDK installed (what the wall-clock benchmark's ``defaults`` runs: spans only under a
  caller's trace context, none here);
* ``nogate``: ``defaults`` with ``ServerLimits(read_requests=False)``;
* ``registered``: ``defaults`` with the echo service added as registered method handlers,
  as the ``add_*_to_server`` functions grpcio-tools generates add a service (the other
  variants add it as a generic handler);
* ``noop``: ``raw`` plus one pass-through grpc.aio interceptor on each side (a
  ``grpc.aio.ServerInterceptor`` returning ``await continuation(details)`` and a
  ``grpc.aio.UnaryUnaryClientInterceptor`` returning ``await continuation(details,
  request)``): the floor of any layer added through grpc.aio's interceptor API;
* ``bare-server``: a plain grpc.aio channel calling a ``bare`` ``serve()`` server (with
  ``bare``, splits the mesh's base cost into client and server);
* ``traced``: ``defaults`` with tracing at 100 % into an SDK ``TracerProvider`` whose
  ``BatchSpanProcessor`` exporter drops the spans (the export thread is counted too);
* ``full``: the wall-clock benchmark's ``full`` contender (``benchmarks.stacks``: every
  policy layer, JWT and rate limit included, tracing at 100 %), on the echo service;
* ``header``: ``defaults`` with one W3C ``traceparent`` header on every call, which the
  server does not read (tracing off): what grpc itself charges to carry a trace context
  (HPACK both ways, the metadata arrays), part of what ``traced`` adds.

``--cpu ROUNDS`` measures CPU time instead, without callgrind: each variant's process runs
``--calls-high`` calls with ``--callers`` callers after its warm-up, ``ROUNDS`` times in
alternating order, and reports ``getrusage`` for the measured calls: user and system
microseconds per call, voluntary and involuntary context switches and minor page faults
per call, and the garbage collector's runs (young: generations 0 and 1; full: 2) and
time per call (``gc.callbacks``) (medians; "added" is the median of per-round
differences with ``raw`` of the same round). It says
what kind of time a mesh adds (callgrind counts user-space instructions only: grpc's
system calls and thread hand-offs are not in its counts), and at what rate the added
instructions run. CPU time moves with the VM; compare within one run only.

``--child VARIANT CALLS CALLERS`` is the measured process itself (what callgrind runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = ["VARIANTS", "callgrind_total", "calls_run", "main", "measure", "mesh_options"]

VARIANTS = ("raw", "bare", "nolog", "metrics", "defaults", "shipped", "nogate", "registered",
            "noop", "bare-server", "traced", "full", "header")


async def _raw(calls: int, callers: int, noop: bool = False) -> None:
    import grpc

    from tests.support.echo import method, raw_echo

    class PassServer(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    class PassClient(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any,
                                        request: Any) -> Any:
            return await continuation(details, request)

    async with raw_echo(server_interceptors=(PassServer(),) if noop else None,
                        channel_interceptors=(PassClient(),) if noop else None) as channel:
        await _drive(channel.unary_unary(method("Unary")), calls, callers)


async def _full(calls: int, callers: int, tmp: str) -> None:
    from pathlib import Path

    import meshkit
    from benchmarks import stacks
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import add_echo, method

    secrets = stacks.Secrets(Path(tmp) / "secrets")
    notes = secrets.create()
    if notes:
        raise RuntimeError("; ".join(notes))
    registry = LocalRegistry(LocalOptions(path=Path(tmp) / "registry", ttl_s=3600.0,
                                          poll_interval_s=600.0))
    served = stacks.build_mesh(stacks.FULL_LAYERS, secrets, "server", service="echo")
    server = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                                options=stacks.mesh_serve_options(
                                    served, instance_id="e1", drain_delay_s=0, grace_s=1.0))
    await server.start()
    dialed = stacks.build_mesh(stacks.FULL_LAYERS, secrets, "client", service="echo")
    channel = meshkit.dial("echo", registry=registry,
                           options=stacks.mesh_dial_options(dialed))
    try:
        await channel.wait_for_endpoints(1, timeout_s=120)
        await _drive(channel.unary_unary(method("Unary")), calls, callers,
                     tuple(dialed.metadata) or None)
    finally:
        await channel.close()
        await server.drain()
        await registry.close()


def mesh_options(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ServeOptions keywords, DialOptions keywords)`` of a mesh variant (see the module
    docstring; ``bare-server``'s server is ``bare``'s)."""
    from prometheus_client import CollectorRegistry

    import meshkit
    from meshkit.balancer import RoundRobin
    from meshkit.observability import TelemetryOptions

    telemetry = None
    if variant in ("metrics", "defaults", "nogate", "registered", "header"):
        telemetry = TelemetryOptions(registry=CollectorRegistry(), tracing=False,
                                     metrics=True, access_log=variant != "metrics")
    elif variant == "shipped":  # TelemetryOptions() as shipped: tracing on, no SDK
        telemetry = TelemetryOptions(registry=CollectorRegistry())
    elif variant == "traced":
        telemetry = TelemetryOptions(registry=CollectorRegistry(),
                                     tracer_provider=_dropping_provider())
    serve: dict[str, Any] = {"insecure": True, "drain_delay_s": 0, "grace_s": 1.0,
                             "telemetry": telemetry}
    dial: dict[str, Any] = {"insecure": True, "telemetry": telemetry}
    if variant in ("bare", "bare-server", "nogate"):
        serve["limits"] = meshkit.ServerLimits(read_requests=False)
    if variant in ("bare", "bare-server"):
        serve.update(deadline=None, admin=None, reflection=False)
        dial.update(balancer=RoundRobin, outlier=None, retry=None)
    return serve, dial


async def _mesh(variant: str, calls: int, callers: int, tmp: str) -> None:
    import meshkit
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import add_echo, method

    serve, dial = mesh_options(variant)
    registry = LocalRegistry(LocalOptions(path=tmp, ttl_s=3600.0, poll_interval_s=600.0))
    server = meshkit.MeshServer("echo", [add_echo("e1", registered=variant == "registered")],
                                registry=registry, options=meshkit.ServeOptions(**serve))
    await server.start()
    if variant == "bare-server":
        import grpc

        plain = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            await _drive(plain.unary_unary(method("Unary")), calls, callers)
        finally:
            await plain.close()
            await server.drain()
            await registry.close()
        return
    channel = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(**dial))
    try:
        await channel.wait_for_endpoints(1, timeout_s=120)  # callgrind runs ~50x slower
        md = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),) \
            if variant == "header" else None
        await _drive(channel.unary_unary(method("Unary")), calls, callers, md)
    finally:
        await channel.close()
        await server.drain()
        await registry.close()


def _dropping_provider() -> Any:
    """An SDK tracer provider sampling every trace into a batch processor whose exporter
    drops the spans (the span pipeline's cost without an export)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


_rusage: dict[str, float] = {}  # the measured calls' getrusage figures per call (--cpu)

# What runs around the measured calls (after the warm-up): nothing here; benchmarks.opcodes
# sets a context manager that counts the bytecodes the calls execute.
around_measured: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


def calls_run(calls: int, callers: int) -> int:
    """The calls a child asked for ``calls`` with ``callers`` callers runs after its
    warm-up: ``calls // callers`` per caller."""
    return calls // callers * callers


async def _drive(call: Any, calls: int, callers: int, metadata: Any = None) -> None:
    for _ in range(200):  # warm-up: connections, caches, first-call set-up
        await call(b"x", timeout=60, metadata=metadata)

    async def caller(n: int) -> None:
        for _ in range(n):
            await call(b"x", timeout=60, metadata=metadata)

    gc_runs, gc_s = [0, 0, 0], [0.0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_runs[info["generation"]] += 1
            gc_s[0] += time.perf_counter() - started[0]

    from meshkit.observability import flush_logs

    flush_logs()  # the warm-up's access lines are written before the window
    gc.callbacks.append(on_gc)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        with around_measured():
            await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
            for _ in range(3):  # a client call's line is captured turns after it
                await asyncio.sleep(0)
            flush_logs()  # the calls' own lines are rendered and written in it
    finally:
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        gc.callbacks.remove(on_gc)
    n = calls_run(calls, callers)
    _rusage.update(user_us=(r1.ru_utime - r0.ru_utime) / n * 1e6,
                   system_us=(r1.ru_stime - r0.ru_stime) / n * 1e6,
                   voluntary_cs=(r1.ru_nvcsw - r0.ru_nvcsw) / n,
                   involuntary_cs=(r1.ru_nivcsw - r0.ru_nivcsw) / n,
                   minor_faults=(r1.ru_minflt - r0.ru_minflt) / n,
                   gc_us=gc_s[0] / n * 1e6,
                   gc_young_per_1k=(gc_runs[0] + gc_runs[1]) / n * 1000,
                   gc_full_per_1k=gc_runs[2] / n * 1000,
                   wall_us=(t1 - t0) / n * 1e6)


_loop = "asyncio"  # the event loop the child processes run on (--loop)


def _child_env() -> dict[str, str]:
    from benchmarks.procs import LOOP_ENV

    return {**os.environ, LOOP_ENV: _loop}


def _child(variant: str, calls: int, callers: int) -> None:
    import meshkit
    from benchmarks.procs import LOOP_ENV
    from meshkit.observability import configure_logging, flush_logs

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), \
            tempfile.TemporaryDirectory() as tmp:
        configure_logging("info", json=True)
        if variant in ("raw", "noop"):
            main = _raw(calls, callers, noop=variant == "noop")
        elif variant == "full":
            main = _full(calls, callers, tmp)
        else:
            main = _mesh(variant, calls, callers, tmp)
        meshkit.run(main, use_uvloop=os.environ.get(LOOP_ENV) == "uvloop")
        flush_logs()


def callgrind_total(argv: list[str], out_dir: str, name: str) -> int:
    """Instructions callgrind counts for ``python -m <argv>`` (one child process)."""
    out = os.path.join(out_dir, f"callgrind.{name}")
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         "-m", *argv],
        capture_output=True, text=True, env=_child_env(), timeout=1800, check=False)
    found = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {name!r} failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def _count(variant: str, calls: int, callers: int, out_dir: str) -> int:
    """Instructions callgrind counts for one child process running ``calls`` calls."""
    return callgrind_total(["benchmarks.instructions", "--child", variant, str(calls),
                            str(callers)], out_dir, f"{variant}.{calls}")


def measure(variant: str, low: int, high: int, callers: int = 1) -> float:
    """Instructions per call of ``variant`` (see the module docstring): the difference of
    the counts of a child asked for ``high`` calls and one asked for ``low``, divided by
    the difference of the calls they ran (:func:`calls_run`: a whole number per caller).

    Raises:
        ValueError: ``high`` does not run more calls than ``low`` with ``callers``.
    """
    ran = calls_run(high, callers) - calls_run(low, callers)
    if ran <= 0:
        raise ValueError(f"{high} and {low} calls with {callers} callers do not differ in "
                         "the calls run")
    with tempfile.TemporaryDirectory() as tmp:
        a = _count(variant, low, callers, tmp)
        b = _count(variant, high, callers, tmp)
    return (b - a) / ran


_CPU_FIELDS = ("user_us", "system_us", "voluntary_cs", "involuntary_cs", "minor_faults",
               "gc_us", "gc_young_per_1k", "gc_full_per_1k")


def cpu(variants: list[str], rounds: int, calls: int, callers: int) -> dict[str, Any]:
    """``--cpu``: per variant, the medians over ``rounds`` alternating rounds of each
    ``getrusage`` figure per call, and of its per-round difference with ``raw`` (when
    ``raw`` is among ``variants``)."""
    got: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for v in (variants if r % 2 == 0 else list(reversed(variants))):
                out = os.path.join(tmp, f"{v}.json")
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.instructions", "--child-cpu", v,
                     str(calls), str(callers), out],
                    capture_output=True, text=True, env=_child_env(), timeout=600, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"{v}: {proc.stderr[-2000:]}")
                with open(out) as f:
                    got[v].append(json.load(f))
    result: dict[str, Any] = {}
    for v, runs in got.items():
        row = {k: statistics.median(x[k] for x in runs) for k in _CPU_FIELDS}
        if "raw" in got and v != "raw":
            for k in ("user_us", "system_us"):
                row[f"added_{k}"] = statistics.median(
                    x[k] - base[k] for x, base in zip(runs, got["raw"], strict=True))
        result[v] = row
    return result


def _print_cpu(variants: list[str], rounds: int, calls: int, callers: int) -> None:
    print(f"CPU per call (getrusage), client and server in one process, {callers} "
          f"caller(s), {_loop} event loop, {calls} calls, medians of {rounds} alternating "
          "rounds\n")
    print("| variant | user us | system us | added user us | added system us "
          "| voluntary cs | involuntary cs | page faults | GC us "
          "| young / full GC per 1k calls |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v, row in cpu(variants, rounds, calls, callers).items():
        added = (f"{row['added_user_us']:+.1f} | {row['added_system_us']:+.1f}"
                 if "added_user_us" in row else " | ")
        print(f"| {v} | {row['user_us']:.1f} | {row['system_us']:.1f} | {added} "
              f"| {row['voluntary_cs']:.2f} | {row['involuntary_cs']:.2f} "
              f"| {row['minor_faults']:.2f} | {row['gc_us']:.1f} "
              f"| {row['gc_young_per_1k']:.1f} / {row['gc_full_per_1k']:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print a markdown table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--calls-low", type=int, default=800)
    parser.add_argument("--calls-high", type=int, default=2400)
    parser.add_argument("--callers", type=int, default=1,
                        help="concurrent callers (default 1: the most repeatable count)")
    parser.add_argument("--cpu", type=int, metavar="ROUNDS",
                        help="measure CPU time (getrusage) over ROUNDS alternating rounds of "
                             "--calls-high calls instead of counting instructions")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop of every variant (default asyncio; uvloop "
                             "comes with meshkit[fast])")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "CALLS", "CALLERS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-cpu", nargs=4, metavar=("VARIANT", "CALLS", "CALLERS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    if args.child_cpu:
        _child(args.child_cpu[0], int(args.child_cpu[1]), int(args.child_cpu[2]))
        with open(args.child_cpu[3], "w") as f:
            json.dump(_rusage, f)
        return 0
    global _loop
    _loop = args.loop  # the variants' child processes run on it
    # each once, in the order given (--cpu pairs a variant's rounds with raw's)
    variants = list(dict.fromkeys(v for v in args.variants.split(",") if v))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown!r} or none; choose from "
                     f"{', '.join(VARIANTS)}")
    if args.cpu is not None:
        if args.cpu < 1 or not 1 <= args.callers <= args.calls_high:
            parser.error(f"--cpu needs >= 1 round and 1 <= --callers <= --calls-high, got "
                         f"{args.cpu} rounds, {args.callers} callers")
        _print_cpu(variants, args.cpu, args.calls_high, args.callers)
        return 0
    if not args.calls_high > args.calls_low > 0:
        parser.error("need 0 < --calls-low < --calls-high")
    if not 1 <= args.callers <= args.calls_low:
        parser.error("need 1 <= --callers <= --calls-low")
    low_run, high_run = (calls_run(n, args.callers) for n in (args.calls_low, args.calls_high))
    if high_run == low_run:
        parser.error(f"--calls-low {args.calls_low} and --calls-high {args.calls_high} run "
                     f"{low_run} calls each with {args.callers} callers (a whole number per "
                     "caller): make them further apart")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    print(f"Instructions per call (callgrind), client and server in one process, "
          f"{args.callers} caller(s), {args.loop} event loop; ({high_run} - "
          f"{low_run} calls)\n")
    print("| variant | instructions per call | vs raw |\n|---|---:|---:|")
    raw: float | None = None
    # raw first when asked for: every other row then has its ratio to it
    for v in sorted(variants, key=lambda v: v != "raw"):
        t0 = time.monotonic()
        n = measure(v, args.calls_low, args.calls_high, args.callers)
        raw = n if v == "raw" else raw
        ratio = f"{n / raw:.2f}x" if raw else ""
        print(f"| {v} | {n:,.0f} | {ratio} |", flush=True)
        print(f"  ({v}: {time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
