"""Fixtures for the observability tests: an in-memory tracer, a private Prometheus registry,
and a two-hop chain client -> front -> echo through meshkit.dial."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import (
    TelemetryOptions,
)
from meshkit.resilience import RateLimitOptions
from tests.support.echo import method

FRONT = "meshkit.test.Front"
_log = structlog.get_logger("tests.front")


@dataclass
class Tracing:
    """A tracer provider exporting to memory, and the exporter to read spans from."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[Any]:
        """Every finished span so far."""
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """A private TracerProvider with an in-memory exporter (the global one is untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


@pytest.fixture
def prom() -> CollectorRegistry:
    """A private Prometheus registry for one test."""
    return CollectorRegistry()


@pytest.fixture
def telemetry(tracing: Tracing, prom: CollectorRegistry) -> TelemetryOptions:
    """Telemetry options writing to the test's tracer and registry."""
    return TelemetryOptions(tracer_provider=tracing.provider, registry=prom)


def front_handler(dial_echo: Callable[[], meshkit.MeshChannel]) -> grpc.GenericRpcHandler:
    """Service ``meshkit.test.Front``: ``Relay`` calls echo ``Unary`` with its request and
    answers the result; ``RelayStream`` streams echo ``ServerStream``'s answers back. Both
    log a line while handling (to check trace ids on handler logs), including the incoming
    metadata, as a careless handler might."""

    async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        _log.info("relaying", metadata=list(context.invocation_metadata() or ()))
        ch = dial_echo()
        unary = ch.unary_unary(method("Unary"))
        return await unary(request, timeout=5)  # type: ignore[no-any-return]

    async def relay_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        _log.info("relaying stream")
        ch = dial_echo()
        async for item in ch.unary_stream(method("ServerStream"))(request, timeout=5):
            yield item

    return grpc.method_handlers_generic_handler(
        FRONT,
        {
            "Relay": grpc.unary_unary_rpc_method_handler(relay),
            "RelayStream": grpc.unary_stream_rpc_method_handler(relay_stream),
        },
    )


@dataclass
class Chain:
    """client -> front (MeshServer "front") -> echo (MeshServer "echo"), all instrumented."""

    client: meshkit.MeshChannel
    front: meshkit.MeshServer
    echo: list[meshkit.MeshServer]


ChainFactory = Callable[..., Awaitable[Chain]]


@pytest.fixture
async def chain(
    registry: LocalRegistry, telemetry: TelemetryOptions
) -> AsyncIterator[ChainFactory]:
    """Build the two-hop chain; ``echoes`` echo instances, ``client_opts`` extra DialOptions
    fields for both hops, ``echo_rate_limit`` rate limits on echo."""
    servers: list[meshkit.MeshServer] = []
    channels: list[meshkit.MeshChannel] = []

    async def build(
        echoes: int = 1,
        telemetry_opts: TelemetryOptions | None = None,
        echo_rate_limit: RateLimitOptions | None = None,
        **dial_fields: Any,
    ) -> Chain:
        from tests.support.echo import add_echo

        opts = telemetry_opts or telemetry

        def dial_opts() -> meshkit.DialOptions:
            return meshkit.DialOptions(insecure=True, telemetry=opts, **dial_fields)

        echo_servers = []
        for i in range(echoes):
            srv = meshkit.MeshServer(
                "echo",
                [add_echo(f"e{i + 1}")],
                registry=registry,
                options=meshkit.ServeOptions(
                    insecure=True,
                    instance_id=f"e{i + 1}",
                    drain_delay_s=0.0,
                    grace_s=1.0,
                    telemetry=opts,
                    rate_limit=echo_rate_limit,
                ),
            )
            await srv.start()
            servers.append(srv)
            echo_servers.append(srv)
        to_echo = meshkit.dial("echo", registry=registry, options=dial_opts())
        channels.append(to_echo)
        await to_echo.wait_for_endpoints(echoes)

        def add_front(_servicer: Any, server: Any) -> None:
            server.add_generic_rpc_handlers((front_handler(lambda: to_echo),))

        front = meshkit.MeshServer(
            "front",
            [(add_front, None)],
            registry=registry,
            options=meshkit.ServeOptions(
                insecure=True, instance_id="f1", drain_delay_s=0.0, grace_s=1.0, telemetry=opts
            ),
        )
        await front.start()
        servers.append(front)
        client = meshkit.dial("front", registry=registry, options=dial_opts())
        channels.append(client)
        await client.wait_for_endpoints(1)
        return Chain(client, front, echo_servers)

    yield build
    for ch in channels:
        await ch.close()
    for srv in servers:
        await srv.drain()
