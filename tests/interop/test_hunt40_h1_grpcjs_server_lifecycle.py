"""A meshkit channel against grpc-js servers' own lifecycle and headers (no fault found).

A grpc-js server that ages its connections out (``grpc.max_connection_age_ms``: GOAWAY,
then a new connection) or closes idle ones (``grpc.max_connection_idle_ms``) costs no
call; one of two grpc-js servers shut down by force (``forceShutdown``: every connection
destroyed mid-call) fails only the calls it was running, ``CANCELLED`` (its RST_STREAM
CANCEL, gRPC's mapping) or ``UNAVAILABLE`` (its GOAWAY), and every call made once it is
gone is answered by the other; a server stream refused before its first message is
retried after the pushback the server sends (``-1``: not retried); the trace context of
the client span reaches the grpc-js server (``traceparent``, with the caller's
``tracestate`` and ``baggage``). Node and @grpc/grpc-js as ``test_grpcjs.py`` needs
them; every node process is killed when its test ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshkit
from meshkit.discovery import Instance, LocalOptions, LocalRegistry
from meshkit.observability import TelemetryOptions
from meshkit.resilience import RetryOptions, RetryPolicy
from tests.interop.test_grpcjs import _HERE, _node
from tests.interop.test_hunt37_b1_grpcjs_features import _js_servers

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def _js_channel(
    tmp_path: Path, ports: list[int], **options: Any
) -> AsyncIterator[meshkit.MeshChannel]:
    """A channel (plaintext, no telemetry unless ``options`` say) to grpc-js servers on
    ``ports``, registered as ``j0``, ``j1``..."""
    registry = LocalRegistry(LocalOptions(path=tmp_path / "reg", poll_interval_s=0.05, ttl_s=15.0))
    try:
        for i, port in enumerate(ports):
            await registry.register(
                Instance(service="js", instance_id=f"j{i}", host="127.0.0.1", port=port)
            )
        opts = meshkit.DialOptions(insecure=True, **{"telemetry": None, **options})
        async with meshkit.dial("js", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(len(ports), timeout_s=10)
            yield ch
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def _js_server_with(server_options: dict[str, Any]) -> AsyncIterator[int]:
    """A grpc-js server (``grpcjs_server.js``) with ``server_options``: its port."""
    node, env = _node()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(_HERE / "grpcjs_server.js"),
        json.dumps(server_options),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("PORT "), line
        yield int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.parametrize("kind", ["unary", "stream"])
async def test_connections_aged_out_by_a_grpcjs_server_cost_no_call(
    tmp_path: Path, kind: str
) -> None:
    """300 calls, one every 10 ms, to a grpc-js server that ends each connection 300 ms
    after it opened (2 s of grace): all answered."""
    age = {"grpc.max_connection_age_ms": 300, "grpc.max_connection_age_grace_ms": 2000}
    async with _js_server_with(age) as port, _js_channel(tmp_path, [port]) as ch:
        unary: Any = ch.unary_unary("/interop.Js/Unary")
        stream: Any = ch.unary_stream("/interop.Js/ServerStream")
        failed: list[Any] = []

        async def call(i: int) -> None:
            await asyncio.sleep(i * 0.01)
            try:
                if kind == "unary":
                    assert await unary(b"x", timeout=10) == b"js|x"
                else:
                    assert [m async for m in stream(b"3", timeout=10)] == [
                        b"js|0",
                        b"js|1",
                        b"js|2",
                    ]
            except grpc.aio.AioRpcError as exc:
                failed.append((i, exc.code(), exc.details()))

        await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(300))), 60)
    assert failed == []


async def test_connections_a_grpcjs_server_closes_idle_cost_no_call(tmp_path: Path) -> None:
    """A call every 400 ms to a grpc-js server that closes connections idle for 200 ms:
    each is answered over a new connection."""
    async with (
        _js_server_with({"grpc.max_connection_idle_ms": 200}) as port,
        _js_channel(tmp_path, [port], retry=None) as ch,
    ):
        unary: Any = ch.unary_unary("/interop.Js/Unary")
        for _ in range(6):
            assert await unary(b"x", timeout=10) == b"js|x"
            await asyncio.sleep(0.4)
        assert [e.failures for e in ch.stats().endpoints] == [0]


async def test_a_grpcjs_server_shut_down_by_force_fails_only_its_calls_in_flight(
    tmp_path: Path,
) -> None:
    """Of two grpc-js servers one is shut down by force while 200 calls go out, one every
    10 ms (half 300 ms long, half quick): only calls started before the shutdown fail,
    ``CANCELLED`` or ``UNAVAILABLE``; every call started 100 ms after it is answered."""
    async with _js_servers(2) as [(p0, proc0), (p1, _proc1)], _js_channel(tmp_path, [p0, p1]) as ch:
        sleep: Any = ch.unary_unary("/interop.Js/Sleep")
        unary: Any = ch.unary_unary("/interop.Js/Unary")
        failed: list[tuple[float, grpc.StatusCode]] = []
        forced: list[float] = []

        async def call(i: int) -> None:
            await asyncio.sleep(i * 0.01)
            started = time.monotonic()
            try:
                await (sleep(b"300", timeout=10) if i % 2 else unary(b"x", timeout=10))
            except grpc.aio.AioRpcError as exc:
                failed.append((started, exc.code()))

        calls = asyncio.gather(*(call(i) for i in range(200)))
        await asyncio.sleep(0.7)
        assert proc0.stdin is not None and proc0.stdout is not None
        proc0.stdin.write(b"FORCE\n")
        await proc0.stdin.drain()
        assert await asyncio.wait_for(proc0.stdout.readline(), 10) == b"STOPPED\n"
        forced.append(time.monotonic())
        await asyncio.wait_for(calls, 30)
    late = [f for f in failed if f[0] > forced[0] + 0.1]
    assert late == [], late
    assert {code for _, code in failed} <= {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
    }, failed


async def test_a_server_stream_waits_a_grpcjs_servers_pushback(tmp_path: Path) -> None:
    """A server stream a grpc-js server refuses before its first message (``UNAVAILABLE``,
    ``RESOURCE_EXHAUSTED``) is opened again after the server's pushback (700 ms, 300 ms),
    at once without one; with ``-1`` it is not (one attempt)."""
    retry = RetryOptions(
        default=RetryPolicy(
            max_attempts=3,
            idempotent=True,
            retryable_codes={grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED},
        )
    )
    async with _js_servers(1) as [(port, _proc)], _js_channel(tmp_path, [port], retry=retry) as ch:
        stream: Any = ch.unary_stream("/interop.Js/FlakyStream")

        async def timed(request: bytes) -> tuple[Any, float]:
            started = time.monotonic()
            try:
                got: Any = [m async for m in stream(request, timeout=10)]
            except grpc.aio.AioRpcError as exc:
                got = (exc.code(), exc.details())
            return got, time.monotonic() - started

        got, took = await timed(b"a:1:14:700")
        assert got == [b"js|2", b"js|end"] and took >= 0.65, (got, took)
        got, took = await timed(b"b:1:8:300")
        assert got == [b"js|2", b"js|end"] and took >= 0.25, (got, took)
        got, _ = await timed(b"c:2:14")
        assert got == [b"js|3", b"js|end"], got
        got, _ = await timed(b"d:1:14:-1")
        assert got == (grpc.StatusCode.UNAVAILABLE, "flaky"), got
        got, _ = await timed(b"d:1:14:-1")  # the second call of key d: one attempt before
        assert got == [b"js|2", b"js|end"], got


async def test_the_client_spans_trace_context_reaches_a_grpcjs_server(tmp_path: Path) -> None:
    """With an SDK tracer provider, the grpc-js server reads ``traceparent`` naming the
    call's CLIENT span (its trace, its span id as parent, sampled), and the caller's
    ``tracestate`` and ``baggage`` as sent."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    telemetry = TelemetryOptions(tracer_provider=provider)
    async with (
        _js_servers(1) as [(port, _proc)],
        _js_channel(tmp_path, [port], telemetry=telemetry) as ch,
    ):
        headers: Any = ch.unary_unary("/interop.Js/Headers")
        # a caller's context as a server handler would have it: its trace goes on
        ctx = extract({"traceparent": parent, "tracestate": "congo=t61rcWkgMzE", "baggage": "k=v"})
        token = otel_context.attach(ctx)
        try:
            seen = json.loads(await headers(b"", timeout=10))
        finally:
            otel_context.detach(token)
    [client] = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.CLIENT]
    span = client.get_span_context()
    assert format(span.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    [sent] = seen["traceparent"]
    version, trace_id, parent_id, flags = sent.split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        "0af7651916cd43dd8448eb211c80319c",
        format(span.span_id, "016x"),
    ), sent
    assert int(flags, 16) & 1, sent
    assert seen.get("tracestate") == ["congo=t61rcWkgMzE"], seen
    assert seen.get("baggage") == ["k=v"], seen
