"""Events benchmark: outbox -> JetStream -> projection, with and without the mesh's
tracing/metrics/access log/identity, on the machine's NATS (``MESHKIT_NATS_URL``).

``python -m benchmarks.events [--events 2000]``: places N orders in an SQLite store
(each with its outbox event), then runs one relay and one projection consumer in this
process until every event is applied (events/s), then places orders one by one at
200/s and measures the end-to-end lag (order commit -> applied to the summary) p50/p99.
Each run uses its own stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from examples.ecom.events import Projection
from examples.ecom.storage import ItemRecord, NewOrder, open_store
from meshkit.auth import create_ca, issue_workload
from meshkit.messaging import (
    Consumer,
    ConsumerOptions,
    Delivery,
    MessageSigner,
    MessageVerifier,
    OutboxEvent,
    OutboxRelay,
    Publisher,
    PublishOptions,
    ensure_stream,
)

STALL_S = 60.0
"""How long a phase may take beyond its pace (``n / 50`` seconds for a backlog of ``n``,
the paced orders' own duration) before the run gives up (:class:`TimeoutError`)."""


async def _applied(done: asyncio.Event, tasks: list[asyncio.Task[None]], timeout_s: float,
                   what: Callable[[], str]) -> None:
    """Wait until ``done`` is set, at most ``timeout_s`` seconds.

    Raises:
        RuntimeError: the relay or the consumer (``tasks``) ended first.
        TimeoutError: not within ``timeout_s`` (``what()`` says how far it got).
    """
    waiter = asyncio.ensure_future(done.wait())
    try:
        finished, _ = await asyncio.wait([waiter, *tasks], timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if waiter in finished:
        return
    for t in tasks:
        if t in finished:
            exc = None if t.cancelled() else t.exception()
            raise RuntimeError(f"{t.get_name()} ended with {what()}: {exc!r}")
    raise TimeoutError(f"not within {timeout_s:.0f} s: {what()}")


class _Drop(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:  # type: ignore[override]
        return SpanExportResult.SUCCESS


async def run_once(n: int, mesh: bool, url: str, paced: int = 400,
                   rate_per_s: float = 200.0) -> dict[str, float]:
    """One run: ``n`` backlogged events for throughput, then ``paced`` orders placed at
    ``rate_per_s`` for the lag (commit -> applied); ``mesh``: tracing (SDK, every span
    sampled, exported to nowhere), metrics, access log (unconfigured logging: skipped),
    signing and checking the workload identity."""
    from cryptography.hazmat.primitives import serialization
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"BENCH{tag}", f"bench{tag}.orders.placed"
    with tempfile.TemporaryDirectory() as d:
        store = await open_store(f"sqlite:///{Path(d) / 'b.db'}")
        for i in range(n):
            await store.place_order(NewOrder(
                user_id=f"u{i % 50}", items=(ItemRecord("s", 1, 100),), currency="EUR",
                total_minor=100, idempotency_key=None, fingerprint="f"))
        nc = await nats.connect(url)
        js = nc.jetstream()
        await ensure_stream(js, stream, [f"bench{tag}.>"])
        provider = None
        signer = verifier = None
        if mesh:
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(_Drop()))
            ca_key, ca = create_ca(trust_domain="bench.local")
            key, cert = issue_workload(ca_key, ca, "orderd")
            signer = MessageSigner(cert, key)
            verifier = MessageVerifier(ca.public_bytes(serialization.Encoding.PEM))
        reg = CollectorRegistry()
        pub = Publisher(js, PublishOptions(stream=stream, signer=signer, tracing=mesh,
                                           metrics=mesh, access_log=mesh, registry=reg,
                                           tracer_provider=provider))

        class ToBench:
            async def pending_events(self, limit: int) -> list[OutboxEvent]:
                return [OutboxEvent(e.event_id, subject, e.payload, e.headers)
                        for e in await store.pending_events(limit)]

            async def mark_sent(self, ids: list[str]) -> None:
                await store.mark_sent(ids)

        relay = OutboxRelay(ToBench(), pub)  # type: ignore[arg-type]
        projection = Projection(store)
        lags: list[float] = []

        async def handle(dv: Delivery) -> None:
            await projection(dv)
            lags.append(time.time() - json.loads(dv.data)["created_at_ms"] / 1000)

        consumer = Consumer(js, handle, ConsumerOptions(
            stream=stream, durable="bench", batch_size=256, fetch_timeout_s=0.2,
            verifier=verifier, tracing=mesh, metrics=mesh, access_log=mesh, registry=reg,
            tracer_provider=provider))
        done = asyncio.Event()
        target = n

        async def handle_and_count(dv: Delivery) -> None:
            await handle(dv)
            if projection.applied >= target:
                done.set()

        consumer._handler = handle_and_count
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(relay.run(), name="the outbox relay"),
                 asyncio.create_task(consumer.run(), name="the consumer")]
        try:
            # phase 1: a backlog of n events, for throughput
            await _applied(done, tasks, STALL_S + n / 50,
                           lambda: f"{projection.applied} of {n} events applied")
            elapsed = time.perf_counter() - t0
            lags.clear()  # phase 2: orders placed at a steady rate, for the lag
            done.clear()
            target = n + paced
            for i in range(paced):
                await store.place_order(NewOrder(
                    user_id=f"u{i % 50}", items=(ItemRecord("s", 1, 100),), currency="EUR",
                    total_minor=100, idempotency_key=None, fingerprint="f"))
                relay.notify()
                await asyncio.sleep(1 / rate_per_s)
            await _applied(done, tasks, STALL_S,
                           lambda: f"{projection.applied - n} of {paced} paced events applied")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await js.delete_stream(stream)
            await nc.close()
            await store.close()
            if provider is not None:
                provider.shutdown()
    q = statistics.quantiles(lags, n=100)
    return {"events_per_s": n / elapsed, "lag_p50_ms": q[49] * 1000, "lag_p99_ms": q[98] * 1000}


def main(argv: list[str] | None = None) -> None:
    """Run both variants (alternating, ``--rounds`` times) and print a table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.events")
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.events < 1 or args.rounds < 1:  # a backlog of no event is never applied
        p.error(f"need --events >= 1 and --rounds >= 1, got --events {args.events}, "
                f"--rounds {args.rounds}")
    url = os.environ.get("MESHKIT_NATS_URL", "nats://127.0.0.1:4222")
    print("variant           events/s   lag p50 ms   lag p99 ms")
    for r in range(args.rounds):
        for mesh in ((False, True) if r % 2 == 0 else (True, False)):  # drift on both
            r = asyncio.run(run_once(args.events, mesh, url))
            name = "mesh (trace+metrics+log+sig)" if mesh else "bare"
            print(f"{name:<30} {r['events_per_s']:8.0f} {r['lag_p50_ms']:10.1f}"
                  f" {r['lag_p99_ms']:10.1f}")


if __name__ == "__main__":
    main()
