"""A served bidi stack for the held-end tests: a stream whose ``write()`` meets the
server's early end (grpc.aio then reports its own ``INTERNAL`` until the responses are
read, and meshkit holds the stream's end). Shared by the fortieth session's coverage
tests and the forty-first's held-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry

import meshkit
from meshkit.discovery import LocalRegistry
from meshkit.observability import TelemetryOptions


async def answer_once(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """A bidi handler answering the first request once and returning ``OK`` while the
    caller still writes."""
    async for _ in requests:
        yield b"one"
        return


async def write_all(call: Any) -> bool:
    """Write 50 messages of 1 KiB and half-close; whether a write met the call's end."""
    try:
        for _ in range(50):
            await call.write(b"x" * 1024)
        await call.done_writing()
    except asyncio.InvalidStateError:
        return True
    return False


class ServedStack:
    """A :class:`meshkit.MeshServer` named ``service`` (handlers added by ``add``, one
    instance ``instance_id``, no drain delay, 1 s grace) and a channel dialed to it
    without retries, its client telemetry counted in ``self.client`` (no tracing, no
    access log); ``async with`` starts both, waits for the endpoint and gives the
    channel, and closes the channel and drains the server at its end."""

    def __init__(
        self,
        registry: LocalRegistry,
        service: str,
        add: Callable[[Any, Any], None],
        instance_id: str,
    ) -> None:
        self.client = CollectorRegistry()
        self.service = service
        self.srv = meshkit.MeshServer(
            service,
            [(add, None)],
            registry=registry,
            options=meshkit.ServeOptions(
                insecure=True, instance_id=instance_id, drain_delay_s=0.0, grace_s=1.0
            ),
        )
        self.opts = meshkit.DialOptions(
            insecure=True,
            retry=None,
            telemetry=TelemetryOptions(registry=self.client, tracing=False, access_log=False),
        )
        self.registry = registry

    async def __aenter__(self) -> meshkit.MeshChannel:
        await self.srv.start()
        self.ch = meshkit.dial(self.service, registry=self.registry, options=self.opts)
        await self.ch.wait_for_endpoints(1, timeout_s=10)
        return self.ch

    async def __aexit__(self, *exc: object) -> None:
        await self.ch.close()
        await self.srv.drain()

    def handled_count(self, app: str, method: str, code: str) -> float:
        """``grpc_client_handled_total`` of bidi ``/app/method`` with ``code`` (0 when
        none was counted)."""
        return (
            self.client.get_sample_value(
                "grpc_client_handled_total",
                {
                    "grpc_service": app,
                    "grpc_method": method,
                    "grpc_type": "bidi_stream",
                    "grpc_code": code,
                },
            )
            or 0.0
        )
