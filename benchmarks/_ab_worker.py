"""One process of ``python -m benchmarks.ab``: a meshkit server, a meshkit client, or a
plain grpc.aio client, importing ``meshkit`` and ``tests.support.echo`` from the code tree
the driver puts first on ``PYTHONPATH`` (this file is run by path, so it works with a tree
that predates it).

``server TELEMETRY REGISTRY_DIR``: a :class:`meshkit.MeshServer` of the echo service,
plaintext, registered in a local registry; prints ``ready PORT LOOP``, serves until stdin
closes. ``client TELEMETRY REGISTRY_DIR`` (a :func:`meshkit.dial` channel) and ``raw
ADDRESS`` (a plain grpc.aio channel): print ``ready LOOP`` after a warm-up
(``MESHKIT_AB_WARMUP_CALLS`` calls, 300 by default), then for each
stdin line ``CALLS CALLERS`` run ``CALLS`` unary calls from ``CALLERS`` concurrent callers
and print ``p50_us mean_us qps``.
``TELEMETRY`` is ``defaults`` (as shipped: metrics, the JSON access log, spans without an
SDK) or ``traced`` (every call sampled into an SDK batch processor that drops spans).
Access lines go to ``/dev/null``. Every process runs on asyncio's event loop, or on
uvloop's when ``MESHKIT_BENCH_LOOP`` is ``uvloop`` (``python -m benchmarks.ab --loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from typing import Any


def _telemetry(kind: str) -> Any:
    from prometheus_client import CollectorRegistry

    from meshkit.observability import TelemetryOptions

    if kind == "defaults":
        return TelemetryOptions(registry=CollectorRegistry())
    if kind == "traced":  # the tree's own benchmarks.stacks (every tree since 2026-12-03)
        from benchmarks.stacks import tracer_provider

        return TelemetryOptions(registry=CollectorRegistry(), tracer_provider=tracer_provider())
    raise SystemExit(f"unknown telemetry {kind!r}: defaults or traced")


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _serve(kind: str, registry_dir: str) -> None:
    import meshkit
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import add_echo

    registry = LocalRegistry(LocalOptions(path=registry_dir, ttl_s=3600.0,
                                          poll_interval_s=600.0))
    server = meshkit.MeshServer("ab", [add_echo("e1")], registry=registry,
                                options=meshkit.ServeOptions(
                                    insecure=True, telemetry=_telemetry(kind),
                                    drain_delay_s=0, grace_s=1.0))
    await server.start()
    print(f"ready {server.port} {_loop_name()}", flush=True, file=sys.__stdout__)
    while await _line():
        pass
    await server.drain()
    await registry.close()


async def _drive(call: Any) -> None:
    for _ in range(int(os.environ.get("MESHKIT_AB_WARMUP_CALLS", "300"))):
        await call(b"x", timeout=5)
    print(f"ready {_loop_name()}", flush=True, file=sys.__stdout__)
    async def caller(n: int, lat: list[float]) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            await call(b"x", timeout=5)
            lat.append(time.perf_counter() - t0)

    while line := (await _line()).split():
        calls, callers = int(line[0]), int(line[1])
        lat: list[float] = []
        t0 = time.perf_counter()
        # every call asked for: the ones left over go to the first callers
        await asyncio.gather(*(caller(calls // callers + (i < calls % callers), lat)
                               for i in range(callers)))
        wall = time.perf_counter() - t0
        print(f"{statistics.median(lat) * 1e6:.1f} {statistics.fmean(lat) * 1e6:.1f} "
              f"{len(lat) / wall:.1f}", flush=True, file=sys.__stdout__)


async def _client(kind: str, registry_dir: str) -> None:
    import meshkit
    from meshkit.discovery import LocalOptions, LocalRegistry
    from tests.support.echo import method

    registry = LocalRegistry(LocalOptions(path=registry_dir, ttl_s=3600.0,
                                          poll_interval_s=600.0))
    channel = meshkit.dial("ab", registry=registry, options=meshkit.DialOptions(
        insecure=True, telemetry=_telemetry(kind)))
    await channel.wait_for_endpoints(1, timeout_s=30)
    await _drive(channel.unary_unary(method("Unary")))
    await channel.close()
    await registry.close()


async def _raw(address: str) -> None:
    import grpc

    channel = grpc.aio.insecure_channel(address)
    await _drive(channel.unary_unary("/meshkit.test.Echo/Unary"))
    await channel.close()


def _loop_name() -> str:
    """The running loop's top-level module: ``asyncio`` or ``uvloop``."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def _run(main: Any) -> None:
    """``asyncio.run(main)``, on uvloop's loop when ``MESHKIT_BENCH_LOOP`` says so (by
    uvloop's own factory: a tree older than ``meshkit.run`` works too)."""
    if os.environ.get("MESHKIT_BENCH_LOOP") == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def main(argv: list[str]) -> None:
    """Run the role ``argv[0]`` (see the module docstring)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        if argv[0] in ("server", "client"):
            from meshkit.observability import configure_logging

            configure_logging("info", json=True)
            _run(_serve(argv[1], argv[2]) if argv[0] == "server"
                 else _client(argv[1], argv[2]))
        else:
            _run(_raw(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
