"""In-process A/B measurements of single hot-path levers, interleaved in one process.

``python -m benchmarks.micro`` (about a minute) prints, as medians over alternating rounds
(telemetry's "added" figures: medians of the per-round differences with the bare loop of
the same round):

* ``fusion``: CPU per unary call (client + server in this process, concurrency 16) with
  five no-op :class:`meshkit._handlers.WrappingInterceptor` checks chained as five
  grpc.aio server interceptors vs fused into one by :func:`meshkit._handlers.fuse_interceptors`
  (what ``serve()`` does with its deadline, identity, JWT, authorization and rate-limit
  checks);
* ``accesslog``: CPU per access-log line, JSON, inside a running event loop, through the
  general structlog chain :func:`meshkit.observability.configure_logging` installs
  (redaction, one write per line) vs the lean batched access logger it builds
  (:func:`meshkit.observability.access_logger`). Lines go to ``/dev/null``;
* ``encoder``: the same lean access logger encoding with :func:`json.dumps` vs orjson
  (:func:`meshkit.observability._logging.json_dumps`, ``meshkit[fast]``);
* ``telemetry``: CPU each fused telemetry interceptor adds per unary call, per side
  (client interceptor with an instant continuation, server handler wrap with an instant
  handler), for tracing 100 %, metrics, access log, all three and all three at 1 %
  sampling, minus the bare loop's run of the same round; and ``e2e``: the same variants
  on both sides of a real in-process MeshServer and dial() channel (16 callers), CPU added
  per call over none (per round, as the per-side figures);
* ``ratelimit``: CPU per rate-limit hit (default sliding-window counter, ``memory://``,
  yielding to the event loop after each hit as a server does between calls) on ``limits``'
  own async ``MemoryStorage`` and strategies (``stock``: a coroutine per storage step, its
  expiry sweep started after every hit, walking every key) vs
  :class:`meshkit.resilience.SweepThrottledMemoryStorage` (``throttled``: ``limits``'
  synchronous storage and strategies, one sweep a second on the event loop), with 1 and
  1000 caller keys, and the moving window with 1 key (``limits``' async storage hops to a
  worker thread per key in each sweep).

These isolate one lever each, where the overhead scenario's figures move by more than the
lever from run to run on a noisy host. ``--rounds`` and ``--calls`` scale the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from benchmarks._paired import medians, paired_added

__all__ = ["accesslog", "fusion", "main", "ratelimit", "telemetry", "telemetry_e2e"]

_FIELDS: dict[str, Any] = {
    "side": "server", "service": "userd", "method": "/ecom.user.v1.UserService/GetUser",
    "grpc_type": "unary", "code": "OK", "duration_ms": 0.412, "peer": "127.0.0.1",
    "peer_identity": "spiffe://mesh.local/svc/orderd",
    "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
}


async def _alternate_rounds(rounds: int,
                            variants: dict[str, Callable[[], Awaitable[float]]],
                            ) -> dict[str, list[float]]:
    """Run each variant once per round, alternating the order; every round's result per
    variant, in round order."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else reversed(names)):
            results[name].append(await variants[name]())
    return results


async def _alternate(rounds: int, variants: dict[str, Callable[[], Awaitable[float]]],
                     ) -> dict[str, float]:
    """Run each variant once per round, alternating the order; medians of the results."""
    return medians(await _alternate_rounds(rounds, variants))


async def fusion(rounds: int = 12, calls: int = 6000) -> dict[str, float]:
    """CPU microseconds per unary call, five checks ``chained`` vs ``fused``."""
    import grpc

    from meshkit._handlers import Before, WrappingInterceptor, fuse_interceptors
    from tests.support.echo import handler, method

    class Noop(WrappingInterceptor):
        def _before_for(self, m: str) -> Before | None:
            async def before(context: Any) -> None:
                return None

            return before

    async def once(fused: bool) -> float:
        chain = [Noop() for _ in range(5)]
        server = grpc.aio.server(interceptors=fuse_interceptors(chain) if fused else chain)
        server.add_generic_rpc_handlers((handler("e1"),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            call: Any = channel.unary_unary(method("Unary"))
            for _ in range(min(300, calls)):
                await call(b"x", timeout=5)

            async def worker(k: int) -> None:
                for _ in range(k):
                    await call(b"x", timeout=5)

            per = max(1, calls // 16)
            t0 = time.process_time()
            await asyncio.gather(*(worker(per) for _ in range(16)))
            return (time.process_time() - t0) / (per * 16) * 1e6
        finally:
            await channel.close()
            await server.stop(None)

    async def chained() -> float:
        return await once(False)

    async def fused() -> float:
        return await once(True)

    return await _alternate(rounds, {"chained": chained, "fused": fused})


async def accesslog(sink: TextIO, rounds: int = 10, lines: int = 20000) -> dict[str, float]:
    """CPU microseconds per access-log line, ``general`` chain vs ``lean`` access logger,
    both writing to ``sink`` (``/dev/null`` from :func:`main`), and the lean logger with
    the standard library's encoder (``lean-json``) instead of orjson when it is installed."""
    import structlog

    from meshkit.observability import _logging, access_logger, configure_logging, flush_logs
    from meshkit.observability._logging import _AccessLog

    saved, encoder = _AccessLog.logger, _logging._orjson
    with contextlib.redirect_stderr(sink):
        configure_logging("info", json=True)
        general = structlog.get_logger("benchmarks.micro.general")
        lean = access_logger()

        def timed(logger: Any, fast: Any = encoder) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                flush_logs()  # nothing of another variant's pending in this window
                _logging._orjson = fast
                t0 = time.process_time()
                for _ in range(lines):
                    logger.info("rpc", **_FIELDS)
                flush_logs()  # its own batched lines rendered and written in it
                took = (time.process_time() - t0) / lines * 1e6
                _logging._orjson = encoder
                await asyncio.sleep(0)
                return took

            return run

        try:
            return await _alternate(rounds, {"general": timed(general), "lean": timed(lean),
                                             "lean-json": timed(lean, None)})
        finally:
            _logging._orjson = encoder
            flush_logs()
            structlog.reset_defaults()
            _AccessLog.logger = saved


class _Ctx:
    """The parts of a grpc.aio ServicerContext the telemetry server wrap reads."""

    __slots__ = ("_md",)

    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self._md = md

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50123"

    def code(self) -> Any:
        return None

    def time_remaining(self) -> float | None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}


TELEMETRY_VARIANTS = ("off", "tracing", "metrics", "accesslog", "full", "full-1pct")


async def telemetry(sink: TextIO, rounds: int = 10, calls: int = 6000) -> dict[str, float]:
    """CPU microseconds one telemetry interceptor adds per unary call, per side.

    Each variant (``tracing`` at 100 %, ``metrics``, ``accesslog`` (JSON through
    :func:`configure_logging`, written to ``sink``), ``full`` = all three, ``full-1pct`` =
    all three with 1 % head sampling) calls the fused client interceptor with a
    continuation that answers at once, and the fused server handler wrap with a handler
    that answers at once (metadata carrying a ``traceparent`` as the client sends it),
    yielding to the loop after each call so deferred completions run; ``off`` is the same
    loop without interceptors, subtracted round by round (the median of the per-round
    differences; ``client:off``/``server:off`` are the bare loop's median). Keys
    ``client:<variant>`` and ``server:<variant>``.
    """
    import grpc
    import structlog
    from prometheus_client import CollectorRegistry

    from benchmarks.stacks import NULL_TRANSPORT_QUEUE, flush_spans, tracer_provider
    from meshkit._handlers import wrap_handler
    from meshkit.interceptors import CallKind, ClientCallDetails
    from meshkit.observability import (
        TelemetryClientInterceptor,
        TelemetryOptions,
        TelemetryServerInterceptor,
        configure_logging,
        flush_logs,
    )
    from meshkit.observability._logging import _AccessLog

    method = "/bench.v1.Echo/Unary"
    saved = _AccessLog.logger
    queue = max(NULL_TRANSPORT_QUEUE, 2 * calls)  # no span dropped; flushed in each round
    providers = {r: tracer_provider(r, max_queue_size=queue) for r in (1.0, 0.01)}

    def options(variant: str) -> TelemetryOptions:
        on = {"tracing": variant in ("tracing", "full", "full-1pct"),
              "metrics": variant in ("metrics", "full", "full-1pct"),
              "access_log": variant in ("accesslog", "full", "full-1pct")}
        provider = providers[0.01 if variant == "full-1pct" else 1.0]
        return TelemetryOptions(tracer_provider=provider if on["tracing"] else None,
                                registry=CollectorRegistry(), **on)

    def client_run(variant: str) -> Callable[[], Awaitable[float]]:
        async def proceed(details: Any, request: Any) -> bytes:
            return b""

        async def run() -> float:
            opts = None if variant == "off" else options(variant)
            icpt = None if opts is None else TelemetryClientInterceptor(opts)
            flush_logs()  # another variant's pending access lines are not this window's
            t0 = time.process_time()
            for _ in range(calls):
                d = ClientCallDetails(service="echo", method=method, kind=CallKind.UNARY_UNARY,
                                      timeout_s=None, metadata=None)
                if icpt is None:
                    await proceed(d, b"")
                else:
                    await icpt.intercept_unary(d, b"", proceed)
                await asyncio.sleep(0)
            flush_spans(opts)  # the export of this round's spans counts too
            flush_logs()  # and its access lines (batched: else another window's)
            return (time.process_time() - t0) / calls * 1e6

        return run

    def server_run(variant: str) -> Callable[[], Awaitable[float]]:
        async def behavior(request: Any, context: Any) -> bytes:
            return b""

        ratio = 0.01 if variant == "full-1pct" else 1.0
        contexts = [_Ctx((("traceparent",
                           f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-"
                           f"{'01' if random.random() < ratio else '00'}"),))
                    for _ in range(1000)]

        async def run() -> float:
            plain = grpc.unary_unary_rpc_method_handler(behavior)
            opts = None if variant == "off" else options(variant)
            if opts is None:
                observed = behavior
            else:
                icpt = TelemetryServerInterceptor("echo", opts)
                observed = wrap_handler(plain, None,
                                        icpt._reporter_for(method, plain)).unary_unary

            flush_logs()  # another variant's pending access lines are not this window's
            t0 = time.process_time()
            for i in range(calls):
                await observed(b"", contexts[i % 1000])
                await asyncio.sleep(0)
            flush_spans(opts)
            flush_logs()  # its own access lines (batched: else another window's)
            return (time.process_time() - t0) / calls * 1e6

        return run

    with contextlib.redirect_stderr(sink):
        configure_logging("info", json=True)
        try:
            variants: dict[str, Callable[[], Awaitable[float]]] = {}
            for v in TELEMETRY_VARIANTS:
                variants[f"client:{v}"] = client_run(v)
                variants[f"server:{v}"] = server_run(v)
            got = await _alternate_rounds(rounds, variants)
        finally:
            flush_logs()
            structlog.reset_defaults()
            _AccessLog.logger = saved
    # what a variant adds: the median of its per-round differences with the bare loop of
    # the same round (not the difference of medians taken from different rounds)
    res = medians(got)
    for side in ("client", "server"):
        added = paired_added({v: got[f"{side}:{v}"] for v in TELEMETRY_VARIANTS}, "off")
        for v in TELEMETRY_VARIANTS[1:]:
            res[f"{side}:{v}"] = added[v]
    return res


async def telemetry_e2e(sink: TextIO, rounds: int = 6, calls: int = 3000,
                        ) -> dict[str, float]:
    """CPU microseconds per unary call, client and server in this process (a real
    :class:`meshkit.MeshServer` and :func:`meshkit.dial` channel on loopback, 16 callers),
    for each telemetry variant of :data:`TELEMETRY_VARIANTS` on both sides; ``off`` is
    ``telemetry=None`` on both (its median), the others are given as the added CPU over
    it (the median of the per-round differences with ``off``'s run of the round). The access
    log is JSON through :func:`configure_logging`, written to ``sink``."""
    import tempfile

    import structlog
    from prometheus_client import CollectorRegistry

    import meshkit
    from benchmarks.stacks import tracer_provider
    from meshkit.discovery import LocalOptions, LocalRegistry
    from meshkit.observability import TelemetryOptions, configure_logging, flush_logs
    from meshkit.observability._logging import _AccessLog
    from tests.support.echo import add_echo, method

    saved = _AccessLog.logger
    providers = {1.0: tracer_provider(1.0), 0.01: tracer_provider(0.01)}

    def options(variant: str) -> TelemetryOptions | None:
        if variant == "off":
            return None
        on = {"tracing": variant in ("tracing", "full", "full-1pct"),
              "metrics": variant in ("metrics", "full", "full-1pct"),
              "access_log": variant in ("accesslog", "full", "full-1pct")}
        provider = providers[0.01 if variant == "full-1pct" else 1.0]
        return TelemetryOptions(tracer_provider=provider if on["tracing"] else None,
                                registry=CollectorRegistry(), **on)

    def run_variant(variant: str, path: str) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            opts = options(variant)
            reg = LocalRegistry(LocalOptions(path=path, ttl_s=5.0, poll_interval_s=0.05))
            srv = meshkit.MeshServer(f"e2e-{variant}", [add_echo("e1")], registry=reg,
                                     options=meshkit.ServeOptions(
                                         insecure=True, drain_delay_s=0, grace_s=1.0,
                                         telemetry=opts))
            await srv.start()
            ch = meshkit.dial(f"e2e-{variant}", registry=reg,
                              options=meshkit.DialOptions(insecure=True, telemetry=opts))
            try:
                await ch.wait_for_endpoints(1)
                call: Any = ch.unary_unary(method("Unary"))
                for _ in range(200):
                    await call(b"x", timeout=5)

                async def worker(k: int) -> None:
                    for _ in range(k):
                        await call(b"x", timeout=5)

                per = max(1, calls // 16)
                flush_logs()  # the warm-up's access lines are written before the window
                t0 = time.process_time()
                await asyncio.gather(*(worker(per) for _ in range(16)))
                for _ in range(3):  # a client call's line is captured turns after it
                    await asyncio.sleep(0)
                flush_logs()  # and the measured calls' own in it
                return (time.process_time() - t0) / (per * 16) * 1e6
            finally:
                await ch.close()
                await srv.drain()
                await reg.close()

        return run

    with contextlib.redirect_stderr(sink), tempfile.TemporaryDirectory() as tmp:
        configure_logging("warning", json=True)
        _AccessLog.logger = None
        configure_logging("info", json=True)
        try:
            got = await _alternate_rounds(rounds, {v: run_variant(v, f"{tmp}/registry.db")
                                                   for v in TELEMETRY_VARIANTS})
        finally:
            flush_logs()
            structlog.reset_defaults()
            _AccessLog.logger = saved
    added = paired_added(got, "off")  # median of per-round differences with "off"
    return {v: (added[v] if v != "off" else medians(got)["off"]) for v in TELEMETRY_VARIANTS}


async def ratelimit(rounds: int = 10, hits: int = 4000, keys: int = 1,
                    strategy: str = "sliding-window-counter") -> dict[str, float]:
    """CPU microseconds per hit of ``strategy`` with ``keys`` caller keys, ``stock`` limits
    MemoryStorage vs ``throttled`` (meshkit's sweep-throttled subclass)."""
    from limits import parse
    from limits.aio.storage import MemoryStorage

    from meshkit.resilience.ratelimit import (
        _STRATEGY_CLASSES,
        _SYNC_STRATEGY_CLASSES,
        SweepThrottledMemoryStorage,
    )

    item = parse("1000000/second")

    async def stock() -> float:
        storage = MemoryStorage("async+memory://", wrap_exceptions=True)
        limiter = _STRATEGY_CLASSES[strategy](storage)
        t0 = time.process_time()
        for i in range(hits):
            await limiter.hit(item, "bench", "/Echo/Unary", str(i % keys))
            await asyncio.sleep(0)
        took = (time.process_time() - t0) / hits * 1e6
        if storage.timer is not None:
            storage.timer.cancel()
        return took

    async def throttled() -> float:
        storage = SweepThrottledMemoryStorage("memory://", wrap_exceptions=True)
        limiter = _SYNC_STRATEGY_CLASSES[strategy](storage)
        t0 = time.process_time()
        for i in range(hits):
            limiter.hit(item, "bench", "/Echo/Unary", str(i % keys))
            await asyncio.sleep(0)
        took = (time.process_time() - t0) / hits * 1e6
        storage.close()
        return took

    return await _alternate(rounds, {"stock": stock, "throttled": throttled})


def main(argv: list[str] | None = None, out: io.TextIOBase | None = None) -> int:
    """Run the A/B measurements and print them; returns 0."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="alternating rounds (default 12)")
    ap.add_argument("--calls", type=int, default=6000,
                    help="calls per fusion round (default 6000); log lines are 5x this")
    ap.add_argument("--only-telemetry", action="store_true",
                    help="only the per-side telemetry interceptor measurement")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.calls < 16:
        ap.error(f"--rounds must be >= 1 and --calls >= 16, got {args.rounds!r}, "
                 f"{args.calls!r}")
    stream: Any = out if out is not None else sys.stdout
    with open(os.devnull, "w") as null:
        t = asyncio.run(telemetry(null, args.rounds, args.calls))
    for side in ("client", "server"):
        print(f"telemetry  {side}  " + "  ".join(
            f"{v} {t[f'{side}:{v}']:6.1f}" for v in TELEMETRY_VARIANTS[1:])
            + f"  us/call added (bare loop {t[f'{side}:off']:.1f})", file=stream)
    with open(os.devnull, "w") as null:
        e = asyncio.run(telemetry_e2e(null, max(1, args.rounds // 2), args.calls))
    print("telemetry  e2e     " + "  ".join(f"{v} {e[v]:6.1f}" for v in TELEMETRY_VARIANTS[1:])
          + f"  us/call added, both sides (no telemetry {e['off']:.1f})", file=stream)
    if args.only_telemetry:
        return 0
    f = asyncio.run(fusion(args.rounds, args.calls))
    print(f"fusion     chained {f['chained']:7.1f} us/call   fused {f['fused']:7.1f} us/call"
          f"   saved {f['chained'] - f['fused']:6.1f} us", file=stream)
    with open(os.devnull, "w") as null:
        a = asyncio.run(accesslog(null, args.rounds, args.calls * 5))
    print(f"accesslog  general {a['general']:7.1f} us/line   lean  {a['lean']:7.1f} us/line"
          f"   saved {a['general'] - a['lean']:6.1f} us", file=stream)
    print(f"encoder    json    {a['lean-json']:7.1f} us/line   orjson {a['lean']:7.1f} us/line"
          f"   saved {a['lean-json'] - a['lean']:6.1f} us", file=stream)
    for strategy, keys in (("sliding-window-counter", 1), ("sliding-window-counter", 1000),
                           ("moving-window", 1)):
        r = asyncio.run(ratelimit(args.rounds, max(16, args.calls // 2), keys, strategy))
        label = f"{keys:>4} key{'s' if keys > 1 else ' '}" + (
            " moving" if strategy == "moving-window" else "")
        print(f"ratelimit  {label} stock {r['stock']:7.1f} us/hit   throttled "
              f"{r['throttled']:7.1f} us/hit   saved {r['stock'] - r['throttled']:6.1f} us",
              file=stream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
