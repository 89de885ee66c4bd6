"""Quick timing of the telemetry interceptors (not a test; the benchmark suite is elsewhere).

Runs N sequential unary echo calls client -> server through ``meshkit.dial`` on loopback
for each configuration and prints microseconds per call (median of ``--rounds``
rounds, interleaved across configurations)::

    .venv/bin/python -m tests.observability.timing --calls 2000

Spans go to an SDK TracerProvider with a BatchSpanProcessor and a dropping exporter, so
span creation and processing are paid; access logs, where on, are rendered as JSON into
an in-memory sink.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalOptions, LocalRegistry
from meshkit.observability import (
    TelemetryOptions,
    attempt_interceptors,
    client_interceptors,
    server_interceptors,
)
from tests.support.echo import add_echo, method


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def _open(
    name: str,
    reg: LocalRegistry,
    server_icpts: tuple[grpc.aio.ServerInterceptor, ...],
    client_icpts: tuple[Any, ...],
    attempt_icpts: tuple[Any, ...],
) -> tuple[meshkit.MeshServer, Any]:
    srv = meshkit.MeshServer(
        f"t-{name}",
        [add_echo("e1")],
        registry=reg,
        options=meshkit.ServeOptions(
            insecure=True,
            drain_delay_s=0.0,
            grace_s=1.0,
            reflection=False,
            telemetry=None,
            interceptors=server_icpts,
        ),
    )
    await srv.start()
    ch = meshkit.dial(
        f"t-{name}",
        registry=reg,
        options=meshkit.DialOptions(
            insecure=True, telemetry=None, interceptors=client_icpts,
            attempt_interceptors=attempt_icpts
        ),
    )
    await ch.wait_for_endpoints(1)
    return srv, ch


async def _time(ch: Any, calls: int) -> float:
    unary = ch.unary_unary(method("Unary"))
    t0 = time.perf_counter()
    for _ in range(calls):
        await unary(b"x")
    return (time.perf_counter() - t0) / calls * 1e6


async def main(calls: int, rounds: int) -> None:
    """Time every configuration and print a table."""
    sink = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sink),
        cache_logger_on_first_use=True,
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop()))
    with tempfile.TemporaryDirectory() as tmp:
        reg = LocalRegistry(LocalOptions(path=Path(tmp), ttl_s=10.0, poll_interval_s=1.0))
        configs: dict[str, TelemetryOptions | None] = {
            "none": None,
            "lean tracing": TelemetryOptions(
                tracer_provider=provider,
                metrics=False,
                access_log=False,
                registry=CollectorRegistry(),
            ),
            "otel-instrumentation tracing": TelemetryOptions(
                tracer_provider=provider, metrics=False, access_log=False
            ),
            "lean metrics": TelemetryOptions(
                tracing=False, access_log=False, registry=CollectorRegistry()
            ),
            "lean tracing+metrics": TelemetryOptions(
                tracer_provider=provider, access_log=False, registry=CollectorRegistry()
            ),
            "lean tracing+metrics+access log": TelemetryOptions(
                tracer_provider=provider, registry=CollectorRegistry()
            ),
        }
        opened = {}
        samples: dict[str, list[float]] = {name: [] for name in configs}
        try:
            for i, (name, opts) in enumerate(configs.items()):
                if opts is None:
                    icpts: tuple[tuple[Any, ...], ...] = ((), (), ())
                elif name.startswith("otel"):
                    icpts = (
                        (*server_interceptors("t", opts, implementation="otel"),),
                        (),
                        attempt_interceptors(opts, implementation="otel"),
                    )
                else:
                    icpts = (
                        server_interceptors("t", opts),
                        client_interceptors(opts),
                        attempt_interceptors(opts),
                    )
                opened[name] = await _open(str(i), reg, *icpts)
                await _time(opened[name][1], 200)  # warm up
            for _ in range(rounds):  # interleaved, so drift hits every configuration
                for name, (_srv, ch) in opened.items():
                    samples[name].append(await _time(ch, calls))
        finally:
            for srv, ch in opened.values():
                await ch.close()
                await srv.drain()
            await reg.close()
            provider.shutdown()
    results = {name: statistics.median(v) for name, v in samples.items()}
    base = results["none"]
    print(
        f"{calls} sequential unary calls over meshkit.dial, median of {rounds} interleaved rounds"
    )
    for name, us in results.items():
        print(
            f"{name:34s} {us:8.1f} µs/call  +{us - base:6.1f} µs  "
            f"{base / us * 100:5.1f} % of baseline throughput"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    asyncio.run(main(a.calls, a.rounds))
