"""A response stream its caller dropped before reading it to its end (opened, a message or
none read, then no reference kept) was never collected: grpc.aio's task waiting for the
call's status holds its core call, whose done callbacks (the channel's and telemetry's)
hold the attempt, and the balancer's first-response table held it too; and the status
never comes while the responses are unread. So each such stream kept a task, its call
objects and its endpoint's count until the channel closed, and telemetry counted it in
flight for ever (measured: 30 dropped server streams, tasks 6 -> 36, grpc_client_in_flight
30). grpc.aio cancels a call of its own collected before its end ("Cancelled upon garbage
collection!"); the mesh call object now does the same for its attempt when it is
collected: counted ``CANCELLED``, no endpoint outcome, nothing left."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import meshkit
from meshkit._calls import StreamStreamCall, UnaryStreamCall
from meshkit.discovery import Instance, LocalRegistry
from meshkit.observability import TelemetryOptions
from tests.support.echo import raw_server
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

APP = "meshkit.test.Dropped"
_STREAMS = 30


async def _three(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield b"m"


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        APP,
        {
            "Three": grpc.unary_stream_rpc_method_handler(_three),
            "Echo": grpc.stream_stream_rpc_method_handler(_echo),
        },
    )


def _count(prom: CollectorRegistry, name: str, method: str, kind: str, **extra: str) -> float:
    labels = {"grpc_service": APP, "grpc_method": method, "grpc_type": kind, **extra}
    return prom.get_sample_value(name, labels) or 0.0


def _mesh_calls() -> int:
    return sum(1 for o in gc.get_objects() if type(o) in (UnaryStreamCall, StreamStreamCall))


@pytest.mark.parametrize("kind", ["server_stream", "bidi_stream"])
async def test_a_stream_dropped_unread_ends_when_collected(
    registry: LocalRegistry, kind: str
) -> None:
    prom = CollectorRegistry()
    method = "Three" if kind == "server_stream" else "Echo"
    async with raw_server(_handlers()) as (_, port):
        await registry.register(
            Instance(service="d", instance_id="d1", host="127.0.0.1", port=port)
        )
        opts = meshkit.DialOptions(
            insecure=True,
            retry=None,
            telemetry=TelemetryOptions(registry=prom, tracing=False, access_log=False),
        )
        async with meshkit.dial("d", registry=registry, options=opts) as ch:
            await ch.wait_for_endpoints(1, timeout_s=10)

            async def dropped_one() -> None:
                if kind == "server_stream":
                    call: Any = ch.unary_stream(f"/{APP}/Three")(b"x", timeout=300)
                    assert await call.read() == b"m"  # one of three read, then dropped
                else:
                    call = ch.stream_stream(f"/{APP}/Echo")(timeout=300)
                    await call.write(b"a")
                    await call.write(b"b")
                    assert await call.read() == b"a"  # one of two, not half-closed

            await dropped_one()  # the channel's and telemetry's own tasks
            await until(
                lambda: (
                    gc.collect() >= 0
                    and _count(
                        prom, "grpc_client_handled_total", method, kind, grpc_code="Canceled"
                    )
                    >= 1
                ),
                timeout_s=20,
                what="the first dropped stream counted",
            )
            await asyncio.sleep(0.2)
            gc.collect()
            tasks_before = len(asyncio.all_tasks())
            calls_before = _mesh_calls()
            for _ in range(_STREAMS):
                await dropped_one()
            await until(
                lambda: (
                    gc.collect() >= 0
                    and _count(
                        prom, "grpc_client_handled_total", method, kind, grpc_code="Canceled"
                    )
                    >= 1 + _STREAMS
                ),
                timeout_s=20,
                what="the dropped streams counted",
            )
            assert _count(prom, "grpc_client_in_flight", method, kind) == 0
            # waited for (collecting), not three fixed 0.2 s sleeps; the asserts below say
            # what is left if it is not reached
            with contextlib.suppress(AssertionError):
                await until(
                    lambda: (
                        gc.collect() >= 0
                        and len(asyncio.all_tasks()) <= tasks_before + 3
                        and _mesh_calls() <= calls_before
                    ),
                    timeout_s=10,
                    what="the dropped streams' tasks and call objects gone",
                )
            assert len(asyncio.all_tasks()) <= tasks_before + 3, (
                tasks_before,
                len(asyncio.all_tasks()),
            )
            assert _mesh_calls() <= calls_before, (calls_before, _mesh_calls())
            assert not ch._answering  # the balancer's first-response table let them go
            # a stream kept and read on is not cancelled by any of this
            call = ch.unary_stream(f"/{APP}/Three")(b"x", timeout=30)
            gc.collect()
            assert [m async for m in call] == [b"m"] * 3
            assert await call.code() is grpc.StatusCode.OK
