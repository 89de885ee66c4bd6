"""CPU and bytecodes per *message* of streaming calls: raw grpc.aio against the mesh.

The other benchmarks measure unary calls. A stream pays the mesh's per-call work once
(the pick, the attempt, telemetry's start and finish, the access line) and the per-message
work on every message: the request iterator's check (``RequestSerializationError``,
``RequestIteratorError``), the response messages' deserializer guard, the server
reporter's message counts, the request gate's and the retrying stream's layers. Here one
stream carries ``--messages`` messages, so what is left per message is the per-message
work.

``python -m benchmarks.streams`` runs, for each kind, ``--rounds`` alternating rounds of
one child process per variant, each holding a server and a client on loopback (plaintext,
the echo service of :mod:`tests.support.echo`). A child warms up, then runs ``--streams``
streams of ``--messages`` messages each and reports ``getrusage`` user + system time per
message; the table gives the median over rounds of each child's median, and the median of
the per-round ratios to the first variant. With ``--bytecodes`` the first round's children
also count the Python bytecodes per message of one more stream (``sys.settrace`` opcode
events, as :mod:`benchmarks.opcodes`; C code not counted): independent of the machine's
load and repeating within a few percent (bidi counts spread by about 20 per round trip),
where the CPU figures move with the VM by more than the mesh's share. ``--top N`` (with
``--bytecodes``) then lists, per kind and variant, the ``N`` functions whose bytecodes per
message differ most from the first variant's (``file:line name``, as
:mod:`benchmarks.opcodes`): where the mesh's per-message work is.

Kinds (``--kinds``): ``server`` (``ServerStream``: one request, ``n`` responses),
``client`` (``ClientStream``: ``n`` requests from an async generator, one response),
``bidi`` (``Bidi``: ``write()`` then ``read()``, ``n`` times: each message makes a round
trip, so each costs both sides a wake-up); and, asked for by name, ``writes``
(``ClientStream`` made without a request iterator: ``n`` ``write()`` calls, then
``done_writing()``: the call object's own request stream hands each message to grpc.aio).

Variants (``--variants``): ``raw`` (grpc.aio server and channel), ``bare``
(``serve()``/``dial()`` with every policy off, as :mod:`benchmarks.instructions`),
``defaults`` (``dial()``/``serve()`` as shipped: P2C, retries armed, ejection, deadline
admission, the request gate, RED metrics and the JSON access log; tracing off),
``traced`` (``defaults`` with every call traced into an SDK provider that drops the spans).
CPU time moves with the VM; compare within one run only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "VARIANTS", "main", "measure"]

KINDS = ("server", "client", "bidi", "writes")
_DEFAULT_KINDS = "server,client,bidi"
VARIANTS = ("raw", "bare", "defaults", "traced")


async def _stream(channel: Any, kind: str, n: int) -> None:
    """One stream of ``kind`` carrying ``n`` messages."""
    from tests.support.echo import method

    if kind == "server":
        got = 0
        async for _ in channel.unary_stream(method("ServerStream"))(str(n).encode(),
                                                                      timeout=60):
            got += 1
        if got != n:
            raise RuntimeError(f"server stream: {got} of {n} messages")
    elif kind == "client":
        async def requests() -> AsyncIterator[bytes]:
            for _ in range(n):
                yield b"x"

        answer = await channel.stream_unary(method("ClientStream"))(requests(), timeout=60)
        if answer.count(b",") != n - 1:
            raise RuntimeError("client stream: messages lost")
    elif kind == "writes":
        upload = channel.stream_unary(method("ClientStream"))(timeout=60)
        for _ in range(n):
            await upload.write(b"x")
        await upload.done_writing()
        if (await upload).count(b",") != n - 1:
            raise RuntimeError("writes: messages lost")
    else:
        call = channel.stream_stream(method("Bidi"))(timeout=60)
        for _ in range(n):
            await call.write(b"x")
            if not await call.read():
                raise RuntimeError("bidi: no answer")
        await call.done_writing()
        await call.code()


async def _measure(channel: Any, kind: str, n: int, streams: int,
                   bytecodes: bool) -> dict[str, Any]:
    await _stream(channel, kind, 200)  # warm-up: the connection, caches, first-call set-up
    per_message: list[float] = []
    for _ in range(streams):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        await _stream(channel, kind, n)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        per_message.append((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
                           / n * 1e6)
    out: dict[str, Any] = {"cpu_us": per_message}
    if bytecodes:
        from benchmarks.opcodes import _counting, _where

        ops: collections.Counter[Any] = collections.Counter()
        entered: collections.Counter[Any] = collections.Counter()
        with _counting(ops, entered):
            await _stream(channel, kind, n)
        by_fn: dict[str, float] = {}
        for code, count in ops.items():
            where = _where(code)
            by_fn[where] = by_fn.get(where, 0.0) + count / n
        out["bytecodes"] = by_fn
    return out


async def _run(variant: str, kind: str, n: int, streams: int, bytecodes: bool,
               tmp: str) -> dict[str, Any]:
    from benchmarks.instructions import mesh_options
    from tests.support.echo import add_echo, raw_echo

    if variant == "raw":
        async with raw_echo() as channel:
            return await _measure(channel, kind, n, streams, bytecodes)

    import meshkit
    from meshkit.discovery import LocalOptions, LocalRegistry

    serve, dial = mesh_options(variant)
    registry = LocalRegistry(LocalOptions(path=Path(tmp), ttl_s=3600.0,
                                          poll_interval_s=600.0))
    mesh_server = meshkit.MeshServer("echo", [add_echo("e1")], registry=registry,
                                     options=meshkit.ServeOptions(**serve))
    await mesh_server.start()
    mesh_channel = meshkit.dial("echo", registry=registry, options=meshkit.DialOptions(**dial))
    try:
        await mesh_channel.wait_for_endpoints(1, timeout_s=60)
        return await _measure(mesh_channel, kind, n, streams, bytecodes)
    finally:
        await mesh_channel.close()
        await mesh_server.drain()
        await registry.close()


def _child(variant: str, kind: str, n: int, streams: int, bytecodes: bool, out: str) -> None:
    import meshkit
    from meshkit.observability import configure_logging, flush_logs

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), \
            tempfile.TemporaryDirectory() as tmp:
        configure_logging("info", json=True)
        got = meshkit.run(_run(variant, kind, n, streams, bytecodes, tmp), use_uvloop=False)
        flush_logs()
    with open(out, "w") as f:
        json.dump(got, f)


def measure(variant: str, kind: str, messages: int, streams: int,
            bytecodes: bool = False) -> dict[str, Any]:
    """One child process's figures for ``variant`` and ``kind``, ``streams`` streams of
    ``messages`` messages: ``cpu_us`` (user + system microseconds per message, one per
    stream) and, with ``bytecodes``, ``bytecodes``
    (``{function: bytecodes per message}``).

    Raises:
        RuntimeError: the child failed (its stderr's tail quoted).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.streams", "--child", variant, kind,
             str(messages), str(streams), "1" if bytecodes else "0", out],
            capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{variant}/{kind}: {proc.stderr[-2000:]}")
        with open(out) as f:
            got: dict[str, Any] = json.load(f)
    return got


def main(argv: list[str] | None = None) -> int:
    """Measure and print a markdown table per kind; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streams",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=_DEFAULT_KINDS,
                        help=f"comma-separated, from {', '.join(KINDS)} (default "
                             f"{_DEFAULT_KINDS})")
    parser.add_argument("--variants", default="raw,bare,defaults",
                        help=f"comma-separated, from {', '.join(VARIANTS)}; the first is "
                             "the base of the ratios (default raw,bare,defaults)")
    parser.add_argument("--messages", type=int, default=3000, help="messages per stream")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds, one process per variant each (default 3)")
    parser.add_argument("--streams", type=int, default=3,
                        help="measured streams per process (default 3)")
    parser.add_argument("--bytecodes", action="store_true",
                        help="also count Python bytecodes per message (one more stream)")
    parser.add_argument("--top", type=int, default=0,
                        help="with --bytecodes: list per kind and variant the N functions "
                             "whose bytecodes per message differ most from the first "
                             "variant's (default 0: none)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        v, k, n, r, b, out = args.child
        _child(v, k, int(n), int(r), b == "1", out)
        return 0
    # each once, in the order given (a twice-named variant was measured twice a round
    # and its rounds no longer paired with the base's)
    kinds = list(dict.fromkeys(k for k in args.kinds.split(",") if k))
    variants = list(dict.fromkeys(v for v in args.variants.split(",") if v))
    bad = [x for x in kinds if x not in KINDS] + [x for x in variants if x not in VARIANTS]
    if bad or not kinds or not variants:
        parser.error(f"unknown or missing kinds/variants {bad!r}; kinds: {', '.join(KINDS)}; "
                     f"variants: {', '.join(VARIANTS)}")
    if min(args.messages, args.rounds, args.streams) < 1:
        parser.error(f"need --messages, --rounds and --streams >= 1, got {args.messages}, "
                     f"{args.rounds}, {args.streams}")
    if args.top < 0 or (args.top and not args.bytecodes):
        parser.error(f"--top needs --bytecodes and a count >= 0, got --top {args.top}")
    print(f"Per message of one stream ({args.messages} messages a stream; CPU: medians over "
          f"{args.rounds} alternating rounds, a process per variant each round, of the "
          f"median of its {args.streams} streams; client and server in one process, asyncio "
          "event loop)")
    for kind in kinds:
        print(f"\n{kind} streams\n")
        print("| variant | CPU us per message | x " + variants[0]
              + (" | bytecodes per message | +" + variants[0] if args.bytecodes else "")
              + " |\n|---|---:|---:" + ("|---:|---:" if args.bytecodes else "") + "|")
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        ops: dict[str, float] = {}
        by_fn: dict[str, dict[str, float]] = {}
        for r in range(args.rounds):
            for v in (variants if r % 2 == 0 else list(reversed(variants))):
                got = measure(v, kind, args.messages, args.streams,
                              args.bytecodes and r == 0)
                cpu[v].append(statistics.median(got["cpu_us"]))
                if "bytecodes" in got:
                    by_fn[v] = got["bytecodes"]
                    ops[v] = sum(by_fn[v].values())
        base = variants[0]
        for v in variants:
            ratio = statistics.median(x / b for x, b in zip(cpu[v], cpu[base], strict=True))
            row = f"| {v} | {statistics.median(cpu[v]):.1f} | {ratio:.2f}"
            if args.bytecodes:
                row += f" | {ops[v]:,.0f} | {ops[v] - ops[base]:+,.0f}"
            print(row + " |", flush=True)
        for v in variants[1:] if args.top else ():
            _print_top(kind, base, by_fn[base], v, by_fn[v], args.top)
    return 0


def _print_top(kind: str, base_name: str, base: dict[str, float], name: str,
               got: dict[str, float], top: int) -> None:
    """The ``top`` functions whose bytecodes per message differ most between ``base`` and
    ``got`` (``{function: bytecodes per message}``), largest first, as a markdown table."""
    rows = sorted(((got.get(k, 0.0) - base.get(k, 0.0), k) for k in set(got) | set(base)),
                  key=lambda r: (-abs(r[0]), r[1]))
    print(f"\n{kind} streams, {name} against {base_name}: the {top} largest differences "
          f"in bytecodes per message\n")
    print(f"| function | {base_name} | {name} | difference |\n|---|---:|---:|---:|")
    for diff, k in rows[:top]:
        print(f"| `{k}` | {base.get(k, 0.0):.1f} | {got.get(k, 0.0):.1f} | {diff:+.1f} |",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
