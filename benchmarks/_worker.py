"""Benchmark worker processes: an echo server, or a load-generating client.

Started by :mod:`benchmarks.procs`; never run by hand. Both speak JSON lines: commands
on stdin, answers on the original stdout (everything else a library prints is sent to
stderr, which the runner writes to a log file). A worker exits when stdin closes, so
nothing outlives the runner.

``server``: serves the echo service (:mod:`tests.support.echo`) as a plain ``grpc.aio``
server (``--kind raw``), the hand-assembled stack (``hand``) or a :class:`meshkit.MeshServer`
with the named layers (``mesh``), prints ``{"ready": ..., "port": ..., "t": <monotonic s at
registration>}`` and serves until SIGTERM/SIGINT or stdin EOF (meshkit servers then drain:
deregister, ``drain_delay_s``, stop). ``{"op": "flush"}`` writes the access-log lines it
still buffers and answers ``{"ok": true, "cpu_s": <process_time()>}`` (CPU seconds of
every thread of the process, at the clock's resolution): the runner sends it before and
at the end of a measured round, so that the round's lines are written (and their CPU
counted) in that round and the round's server CPU is the difference of the two.

``client``: opens named channels (``open``) and drives closed-loop load on them (``load``):
``concurrency`` coroutines calling ``Unary`` back to back until ``duration_s`` or
``max_calls``; answers with latency percentiles, errors by status, the CPU seconds of this
process (access-log lines of the round written within it), calls per serving instance, and
optionally every call's (start, latency, instance).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import grpc

import meshkit
from benchmarks import stacks
from benchmarks.procs import LOOP_ENV
from meshkit.observability import flush_logs
from tests.support import echo

_perf = time.perf_counter


def _protocol_stream() -> IO[str]:
    """Keep the real stdout for answers and point fd 1 (and ``sys.stdout``) at stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class _Wire:
    """JSON lines in (stdin) and out (the protocol stream)."""

    def __init__(self) -> None:
        self.out = _protocol_stream()
        self.reader: asyncio.StreamReader | None = None

    def send(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.reader = reader

    async def recv(self) -> dict[str, Any] | None:
        assert self.reader is not None
        line = await self.reader.readline()
        if not line:
            return None
        return json.loads(line)  # type: ignore[no-any-return]


def _logs() -> None:
    """JSON logs at INFO on stderr (the worker's log file): access-log lines are written
    for real when that layer is on, as a service would."""
    try:
        from meshkit.observability import configure_logging

        configure_logging("INFO", json=True)
    except Exception:  # logging set-up is cosmetic here
        pass


# -- server ----------------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> int:
    wire = _Wire()
    await wire.open()
    secrets = stacks.Secrets(Path(args.secrets))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    layers = tuple(x for x in args.layers.split(",") if x)
    raw_server: grpc.aio.Server | None = None
    mesh_server: Any = None
    try:
        if args.kind in ("raw", "hand"):
            interceptors = (stacks.hand_server_interceptors(secrets, tracing=args.tracing)
                            if args.kind == "hand" else None)
            raw_server = grpc.aio.server(interceptors=interceptors)
            raw_server.add_generic_rpc_handlers((echo.handler(args.instance_id, args.delay_s),))
        else:
            import meshkit

            build = stacks.build_mesh(layers, secrets, "server", service=args.service)
            options = stacks.mesh_serve_options(
                build, instance_id=args.instance_id, drain_delay_s=args.drain_delay_s,
                grace_s=2.0)
            mesh_server = meshkit.MeshServer(
                args.service, [echo.add_echo(args.instance_id, args.delay_s)],
                registry=meshkit.registry_from_uri(args.registry), options=options)
    except stacks.LayerUnavailable as exc:
        wire.send({"error": str(exc), "unavailable": True})
        return 3
    except Exception as exc:
        wire.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    if args.hold:  # built, waiting for {"op": "go"} to bind and register
        wire.send({"held": True, "pid": os.getpid()})
        if await wire.recv() is None:
            return 0

    async def commands() -> None:
        while (cmd := await wire.recv()) is not None:
            if cmd.get("op") == "flush":  # around a measured round: its lines, its CPU
                flush_logs()
                wire.send({"ok": True, "cpu_s": time.process_time()})
        stop.set()

    eof_task = loop.create_task(commands())
    try:
        if raw_server is not None:
            port = raw_server.add_insecure_port("127.0.0.1:0")
            await raw_server.start()
        else:
            await mesh_server.start()
            port = mesh_server.port
        wire.send({"ready": True, "port": port, "t": time.monotonic(), "pid": os.getpid()})
        await stop.wait()
        wire.send({"draining": True, "t": time.monotonic()})
        if raw_server is not None:
            await raw_server.stop(0.5)
        else:
            await mesh_server.drain()
        return 0
    except Exception as exc:
        wire.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        eof_task.cancel()


# -- client ----------------------------------------------------------------------------------
class _Target:
    """One open channel and the function that makes one call on it."""

    def __init__(self, channel: Any, call: Callable[[bytes], Awaitable[bytes]],
                 mesh: bool) -> None:
        self.channel = channel
        self.call = call
        self.mesh = mesh


async def _open(cmd: dict[str, Any], secrets: stacks.Secrets) -> _Target:
    kind = cmd["kind"]
    if kind == "hand":
        channel, call = stacks.hand_client(cmd["address"], secrets,
                                           tracing=cmd.get("tracing", True))
        await asyncio.wait_for(channel.channel_ready(), 10)
        return _Target(channel, call, mesh=False)
    if kind == "raw":
        channel = grpc.aio.insecure_channel(cmd["address"])
        mc: Any = channel.unary_unary(stacks.METHOD)
        await asyncio.wait_for(channel.channel_ready(), 10)
        return _Target(channel, functools.partial(mc, timeout=5.0, metadata=None), mesh=False)
    import meshkit

    build = stacks.build_mesh(tuple(cmd.get("layers", ())), secrets, "client",
                             service=cmd["service"])
    options = stacks.mesh_dial_options(build)
    channel = meshkit.dial(cmd["service"], registry=meshkit.registry_from_uri(cmd["registry"]),
                           options=options)
    mesh_mc: Any = channel.unary_unary(stacks.METHOD)
    md = tuple(build.metadata) or None
    await channel.wait_for_endpoints(int(cmd.get("expect", 1)), timeout_s=15.0)
    return _Target(channel, functools.partial(mesh_mc, timeout=5.0, metadata=md),
                   mesh=True)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def _load(target: _Target, cmd: dict[str, Any]) -> dict[str, Any]:
    """One closed-loop load round on ``target`` (the ``load`` command).

    ``cmd``: ``concurrency`` callers calling back to back until ``duration_s`` seconds
    have passed or ``max_calls`` (default 1,000,000) calls have started; ``size`` request
    bytes (default 64); ``tags``: count answers by serving instance; ``timeline``: also
    return every call.

    Returns:
        ``calls`` (every call that ended), ``ok`` (those that succeeded), ``errors``
        (failed calls by status code name), ``elapsed_s``; ``qps``: successful calls per
        second (goodput: a stack failing calls fast is not faster); ``p50_us``,
        ``p90_us``, ``p99_us``, ``max_us``, ``mean_us``: latencies of the successful calls
        in microseconds (0.0 when none succeeded); ``cpu_s``: this process's CPU seconds
        during the round, the access-log lines it buffered written within it (those
        pending before it are written first, outside it); ``tags``: successful calls by
        instance id; ``timeline`` when asked: ``(monotonic start s, latency s, instance
        id or "!" + status code)`` of every call, failed ones included.
    """
    concurrency = int(cmd["concurrency"])
    duration_s = float(cmd["duration_s"])
    max_calls = int(cmd.get("max_calls", 1_000_000))
    detailed = bool(cmd.get("timeline") or cmd.get("tags"))
    want_timeline = bool(cmd.get("timeline"))
    request = b"x" * int(cmd.get("size", 64))
    call = target.call
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    timeline: list[tuple[float, float, str]] = []
    started = 0
    mono = time.monotonic
    end = 0.0  # set when the round starts, after the flush below

    async def fast() -> None:
        nonlocal started
        lat = latencies.append
        while started < max_calls:
            t0 = _perf()
            if t0 >= end:
                return
            started += 1
            try:
                await call(request)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            lat(_perf() - t0)

    async def slow() -> None:
        nonlocal started
        while started < max_calls:
            t0 = _perf()
            if t0 >= end:
                return
            started += 1
            m0 = mono()
            try:
                reply = await call(request)
                tag = reply[: reply.index(b"|")].decode()
                tags[tag] += 1
                ok = True
            except grpc.aio.AioRpcError as exc:
                tag = "!" + exc.code().name
                errors[exc.code().name] += 1
                ok = False
            dt = _perf() - t0
            if ok:
                latencies.append(dt)
            if want_timeline:
                timeline.append((round(m0, 6), round(dt, 6), tag))

    flush_logs()  # lines of earlier work are not this round's
    cpu0 = time.process_time()
    t_start = _perf()
    # the round's end from its start, not from before the flush: a flush (or a stall)
    # longer than a smoke round's 0.08 s left a round with no call at all
    end = t_start + duration_s
    worker = slow if detailed else fast
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    # The access log writes in batches (a 0.2 s timer): the round's last lines are written
    # now, in the measured window, not by the timer after its CPU time was read. A client
    # call's line is captured up to two loop turns after its response: let them run.
    for _ in range(3):
        await asyncio.sleep(0)
    flush_logs()
    elapsed = _perf() - t_start
    cpu = time.process_time() - cpu0
    latencies.sort()
    n = len(latencies)  # successful calls
    out: dict[str, Any] = {
        "calls": n + sum(errors.values()),
        "ok": n,
        "errors": dict(errors),
        "elapsed_s": elapsed,
        "qps": n / elapsed if elapsed > 0 else 0.0,
        "p50_us": _percentile(latencies, 0.50) * 1e6,
        "p90_us": _percentile(latencies, 0.90) * 1e6,
        "p99_us": _percentile(latencies, 0.99) * 1e6,
        "max_us": (latencies[-1] if latencies else 0.0) * 1e6,
        "mean_us": (sum(latencies) / n * 1e6) if n else 0.0,
        "cpu_s": cpu,
        "tags": dict(tags),
    }
    if want_timeline:
        out["timeline"] = timeline
    return out


async def _client(args: argparse.Namespace) -> int:
    wire = _Wire()
    await wire.open()
    secrets = stacks.Secrets(Path(args.secrets))
    targets: dict[str, _Target] = {}
    wire.send({"ready": True, "pid": os.getpid()})
    try:
        while True:
            cmd = await wire.recv()
            if cmd is None or cmd.get("op") == "exit":
                return 0
            op = cmd.get("op")
            try:
                if op == "open":
                    targets[cmd["name"]] = await _open(cmd, secrets)
                    wire.send({"ok": True})
                elif op == "load":
                    wire.send(await _load(targets[cmd["name"]], cmd))
                elif op == "wait":
                    t = targets[cmd["name"]]
                    await t.channel.wait_for_endpoints(int(cmd["count"]),
                                                       timeout_s=float(cmd["timeout_s"]))
                    wire.send({"ok": True})
                elif op == "stats":
                    t = targets[cmd["name"]]
                    wire.send({"stats": [dataclasses.asdict(e)
                                         for e in t.channel.stats().endpoints]
                               if t.mesh else []})
                elif op == "rusage":
                    wire.send({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                               "cpu_s": time.process_time()})
                elif op == "close":
                    t = targets.pop(cmd["name"])
                    await t.channel.close()
                    wire.send({"ok": True})
                else:
                    wire.send({"error": f"unknown op {op!r}"})
            except stacks.LayerUnavailable as exc:
                wire.send({"error": str(exc), "unavailable": True})
            except Exception as exc:
                wire.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        for t in targets.values():
            with contextlib.suppress(Exception):
                await t.channel.close(0)


# -- fan-out -------------------------------------------------------------------------------------
async def _fanout(args: argparse.Namespace) -> int:
    from benchmarks.scenarios import fanout

    wire = _Wire()
    result = await fanout.measure(Path(args.workdir), quick=args.quick,
                                  endpoints=args.endpoints)
    wire.send(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process (``python -m benchmarks._worker ROLE ...``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks._worker")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--kind", choices=("raw", "mesh", "hand"), required=True)
    s.add_argument("--layers", default="")
    s.add_argument("--tracing", action=argparse.BooleanOptionalAction, default=True)
    s.add_argument("--service", default="bench")
    s.add_argument("--registry", default="")
    s.add_argument("--instance-id", required=True)
    s.add_argument("--delay-s", type=float, default=0.0)
    s.add_argument("--drain-delay-s", type=float, default=1.0)
    s.add_argument("--secrets", required=True)
    s.add_argument("--hold", action="store_true",
                   help="wait for a go command on stdin before binding and registering")
    c = sub.add_parser("client")
    c.add_argument("--secrets", required=True)
    f = sub.add_parser("fanout")
    f.add_argument("--workdir", required=True)
    f.add_argument("--quick", action="store_true")
    f.add_argument("--endpoints", type=int, default=100)
    args = p.parse_args(argv)
    _logs()
    runner = {"server": _serve, "client": _client, "fanout": _fanout}[args.role]
    try:
        # every worker of a run on one loop: asyncio's, or uvloop's (python -m benchmarks
        # --loop uvloop), through meshkit.run as a service would
        return meshkit.run(runner(args), use_uvloop=os.environ.get(LOOP_ENV) == "uvloop")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
